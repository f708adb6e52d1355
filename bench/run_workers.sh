#!/usr/bin/env bash
# riskserve with 1 worker vs 2 workers, side by side in one run, driven by the light Rust
# generator bench/loadgen (a few tens of µs of CPU per request, so the server can have both
# cores).
#
#   bench/run_workers.sh
#
# Environment (defaults): PORT=18305 METRICS_PORT=18306 CONCURRENCY=16 CONNECTIONS=$CONCURRENCY
#   DURATION=15 WARMUP=3 ROWS=1 ROUNDS=2 WORKERS="1 2" REQUESTS=256 (distinct requests)
#   SERVER_CORES / CLIENT_CORES: `taskset -c` core lists for the server / the generator
#   (unset: nothing pinned; the generator shares the cores and its CPU use is reported).
#   SERVER_CORES_W<W>: the server's cores when it runs W workers, e.g. SERVER_CORES_W1=0
#   SERVER_CORES_W2=0,1: one worker on one core against two workers on two cores.
#   RETRAIN=1 retrains the model even if bench/results/models/fraud exists.
#   ROWS=64: 64-row requests (then rows/s is the figure to read).
#   RISKSERVE_LIGHTGBM_COMPILE=true: waits until every worker runs the compiled model.
#
# 1. Builds bench/loadgen (cargo build --release; a no-op when up to date).
# 2. If bench/results/models/fraud is absent: datagen 50k rows and train "fraud", as
#    bench/run_load.sh does.
# 3. For each round and each worker count (interleaved: 1,2,1,2): starts
#    `riskserve serve --workers W`, waits until it serves, writes the request file once
#    (bench/make_requests.py), runs loadgen for WARMUP + DURATION s and samples, over the
#    measured window, the CPU of the server's process tree (supervisor + workers, /proc), the
#    whole machine's busy cores (/proc/stat: shows other load on a shared machine) and the
#    client connections each worker holds (SO_REUSEPORT spreads connections, not requests,
#    hence one connection per client by default). Stops the server with SIGTERM.
# 4. Writes bench/results/workers[-rows<R>]-w<W>-r<round>.json (loadgen's report plus
#    "server"), a summary bench/results/workers[-rows<R>].json, and prints a table with the
#    ratio of mean req/s, W=2 over W=1.
set -euo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=bench/common.sh
source bench/common.sh
PY=.venv/bin/python
RISKSERVE=.venv/bin/riskserve
LOADGEN=bench/loadgen/target/release/loadgen
RESULTS=bench/results
MODELS=$RESULTS/models
DATA=$RESULTS/data/fraud-50k.parquet
PORT=${PORT:-18305}
METRICS_PORT=${METRICS_PORT:-18306}
CONCURRENCY=${CONCURRENCY:-16}
CONNECTIONS=${CONNECTIONS:-$CONCURRENCY}
DURATION=${DURATION:-15}
WARMUP=${WARMUP:-3}
ROWS=${ROWS:-1}
ROUNDS=${ROUNDS:-2}
WORKERS=${WORKERS:-"1 2"}
REQUESTS=${REQUESTS:-256}
NAME=workers
if [ "$ROWS" != 1 ]; then NAME=workers-rows$ROWS; fi
SERVER_PIN=()
CLIENT_PIN=()
if [ -n "${SERVER_CORES:-}" ]; then SERVER_PIN=(taskset -c "$SERVER_CORES"); fi
if [ -n "${CLIENT_CORES:-}" ]; then CLIENT_PIN=(taskset -c "$CLIENT_CORES"); fi

if [ ! -x "$RISKSERVE" ]; then
    echo "$RISKSERVE not found: run 'make build' first" >&2
    exit 1
fi
mkdir -p "$RESULTS"

echo "== build bench/loadgen"
cargo build --release --quiet --manifest-path bench/loadgen/Cargo.toml

ensure_bench_model

SERVER_PID=
# The server's process and all its descendants (the workers are children of `serve`).
server_tree() {
    local all=$SERVER_PID next=$SERVER_PID
    while [ -n "$next" ]; do
        next=$(for p in $next; do pgrep -P "$p" || true; done | tr '\n' ' ')
        next=${next% }
        all="$all $next"
    done
    echo "$all"
}

