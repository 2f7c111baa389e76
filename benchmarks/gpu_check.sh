#!/usr/bin/env bash
# GPU check: the CUDA paths of every training and generation command, for real, on one machine with an NVIDIA GPU.
#
#     benchmarks/gpu_check.sh DATASET OUT [PYTHON]
#
# DATASET is a packed dataset (the demo's: magvit3d render + pack). Runs, with --device cuda (bf16 autocast; DEVICE overrides):
# train-tokenizer (demo preset), tokenize, train-transformer (demo preset), generate (predict), train-probe (demo
# preset and 5x its steps), evaluate with each probe; then the tokenizer under torchrun (DDP, one process) and with
# train.compile=true. Alongside, benchmarks/tokenizer_sweep.py trains the tokenizer recipe variants on the same GPU.
# Every stage's exit status and time go to OUT/gpu_check.tsv; runs and logs stay in OUT. CI never runs this.
set -u
DATA=${1:?usage: gpu_check.sh DATASET OUT [PYTHON]}
OUT=${2:?usage: gpu_check.sh DATASET OUT [PYTHON]}
PY=${3:-python3}
DEV=${DEVICE:-cuda}            # DEVICE=cpu PRESET=tiny SWEEP=0 PROBE_LONG_STEPS=60: a quick dry run without a GPU
P=${PRESET:-demo}
LONG=${PROBE_LONG_STEPS:-3000}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
mkdir -p "$OUT"
M="$PY -m datagen.cli"
TSV="$OUT/gpu_check.tsv"
printf 'stage\trc\tseconds\n' > "$TSV"

stage() {  # stage NAME COMMAND...: run, log, record exit status and wall time
    local name=$1; shift
    local t0=$(date +%s%3N)
    "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    local ms=$(( $(date +%s%3N) - t0 ))
    printf '%s\t%s\t%d.%03d\n' "$name" "$rc" $((ms / 1000)) $((ms % 1000)) >> "$TSV"
    echo "[$name] rc=$rc"; tail -n 3 "$OUT/$name.log"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
$PY -c "import torch, numpy; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'numpy', numpy.__version__,
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU',
      'bf16', torch.cuda.is_available() and torch.cuda.is_bf16_supported())"

if [ "${SWEEP:-1}" = 1 ]; then
    $PY "$ROOT/benchmarks/tokenizer_sweep.py" --data "$DATA" --out "$OUT/sweep" --device $DEV --jobs "${SWEEP_JOBS:-8}" \
        > "$OUT/sweep.log" 2>&1 &
    SWEEP_PID=$!
fi

stage tokenizer   $M train-tokenizer --data "$DATA" --out "$OUT/tok" --config $P --device $DEV --no-progress
stage tokenize    $M tokenize --run "$OUT/tok" --data "$DATA" --device $DEV --no-progress
stage transformer $M train-transformer --tokens "$OUT/tok" --out "$OUT/tr" --config $P --device $DEV --no-progress
stage generate    $M generate --transformer "$OUT/tr" --task predict --out "$OUT/gen" --device $DEV --no-progress
stage probe       $M train-probe --data "$DATA" --out "$OUT/probe" --config $P --device $DEV --no-progress
stage probe5x     $M train-probe --data "$DATA" --out "$OUT/probe5x" --config $P --device $DEV --no-progress \
                     --set train.steps=$LONG --set train.val_every=$((LONG / 3)) --set train.ckpt_every=$((LONG / 3))
stage evaluate    $M evaluate --data "$DATA" --generated "$OUT/gen" --probe "$OUT/probe" --out "$OUT/report" --no-progress
stage evaluate5x  $M evaluate --data "$DATA" --generated "$OUT/gen" --probe "$OUT/probe5x" --out "$OUT/report5x" --no-progress
stage ddp         $PY -m torch.distributed.run --standalone --nproc_per_node 1 -m datagen.cli train-tokenizer \
                     --data "$DATA" --out "$OUT/tok_ddp" --config $P --device $DEV --no-progress --set train.steps=100
stage compile     $M train-tokenizer --data "$DATA" --out "$OUT/tok_compile" --config $P --device $DEV --no-progress \
                     --set train.steps=300 --set train.compile=true

if [ -n "${SWEEP_PID:-}" ]; then
    wait "$SWEEP_PID"; echo "[sweep] rc=$?"; cat "$OUT/sweep.log" | tail -n 20
fi
cat "$TSV"
