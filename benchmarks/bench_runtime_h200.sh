#!/usr/bin/env bash
# The GPU run behind specmoe/simulator/calibrations/h200.json and docs/validation/ (run 3):
# ONE call on a 2x H200 machine, from the repository root (specmoe importable), ~9 minutes:
#   1. calibrate: kernel grids (experts on $EXPERTS) + NVLink all-to-all      -> $R/h200.json
#   2. validate EP=2 NVLink, plans contiguous / eplb / speculative             -> $R/measured-nvlink-ep2.json
#   3. validate EP=2 slow (NCCL_P2P_DISABLE=1), same plans; slow all-to-all   -> $R/measured-slow-ep2.json, h200.json
#   4. validate EP=1 NVLink (plan-ep1)                                         -> $R/measured-nvlink-ep1.json
#   5. report on the measured files with the calibration just measured        -> $R/$NAME.{json,md,png}
#   6. Mixtral-8x7b, MIX_LAYERS (8) layers at full width, routing mapped from the ESFT trace
#      (benchmarks/runtime_mixtral_inputs.py), contiguous EP=2 NVLink and EP=1, and its report
#      -> $R/mixtral/, $R/measured-mixtral-*.json, $R/$MIX_NAME.{json,md,png}  (MIXTRAL=0: skip)
# Every step has a time cap and the whole run a deadline (BUDGET_S); a step that fails or times
# out is logged and the later ones still run; the report uses the measured files that exist
# (and the committed calibration if step 1 produced none).
# Env: RESULTS (output dir, required), TRACE (ESFT intent routing .npz, required),
# PLANS (dir with plan-{contiguous,eplb,speculative,ep1}.json), PY (python), NGPU (2),
# EXPERTS (triton|torch, default triton), BATCHES, STEPS, NUM_LAYERS, NAME, BUDGET_S (520),
# MIXTRAL (1), MIX_LAYERS (8), MIX_NAME.
set -u
R=${RESULTS:?}; T=${TRACE:?}; P=${PLANS:-docs/validation/plans}; PY=${PY:-python3}
NAME=${NAME:-deepseek-v2-lite-h200-run3}; EXPERTS=${EXPERTS:-triton}
BUDGET_S=${BUDGET_S:-520}; START=$(date +%s)
mkdir -p "$R"
export NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
TR="$PY -m torch.distributed.run --nproc-per-node"
LOG=$R/run-log.txt
: > "$LOG"
# run CAP CMD...: at most CAP seconds, and never past the deadline (REPORT_S kept for step 5)
run() {
  local cap=$1; shift
  local left=$(( BUDGET_S - ${RESERVE_S:-45} - ($(date +%s) - START) ))
  (( cap > left )) && cap=$left
  if (( cap < 20 )); then echo "SKIPPED (deadline): $*" | tee -a "$LOG"; return; fi
  echo "+ [t=$(( $(date +%s) - START ))s cap=${cap}s] $*" | tee -a "$LOG"
  timeout -k 30 "$cap" "$@" 2>&1 | tee -a "$LOG"
  echo "rc=${PIPESTATUS[0]} t=$(( $(date +%s) - START ))s" | tee -a "$LOG"
}
V=(--trace "$T" --trace-split 0.25 --experts "$EXPERTS")
[ -n "${BATCHES:-}" ] && V+=(--batches "$BATCHES")
[ -n "${STEPS:-}" ] && V+=(--steps "$STEPS")
[ -n "${NUM_LAYERS:-}" ] && V+=(--num-layers "$NUM_LAYERS")
EP2=("$P/plan-contiguous.json" "$P/plan-eplb.json" "$P/plan-speculative.json")
NGPU=${NGPU:-2}
export SPECMOE_LAUNCHER="torchrun --nproc-per-node $NGPU"
run 180 $TR "$NGPU" -m specmoe.cli calibrate -o "$R/h200.json" --experts "$EXPERTS"
run 120 $TR "$NGPU" -m specmoe.cli validate "${EP2[@]}" "${V[@]}" -o "$R/measured-nvlink-ep2.json"
export NCCL_P2P_DISABLE=1
run 120 $TR "$NGPU" -m specmoe.cli validate "${EP2[@]}" "${V[@]}" -o "$R/measured-slow-ep2.json"
[ -s "$R/h200.json" ] && run 40 $TR "$NGPU" -m specmoe.cli calibrate -o "$R/h200.json" --collectives-only --update
unset NCCL_P2P_DISABLE
export SPECMOE_LAUNCHER="torchrun --nproc-per-node 1"
run 100 $TR 1 -m specmoe.cli validate "$P/plan-ep1.json" "${V[@]}" -o "$R/measured-nvlink-ep1.json"
# 5. report (CPU work): the calibration measured above, else the committed one
CAL=$R/h200.json; [ -s "$CAL" ] || CAL=specmoe/simulator/calibrations/h200.json
M=(); for f in nvlink-ep2 slow-ep2 nvlink-ep1; do [ -s "$R/measured-$f.json" ] && M+=("$R/measured-$f.json"); done
if (( ${#M[@]} )); then
  RESERVE_S=0 run 120 $PY -m specmoe.cli validate --report "${M[@]}" --trace "$T" --calibration "$CAL" \
      --name "$NAME" --out-dir "$R"
else
  echo "no measured files: no report" | tee -a "$LOG"
fi
# 6. Mixtral-8x7b (after the main report, so it can never cost the main results)
if [ "${MIXTRAL:-1}" = 1 ]; then
  MIX_NAME=${MIX_NAME:-mixtral-8x7b-h200-run3}; ML=${MIX_LAYERS:-8}
  run 60 $PY benchmarks/runtime_mixtral_inputs.py "$T" "$R/mixtral" "$ML"
  MV=(--trace "$R/mixtral/mixtral_mapped.npz" --trace-split 0.25 --experts "$EXPERTS" --num-layers "$ML")
  [ -n "${BATCHES:-}" ] && MV+=(--batches "$BATCHES")
  [ -n "${STEPS:-}" ] && MV+=(--steps "$STEPS")
  export SPECMOE_LAUNCHER="torchrun --nproc-per-node $NGPU"
  [ -s "$R/mixtral/plan-mixtral-ep2.json" ] && RESERVE_S=30 run 90 $TR "$NGPU" -m specmoe.cli validate \
      "$R/mixtral/plan-mixtral-ep2.json" "${MV[@]}" -o "$R/measured-mixtral-nvlink-ep2.json"
  export SPECMOE_LAUNCHER="torchrun --nproc-per-node 1"
  [ -s "$R/mixtral/plan-mixtral-ep1.json" ] && RESERVE_S=30 run 90 $TR 1 -m specmoe.cli validate \
      "$R/mixtral/plan-mixtral-ep1.json" "${MV[@]}" -o "$R/measured-mixtral-nvlink-ep1.json"
  M=(); for f in nvlink-ep2 nvlink-ep1; do [ -s "$R/measured-mixtral-$f.json" ] && M+=("$R/measured-mixtral-$f.json"); done
  (( ${#M[@]} )) && RESERVE_S=0 run 60 $PY -m specmoe.cli validate --report "${M[@]}" \
      --trace "$R/mixtral/mixtral_mapped.npz" --calibration "$CAL" --name "$MIX_NAME" --out-dir "$R"
fi
echo "== done in $(( $(date +%s) - START ))s; files:" | tee -a "$LOG"
ls -l "$R" | tee -a "$LOG"