# CPU seconds (user + system, all threads, plus reaped children) of the server's tree.
server_cpu() {
    for p in $(server_tree); do
        sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null || true # fields from 3 (state) on
    done | awk -v hz="$(getconf CLK_TCK)" '{ s += $12 + $13 + $14 + $15 } END { printf "%.3f\n", s / hz }'
}

# Busy CPU seconds of the whole machine (all cores), from /proc/stat.
machine_cpu() {
    awk -v hz="$(getconf CLK_TCK)" \
        '$1 == "cpu" { printf "%.3f\n", ($2 + $3 + $4 + $7 + $8 + $9) / hz }' /proc/stat
}

# Established client connections per server process: "pid:count pid:count".
conns_per_pid() {
    ss -Htnp state established "( sport = :$PORT )" 2>/dev/null |
        grep -o 'pid=[0-9]*' | sort | uniq -c | awk '{ sub("pid=", "", $2); printf "%s:%s ", $2, $1 }'
}

stop_server() {
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        local tree
        tree=$(server_tree)
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 300); do # 30 s to drain
            kill -0 "$SERVER_PID" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$SERVER_PID" 2>/dev/null; then
            echo "!! server did not stop in 30 s: SIGKILL to pids $tree" >&2
            # shellcheck disable=SC2086  # a list of pids
            kill -KILL $tree 2>/dev/null || true
        fi
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    SERVER_PID=
}
trap stop_server EXIT INT TERM

# Starts `serve --workers $1`; returns when ServerReady answers and the log says "serving"
# (logged once every worker listens: before that, connections all go to the first one).
start_server() {
    local w=$1 log=$2
    local pin=("${SERVER_PIN[@]}") per="SERVER_CORES_W$w"
    if [ -n "${!per:-}" ]; then pin=(taskset -c "${!per}"); fi
    "${pin[@]}" "$RISKSERVE" serve --models "$MODELS" --host 127.0.0.1 --port "$PORT" \
        --metrics-port "$METRICS_PORT" --workers "$w" >"$log" 2>&1 &
    SERVER_PID=$!
    wait_ready "$PORT" "$SERVER_PID" "$log"
    if [ "${RISKSERVE_LIGHTGBM_COMPILE:-false}" = true ]; then
        # Measure the compiled model, not the C API it starts on: every worker logs
        # "model compiled" once it has switched (~2 s from the cache, ~30 s without).
        local i
        for i in $(seq 1500); do
            [ "$(grep -c '"model compiled"' "$log" || true)" -ge "$w" ] && break
            sleep 0.2
        done
        echo "== $(grep -c '"model compiled"' "$log" || true) of $w workers on the compiled model"
    fi
}

REQFILE=$RESULTS/$NAME-requests.bin
rm -f "$REQFILE"
FILES=()
for R in $(seq "$ROUNDS"); do
    for W in $WORKERS; do
        OUT=$RESULTS/$NAME-w$W-r$R.json
        LOG=$RESULTS/$NAME-w$W-r$R.log
        PER=SERVER_CORES_W$W
        CORES=${!PER:-${SERVER_CORES:-}}
        echo "== round $R: serve --workers $W on 127.0.0.1:$PORT${CORES:+ (cores $CORES)}, log $LOG"
        start_server "$W" "$LOG"
        if [ ! -f "$REQFILE" ]; then
            "$PY" bench/make_requests.py --target "127.0.0.1:$PORT" --model fraud --rows "$ROWS" \
                --requests "$REQUESTS" --out "$REQFILE"
        fi
        echo "== loadgen: concurrency $CONCURRENCY, $CONNECTIONS connections, warm-up ${WARMUP}s, ${DURATION}s measured${CLIENT_CORES:+ (cores $CLIENT_CORES)}"
        "${CLIENT_PIN[@]}" "$LOADGEN" --target "127.0.0.1:$PORT" --requests "$REQFILE" \
            --concurrency "$CONCURRENCY" --connections "$CONNECTIONS" --rows "$ROWS" \
            --duration "$DURATION" --warmup "$WARMUP" --out "$OUT" &
        LG_PID=$!
        # The measured window, give or take loadgen's connection set-up (milliseconds).
        sleep "$WARMUP"
        S0=$(server_cpu) M0=$(machine_cpu) T0=$(date +%s.%N)
        CONNS=$(conns_per_pid)
        sleep "$DURATION"
        S1=$(server_cpu) M1=$(machine_cpu) T1=$(date +%s.%N)
        wait "$LG_PID"
        stop_server
        "$PY" - "$OUT" "$W" "$R" "$S0" "$S1" "$M0" "$M1" "$T0" "$T1" "$CONNS" <<'EOF'
