#!/usr/bin/env bash
# Overload with client deadlines: queueing-delay shedding off vs on, side by side.
#
#   bench/run_overload.sh
#
# Environment (defaults): PORT=18111 METRICS_PORT=18112 SERVER_CORE=0 CLIENT_CORE=1
#   FACTOR=3 (offered load = FACTOR x the measured capacity) TIMEOUT=0.05 (client deadline, s)
#   DURATION=10 ROUNDS=2 CAP_CONCURRENCY=8 CONNECTIONS=8 INFLIGHT=4000 (loadgen's cap)
#   RATE= (skip the capacity run and offer this many req/s) ROWS=1 (rows per request)
#   NAME=overload. Other RISKSERVE_* variables (e.g. RISKSERVE_MAX_PENDING_CALLS) reach the
#   server as they are.
#
# 1. Trains the bench model if absent (bench/common.sh), writes single-row requests.
# 2. Capacity: `serve` under `taskset -c $SERVER_CORE` with shedding off, loadgen closed
#    loop (c=$CAP_CONCURRENCY, no deadline) for DURATION s: max req/s.
# 3. For each round, shedding off (RISKSERVE_SHED_TARGET_SECONDS=0) then on (the defaults,
#    5 ms / 100 ms): a fresh server, loadgen open loop at FACTOR x capacity with TIMEOUT
#    deadlines, no warm-up (so every request sent is counted), and the server's metrics
#    before and after: rows scored (riskserve_batch_rows_sum) against OK replies received.
# Writes bench/results/$NAME.json and prints a table.
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
PORT=${PORT:-18111}
METRICS_PORT=${METRICS_PORT:-18112}
SERVER_CORE=${SERVER_CORE:-0}
CLIENT_CORE=${CLIENT_CORE:-1}
FACTOR=${FACTOR:-3}
TIMEOUT=${TIMEOUT:-0.05}
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-2}
CAP_CONCURRENCY=${CAP_CONCURRENCY:-8}
CONNECTIONS=${CONNECTIONS:-8}
INFLIGHT=${INFLIGHT:-4000}
RATE=${RATE:-}
ROWS=${ROWS:-1}
NAME=${NAME:-overload}

mkdir -p "$RESULTS"
ensure_bench_model
cargo build --release --quiet --manifest-path bench/loadgen/Cargo.toml

SERVER_PID=
stop_server() {
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    SERVER_PID=
}
trap stop_server EXIT INT TERM

# start_server SHED_TARGET LOG
start_server() {
    RISKSERVE_SHED_TARGET_SECONDS=$1 taskset -c "$SERVER_CORE" "$RISKSERVE" serve \
        --models "$MODELS" --host 127.0.0.1 --port "$PORT" --metrics-port "$METRICS_PORT" \
        >"$2" 2>&1 &
    SERVER_PID=$!
    wait_ready "$PORT" "$SERVER_PID" "$2"
}

scrape() {
    "$PY" - "$METRICS_PORT" <<'PYEOF'
import json, sys, urllib.request
from prometheus_client.parser import text_string_to_metric_families
text = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics").read().decode()
out = {"scored_rows": 0.0, "codes": {}}
for fam in text_string_to_metric_families(text):
    for s in fam.samples:
        if s.name == "riskserve_batch_rows_sum":
            out["scored_rows"] += s.value
        elif s.name == "riskserve_requests_total":
            c = s.labels["code"]
            out["codes"][c] = out["codes"].get(c, 0.0) + s.value
print(json.dumps(out))
PYEOF
}

REQFILE=$RESULTS/$NAME-requests.bin
if [ -z "$RATE" ]; then
    start_server 0 "$RESULTS/$NAME-capacity.log"
    "$PY" bench/make_requests.py --target "127.0.0.1:$PORT" --model fraud --rows "$ROWS" \
        --out "$REQFILE" >/dev/null
    echo "== capacity: loadgen closed loop c=$CAP_CONCURRENCY, ${DURATION}s"
    taskset -c "$CLIENT_CORE" "$LOADGEN" --target "127.0.0.1:$PORT" --requests "$REQFILE" \
        --concurrency "$CAP_CONCURRENCY" --connections "$CONNECTIONS" --rows "$ROWS" --duration "$DURATION" \
        --warmup 3 --out "$RESULTS/$NAME-capacity.json"
    stop_server
    RATE=$("$PY" -c "import json; print(round($FACTOR * json.load(open('$RESULTS/$NAME-capacity.json'))['req_per_s']))")
