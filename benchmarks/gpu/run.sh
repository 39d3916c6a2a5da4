#!/usr/bin/env bash
# One device run for issue 17: install the carried wheels, then the SAM v1 row (ours vs
# stock, benchmarks/segment_sam.py), the SAM 2 row (benchmarks/segment_sam2.py) and the
# paper-scale rehearsal (benchmarks/rehearsal.py). Everything printed also goes to
# $OUT/gpu.log. SCALE=tiny runs the same steps at tiny sizes on the CPU (a check of this
# script, no GPU needed).
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD DVC_NO_ANALYTICS=1 OMP_WAIT_POLICY=PASSIVE
OUT=${OUT:-/tmp/protomask-gpu-out}
SCALE=${SCALE:-full}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
LOG=$OUT/gpu.log
: >"$LOG"

if [ -d benchmarks/gpu/wheels ] && ls benchmarks/gpu/wheels/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install --quiet --no-deps --no-index benchmarks/gpu/wheels/*.whl 2>&1 | tail -3
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null \
    || echo "no nvidia-smi"; "$PY" -c "import torch; print('torch', torch.__version__)"; } | tee -a "$LOG"

# step NAME SECONDS COMMAND...: run with a time limit, log, go on after a failure
step() {
    local name=$1 limit=$2
    shift 2
    echo "== $name" | tee -a "$LOG"
    local start=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee -a "$LOG"
    echo "== $name: exit ${PIPESTATUS[0]}, $((SECONDS - start)) s" | tee -a "$LOG"
}

if [ "$SCALE" = tiny ]; then
    step "SAM v1 rows (tiny)" 300 "$PY" benchmarks/segment_sam.py --model tiny --images 4 \
        --size 64 --device cpu --variants fp32
    step "SAM 2 rows (tiny)" 300 "$PY" benchmarks/segment_sam2.py --images 4 --size 64 \
        --device cpu --crop-n-layers 1
    step "rehearsal (tiny)" 900 "$PY" benchmarks/rehearsal.py --device cpu --sam tiny \
        --images 24 --classes 4 --views 3 --crop-size 32 --backbone tiny_cnn \
        --points-per-side 8 --batch 4 --loader-workers 0 --models protomask,pipnet
else
    # vit_h at CUB's size, 32x32 points, no crop layers, random weights (thresholds low
    # enough that masks pass): stock, ours fp32 (records must agree) and ours bf16
    step "SAM v1 rows" 150 "$PY" benchmarks/segment_sam.py --model vit_h --device cuda \
        --images 16 --size 500 --points-per-side 32 --batch 8 --variants fp32,bf16 \
        --pred-iou-thresh 0.5 --stability-score-thresh 0.5
    # SAM 2.1 hiera base+ with the paper's settings (two crop layers)
    step "SAM 2 rows" 150 "$PY" benchmarks/segment_sam2.py \
        --config configs/sam2.1/sam2.1_hiera_b+.yaml --device cuda --images 4 --size 500 \
        --points-per-side 32 --crop-n-layers 2 --points-per-batch 512 --variants fp32,bf16
    step "rehearsal" 330 "$PY" benchmarks/rehearsal.py --device cuda --images 600
fi
