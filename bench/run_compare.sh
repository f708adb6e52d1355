#!/usr/bin/env bash
# riskserve vs a Python-gRPC floor vs MLServer (default and tuned), one run, same scenario.
#
#   bench/run_compare.sh
#
# Environment (defaults): ROUNDS=2 CONCURRENCY="1 8" DURATION=10 WARMUP=2 PORT=18400
#   SERVERS="riskserve floor mlserver mlserver-tuned" RETRAIN=0 COMPARE_ARGS=""
#   (other servers: riskserve-nolog, riskserve-python, floor-generic, floor-grpc175:
#   bench/compare.py)
#
# 1. Trains bench/results/models/fraud if absent (same data and settings as run_load.sh).
# 2. Creates bench/.venv-mlserver (python3 -m venv; pip install mlserver mlserver-lightgbm
#    'uvloop<0.22': MLServer 1.7.1's worker crashes with uvloop 0.23) if absent. If that
#    fails, the comparison runs without MLServer and says so.
#    For floor-grpc175, creates bench/.venv-grpc175 (grpcio 1.75.1, the project's
#    protobuf, numpy and uvloop) if absent.
# 3. Runs bench/compare.py: each server in turn pinned to core 0, bench/load.py on core 1,
#    rounds interleaved; writes bench/results/compare.json, logs and per-run load JSONs.
set -euo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=bench/common.sh
source bench/common.sh
RISKSERVE=.venv/bin/riskserve
RESULTS=bench/results
MODELS=$RESULTS/models
DATA=$RESULTS/data/fraud-50k.parquet
MLVENV=bench/.venv-mlserver
ROUNDS=${ROUNDS:-2}
CONCURRENCY=${CONCURRENCY:-"1 8"}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
PORT=${PORT:-18400}
SERVERS=${SERVERS:-"riskserve floor mlserver mlserver-tuned"}
COMPARE_ARGS=${COMPARE_ARGS:-}

mkdir -p "$RESULTS"

ensure_bench_model

case " $SERVERS " in
*" mlserver"*)
    if [ ! -x "$MLVENV/bin/mlserver" ]; then
        echo "== installing MLServer into $MLVENV (log $RESULTS/mlserver-install.log)"
        if ! { python3 -m venv "$MLVENV" &&
            "$MLVENV/bin/pip" install mlserver mlserver-lightgbm 'uvloop<0.22'; } \
            >"$RESULTS/mlserver-install.log" 2>&1; then
            echo "!! MLServer could not be installed; see $RESULTS/mlserver-install.log." \
                "The comparison continues without it." >&2
            tail -5 "$RESULTS/mlserver-install.log" >&2 || true
        fi
    fi
    if [ -x "$MLVENV/bin/pip" ]; then
        "$MLVENV/bin/pip" list 2>/dev/null | grep -iE '^(mlserver|mlserver-lightgbm|lightgbm|uvloop|grpcio) ' || true
    fi
    ;;
esac

GRPC175=bench/.venv-grpc175
case " $SERVERS " in
*" floor-grpc175 "*)
    if [ ! -x "$GRPC175/bin/python" ]; then
        echo "== installing grpcio 1.75.1 into $GRPC175"
        python3 -m venv "$GRPC175"
        "$GRPC175/bin/pip" install --quiet grpcio==1.75.1 \
            "$(grep '^protobuf==' requirements-dev.lock)" "$(grep '^numpy==' requirements-dev.lock)" \
            "$(grep '^uvloop==' requirements-dev.lock)"
    fi
    "$GRPC175/bin/pip" list 2>/dev/null | grep -iE '^(grpcio|protobuf|uvloop) ' || true
    ;;
esac

# shellcheck disable=SC2086  # word lists
exec .venv/bin/python bench/compare.py --servers $SERVERS --rounds "$ROUNDS" \
    --concurrency $CONCURRENCY --duration "$DURATION" --warmup "$WARMUP" --port "$PORT" \
    --out "$RESULTS/compare.json" $COMPARE_ARGS
