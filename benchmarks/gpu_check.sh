#!/usr/bin/env bash
# GPU check: every stage after rendering, as the demos run them, on one machine with an NVIDIA GPU.
#
#     benchmarks/gpu_check.sh OUT WORKDIR_3D WORKDIR_2D [PYTHON]
#
# The workdirs are demo workdirs rendered and packed elsewhere (`magvit3d demo` on a machine with bpy), copied with
# `benchmarks/gpu_workdir.py SRC DST` so that the demo resumes after `pack`. Runs at once on the one GPU, with
# --device cuda (bf16 autocast; DEVICE overrides): `magvit3d demo -c demo` in WORKDIR_3D, `magvit3d demo -c 2d` in
# WORKDIR_2D, and the same 2D demo with the autoregressive transformer (model.arch=ar) in a copy of WORKDIR_2D made
# first. Every run's exit status and wall time go to OUT/gpu_check.tsv, the GPU's memory in use every second to
# OUT/gpu_memory.csv, logs to OUT/*.log; the demos' summaries and reports stay in their workdirs. CI never runs this.
#
# A dry run without a GPU: DEVICE=cpu PRESET_3D=tiny PRESET_2D=tiny benchmarks/gpu_check.sh /tmp/gc W3 W2
#
# Not here: DDP across ranks. torchrun with one process runs without a process group (WORLD_SIZE 1), and NCCL does
# not put two ranks on one GPU; the multi-rank code is tested on the CPU (gloo, 2 ranks) by the test suite.
set -u
OUT=${1:?usage: gpu_check.sh OUT WORKDIR_3D WORKDIR_2D [PYTHON]}
W3=${2:?usage: gpu_check.sh OUT WORKDIR_3D WORKDIR_2D [PYTHON]}
W2=${3:?usage: gpu_check.sh OUT WORKDIR_3D WORKDIR_2D [PYTHON]}
PY=${4:-python3}
DEV=${DEVICE:-cuda}
P3=${PRESET_3D:-demo}
P2=${PRESET_2D:-2d}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# three runs share the CPU cores for data loading and evaluation
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${THREADS:-5}
mkdir -p "$OUT"
M="$PY -m datagen.cli"
TSV="$OUT/gpu_check.tsv"
printf 'run\trc\tseconds\n' > "$TSV"

stage() {  # stage NAME COMMAND...: run, log, record exit status and wall time
    local name=$1; shift
    local t0=$(date +%s%3N)
    "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    local ms=$(( $(date +%s%3N) - t0 ))
    printf '%s\t%s\t%d.%03d\n' "$name" "$rc" $((ms / 1000)) $((ms % 1000)) >> "$TSV"
    echo "[$name] rc=$rc after $((ms / 1000)) s"; tail -n 3 "$OUT/$name.log"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
$PY -c "import torch, numpy; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'numpy', numpy.__version__,
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU',
      'bf16', torch.cuda.is_available() and torch.cuda.is_bf16_supported())"
if command -v nvidia-smi > /dev/null; then
    nvidia-smi --query-gpu=timestamp,memory.used,utilization.gpu --format=csv,noheader -l 1 > "$OUT/gpu_memory.csv" &
    SMI_PID=$!
fi

W2AR="${W2%/}_ar"
rm -rf "$W2AR" && cp -r "$W2" "$W2AR"
stage demo3d   $M demo -c $P3 --out "$W3" --device $DEV --no-progress & PIDS=$!
stage demo2d   $M demo -c $P2 --out "$W2" --device $DEV --no-progress & PIDS="$PIDS $!"
stage demo2dar $M demo -c $P2 --out "$W2AR" --device $DEV --no-progress --set transformer.model.arch=ar & PIDS="$PIDS $!"
wait $PIDS   # (not a bare wait: that would also wait for the nvidia-smi logger, which runs until killed)
[ -n "${SMI_PID:-}" ] && kill "$SMI_PID"
cat "$TSV"
