#!/usr/bin/env bash
# Load test riskserve on this machine: server pinned to core 0, generator to core 1.
#
#   bench/run_load.sh
#
# Environment (defaults): PORT=18101 METRICS_PORT=18102 CONCURRENCY="1 8" DURATION=15
#   WARMUP=3 ROWS=1 SERVER_CORE=0 CLIENT_CORE=1 LOAD_ARGS="" (extra bench/load.py flags)
#   RETRAIN=1 retrains the model even if bench/results/models/fraud exists.
#   NAME=load: output files are bench/results/$NAME-c<C>.{json,png}. E.g. the transport floor:
#   NAME=live LOAD_ARGS="--rpc live" bench/run_load.sh
#   SWAP=1: the hot-swap scenario: serves bench/results/models-swap (version 1 of the bench
#   model plus a version 2 trained with another seed, fresh deployment state) with an admin
#   token, and passes --swap-every ${SWAP_EVERY:-2} to load.py, which promotes v1 and v2 in
#   turn during the measured window. E.g. SWAP=1 NAME=swap CONCURRENCY=8 bench/run_load.sh
#
# 1. If bench/results/models/fraud is absent: datagen 50k rows, train "fraud" with
#    python/riskserve/training/specs/fraud.json, 300 rounds, into bench/results/models.
# 2. Starts `riskserve serve` on 127.0.0.1:$PORT under `taskset -c $SERVER_CORE`, waits for
#    ServerReady.
# 3. Runs bench/load.py under `taskset -c $CLIENT_CORE` for each concurrency, writing
#    bench/results/$NAME-c<C>.json and .png (the server's CPU use is added to the JSON).
# 4. Stops the server (SIGTERM, graceful drain), also on failure or Ctrl-C.
set -euo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=bench/common.sh
source bench/common.sh
PY=.venv/bin/python
RISKSERVE=.venv/bin/riskserve
RESULTS=bench/results
MODELS=$RESULTS/models
DATA=$RESULTS/data/fraud-50k.parquet
PORT=${PORT:-18101}
METRICS_PORT=${METRICS_PORT:-18102}
CONCURRENCY=${CONCURRENCY:-"1 8"}
DURATION=${DURATION:-15}
WARMUP=${WARMUP:-3}
ROWS=${ROWS:-1}
SERVER_CORE=${SERVER_CORE:-0}
CLIENT_CORE=${CLIENT_CORE:-1}
LOAD_ARGS=${LOAD_ARGS:-}
NAME=${NAME:-load}

mkdir -p "$RESULTS"

ensure_bench_model
if [ "${SWAP:-0}" = 1 ]; then
    SWAP_MODELS=$RESULTS/models-swap
    if [ ! -d "$SWAP_MODELS/fraud/2" ]; then
        echo "== models-swap: version 1 of the bench model + version 2 (seed 1) -> $SWAP_MODELS"
        rm -rf "$SWAP_MODELS"
        mkdir -p "$SWAP_MODELS/fraud"
        cp -r "$MODELS/fraud/1" "$SWAP_MODELS/fraud/1"
        "$RISKSERVE" train --data "$DATA" --target is_fraud --model fraud --models "$SWAP_MODELS" \
            --spec python/riskserve/training/specs/fraud.json --rounds 300 --seed 1
    fi
    rm -f "$SWAP_MODELS/fraud/deployment.json"
    MODELS=$SWAP_MODELS
    export RISKSERVE_ADMIN_TOKEN=${RISKSERVE_ADMIN_TOKEN:-bench-swap}
    LOAD_ARGS="--swap-every ${SWAP_EVERY:-2} $LOAD_ARGS"
fi

SERVER_LOG=$RESULTS/server.log
echo "== serve $MODELS on 127.0.0.1:$PORT (core $SERVER_CORE), log $SERVER_LOG"
taskset -c "$SERVER_CORE" "$RISKSERVE" serve --models "$MODELS" --host 127.0.0.1 \
    --port "$PORT" --metrics-port "$METRICS_PORT" >"$SERVER_LOG" 2>&1 &
SERVER_PID=$!

stop_server() {
    if kill -0 "$SERVER_PID" 2>/dev/null; then
        echo "== stopping server (pid $SERVER_PID)"
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
}
trap stop_server EXIT INT TERM

wait_ready "$PORT" "$SERVER_PID" "$SERVER_LOG"

# Server CPU seconds (user + system, all threads) from /proc.
server_cpu() {
    awk -v hz="$(getconf CLK_TCK)" '{ printf "%.3f\n", ($14 + $15) / hz }' "/proc/$SERVER_PID/stat"
}

for C in $CONCURRENCY; do
    OUT=$RESULTS/$NAME-c$C.json
    echo "== load: concurrency $C, warm-up ${WARMUP}s, ${DURATION}s measured (core $CLIENT_CORE)"
    CPU0=$(server_cpu)
    T0=$(date +%s.%N)
    # shellcheck disable=SC2086  # LOAD_ARGS is a list of flags
    taskset -c "$CLIENT_CORE" "$PY" bench/load.py --target "127.0.0.1:$PORT" --model fraud \
        --concurrency "$C" --duration "$DURATION" --warmup "$WARMUP" --rows "$ROWS" \
        --out "$OUT" --png "$RESULTS/$NAME-c$C.png" $LOAD_ARGS
    CPU1=$(server_cpu)
    T1=$(date +%s.%N)
    # Server CPU over the whole load.py run (setup + warm-up + measurement).
    "$PY" - "$OUT" "$CPU0" "$CPU1" "$T0" "$T1" <<'EOF'
import json, sys
path, c0, c1, t0, t1 = sys.argv[1], *map(float, sys.argv[2:])
doc = json.load(open(path))
doc["server_cpu"] = {"seconds": c1 - c0, "wall_seconds": t1 - t0,
                     "cores_busy": (c1 - c0) / (t1 - t0), "core": "pinned to one core"}
open(path, "w").write(json.dumps(doc, indent=2) + "\n")
print(f"server CPU over the run: {(c1 - c0) / (t1 - t0):.0%} of a core")
EOF
done