fi

FILES=()
for R in $(seq "$ROUNDS"); do
    for MODE in off on; do
        if [ "$MODE" = off ]; then TARGET=0; else TARGET=0.005; fi
        LOG=$RESULTS/$NAME-$MODE-r$R.log
        OUT=$RESULTS/$NAME-$MODE-r$R.json
        start_server "$TARGET" "$LOG"
        [ -f "$REQFILE" ] || "$PY" bench/make_requests.py --target "127.0.0.1:$PORT" \
            --model fraud --rows "$ROWS" --out "$REQFILE" >/dev/null
        B=$(scrape)
        echo "== round $R, shedding $MODE: open loop $RATE req/s, deadline ${TIMEOUT}s, ${DURATION}s"
        taskset -c "$CLIENT_CORE" "$LOADGEN" --target "127.0.0.1:$PORT" --requests "$REQFILE" \
            --rate "$RATE" --concurrency "$INFLIGHT" --connections "$CONNECTIONS" --rows "$ROWS" \
            --duration "$DURATION" --warmup 0 --timeout "$TIMEOUT" --out "$OUT"
        sleep 1
        A=$(scrape)
        stop_server
        "$PY" - "$OUT" "$MODE" "$B" "$A" <<'PYEOF'
import json, sys
path, mode, before, after = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
doc = json.load(open(path))
codes = {c: after["codes"].get(c, 0) - before["codes"].get(c, 0) for c in after["codes"]}
doc["shedding"] = mode
doc["server"] = {"scored_rows": after["scored_rows"] - before["scored_rows"], "codes": codes}
open(path, "w").write(json.dumps(doc, indent=2) + "\n")
PYEOF
        FILES+=("$OUT")
    done
done

"$PY" - "$RESULTS/$NAME.json" "$RESULTS/$NAME-capacity.json" "${FILES[@]}" <<'PYEOF'
import json, os, sys
out, cap_path, paths = sys.argv[1], sys.argv[2], sys.argv[3:]
cap = json.load(open(cap_path))["req_per_s"] if os.path.exists(cap_path) else None
runs = [json.load(open(p)) for p in paths]
print(f"\ncapacity (closed loop): {cap:.0f} req/s" if cap else "")
print(f"{'shedding':>8} {'offered':>8} {'good/s':>8} {'of cap':>7} {'p50':>6} {'p95':>6} {'p99':>6} "
      f"| {'RE p50':>6} {'RE p99':>6} | {'wasted':>7} | client errors")
for d in runs:
    lat, srv = d["latency_ms"], d["server"]
    re = d.get("error_latency_ms", {}).get("RESOURCE_EXHAUSTED", {})
    good = d["requests"] * d["rows"]
    wasted = (srv["scored_rows"] - good) / srv["scored_rows"] if srv["scored_rows"] else 0.0
    fmt = lambda v: "-" if v is None else f"{v:.2f}"
    print(f"{d['shedding']:>8} {d['offered_rps']:>8.0f} {d['req_per_s']:>8.0f} "
          f"{(d['req_per_s'] / cap if cap else 0):>7.2f} {fmt(lat['p50']):>6} {fmt(lat['p95']):>6} "
          f"{fmt(lat['p99']):>6} | {fmt(re.get('p50')):>6} {fmt(re.get('p99')):>6} | "
          f"{100 * wasted:>6.1f}% | {d['errors']}  (server: {srv['codes']}, dropped {d['dropped']})")
json.dump({"capacity_rps": cap, "runs": runs}, open(out, "w"), indent=2)
PYEOF
