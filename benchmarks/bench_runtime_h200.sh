#!/usr/bin/env bash
# The GPU run behind specmoe/simulator/calibrations/h200.json and docs/validation/: run on a
# 2x H200 machine from a checkout's root (specmoe importable), RESULTS=dir for the outputs.
# Needs the ESFT intent routing trace as $TRACE (specmoe trace import ... --format esft).
set -u
R=${RESULTS:?}; T=${TRACE:?}; P=docs/validation/plans
export NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
run() { echo "+ $*"; timeout "${STEP_TIMEOUT:-170}" "$@"; echo "rc=$?"; }
TR=${TR:-"python3 -m torch.distributed.run --nproc-per-node"}
export SPECMOE_LAUNCHER="torchrun --nproc-per-node 2"
run $TR 2 -m specmoe.cli calibrate -o $R/h200.json
V="--trace $T --trace-split 0.25 ${VALIDATE_ARGS:-}"
run $TR 2 -m specmoe.cli validate $P/plan-contiguous.json $P/plan-eplb.json $P/plan-speculative.json $V -o $R/measured-nvlink-ep2.json
NCCL_P2P_DISABLE=1 run $TR 2 -m specmoe.cli validate $P/plan-contiguous.json $P/plan-eplb.json $P/plan-speculative.json $V -o $R/measured-slow-ep2.json
NCCL_P2P_DISABLE=1 run $TR 2 -m specmoe.cli calibrate -o $R/h200.json --collectives-only --update
SPECMOE_LAUNCHER="torchrun --nproc-per-node 1" run $TR 1 -m specmoe.cli validate $P/plan-ep1.json $V -o $R/measured-nvlink-ep1.json
