# Shared by bench/run_*.sh (sourced, from the repository root): the bench model and a
# readiness wait. Needs RISKSERVE, PY, MODELS, DATA set by the caller.

# Trains bench/results/models/fraud (50k datagen rows, the fraud spec, 300 rounds) unless
# it exists; RETRAIN=1 trains it again.
ensure_bench_model() {
    if [ "${RETRAIN:-0}" = 1 ]; then
        rm -rf "$MODELS"
    fi
    if [ ! -d "$MODELS/fraud" ]; then
        if [ ! -f "$DATA" ]; then
            echo "== datagen 50000 rows -> $DATA"
            "$RISKSERVE" datagen --rows 50000 --seed 0 --out "$DATA"
        fi
        echo "== train fraud (fraud spec, 300 rounds) -> $MODELS"
        "$RISKSERVE" train --data "$DATA" --target is_fraud --model fraud --models "$MODELS" \
            --spec python/riskserve/training/specs/fraud.json --rounds 300 --seed 0
    fi
}

# wait_ready PORT PID LOG: polls ServerReady until it answers ready=true, then waits for the
# "serving" event in LOG (with --workers N it comes once every worker listens). Exits if
# the server dies or 60 s pass.
wait_ready() {
    "$PY" - "$1" "$2" "$3" <<'PYEOF'
import os, sys, time
import grpc
from riskserve.pb.inference import grpc_service_pb2 as pb
from riskserve.pb.inference import grpc_service_pb2_grpc as pb_grpc

port, pid, log = sys.argv[1], int(sys.argv[2]), sys.argv[3]
deadline = time.monotonic() + 60
with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
    stub = pb_grpc.GRPCInferenceServiceStub(ch)
    while True:
        try:
            if stub.ServerReady(pb.ServerReadyRequest(), timeout=1).ready:
                break
        except grpc.RpcError:
            pass
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            sys.exit(f"server exited before it was ready; see {log}")
        if time.monotonic() > deadline:
            sys.exit("server not ready after 60 s")
        time.sleep(0.2)
while '"serving"' not in open(log).read():
    if time.monotonic() > deadline:
        print(f"!! no 'serving' event in {log} after 60 s; going on", file=sys.stderr)
        break
    time.sleep(0.2)
print("server ready")
PYEOF
}