import json, sys
path, w, r = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s0, s1, m0, m1, t0, t1 = map(float, sys.argv[4:10])
wall = t1 - t0
doc = json.load(open(path))
doc["workers"], doc["round"] = w, r
doc["server"] = {
    "cpu_seconds": s1 - s0,
    "cpu_cores": (s1 - s0) / wall,  # supervisor + workers, over the measured window
    "machine_busy_cores": (m1 - m0) / wall,  # everything on the machine, same window
    "wall_seconds": wall,
    "connections_per_process": {
        p: int(n) for p, n in (x.split(":") for x in sys.argv[10].split())
    },
}
open(path, "w").write(json.dumps(doc, indent=2) + "\n")
print(f"server CPU {(s1 - s0) / wall:.2f} cores, machine busy {(m1 - m0) / wall:.2f} cores, "
      f"connections per server process {doc['server']['connections_per_process']}")
EOF
        FILES+=("$OUT")
    done
done

"$PY" - "$RESULTS/$NAME.json" "${FILES[@]}" <<'EOF'
import json, statistics, sys
out, paths = sys.argv[1], sys.argv[2:]
runs = [json.load(open(p)) for p in paths]
rows = runs[0]["rows"]
print(f"\nriskserve --workers, driven by bench/loadgen: concurrency {runs[0]['concurrency']}, "
      f"{runs[0]['connections']} connections, {rows} row(s)/request, "
      f"{runs[0]['duration_s']:g} s measured per run")
hdr = (f"{'workers':>7} {'round':>5} | {'req/s':>8} {'rows/s':>9} | {'p50 ms':>7} {'p99 ms':>7} | "
       f"{'errors':>6} | {'server cpu':>10} {'gen cpu':>7} {'machine':>7} | conns/worker")
print(hdr)
print("-" * len(hdr))
for d in runs:
    lat, srv = d["latency_ms"], d["server"]
    f = lambda v: "-" if v is None else f"{v:.2f}"
    conns = "/".join(str(n) for n in sorted(srv["connections_per_process"].values(), reverse=True))
    print(f"{d['workers']:>7} {d['round']:>5} | {d['req_per_s']:>8.1f} {d['rows_per_s']:>9.1f} | "
          f"{f(lat['p50']):>7} {f(lat['p99']):>7} | {sum(d['errors'].values()):>6} | "
          f"{srv['cpu_cores']:>10.2f} {d['generator_cpu_cores']:>7.2f} "
          f"{srv['machine_busy_cores']:>7.2f} | {conns}")
means = {}
for w in sorted({d["workers"] for d in runs}):
    means[w] = statistics.mean(d["req_per_s"] for d in runs if d["workers"] == w)
    print(f"mean req/s with {w} worker(s): {means[w]:.1f}")
ratio = means[2] / means[1] if 1 in means and 2 in means and means[1] > 0 else None
if ratio is not None:
    print(f"ratio of mean req/s, 2 workers / 1 worker: {ratio:.2f}")
print("(cpu columns in cores busy over the measured window; 'machine' is every process on the "
      "host, so machine - server - gen is other load)")
summary = {"benchmark": "workers", "mean_req_per_s": means, "ratio_2_over_1": ratio,
           "runs": [{"file": p, **d} for p, d in zip(paths, runs)]}
open(out, "w").write(json.dumps(summary, indent=2) + "\n")
print(f"wrote {out}")
EOF
