#!/usr/bin/env bash
# The GPU check, in one device lease: about 10 minutes of command, so with the machine's
# start it fits a 15-minute lease (issue 28). Run it first whenever a GPU is lent:
#   OUT=/tmp/o bash benchmarks/device_binding.sh
# 1. benchmarks/gpu.py --quick, at most GPU_SECONDS (180): the performance rows of
#    BENCHMARKS.md ("GPU"); every finished section is kept in $OUT/gpu.json even when the
#    timeout cuts the rest. The training sets are generated meanwhile, on the CPUs.
# 2. learning benchmarks (RUNS, default "G A") share the GPU for TRAIN_SECONDS (300),
#    each resuming from its latest state, then print their curves (FG-ARI, mBO and lone
#    sprites kept whole at every evaluation), baselines, by-object table, margins and
#    mask picture (benchmarks/learning.py --report-only). Curves, logs, reports and the
#    latest checkpoint per run land in $OUT/learn.tar.gz.
# The runs (docs/binding.md), with the decoder each uses:
#   G: the paper's recipe with the authors' model (configs/dsprites_slot_attention.yaml:
#      transposed-convolution decoder as wide as the slot, mu ~ N(0, 1), log sigma ~
#      U[0, 1), fresh seeded eval noise per image), fp32 as the authors ran it, evaluated
#      every 1,000 steps. Does the authors' model keep lone sprites whole at 64x64?
#   A: configs/dsprites_binding64.yaml, our decoder (4 x 5x5 convolutions at 32) with the
#      binding search's aids (learned queries, implicit gradient, short warmup, clipping);
#      109k steps on an H200 so far, bf16 (its precision since its second lease). It
#      binds 2-4-object scenes and splits 96% of the lone sprites.
#   Older runs, our decoder: B (dsprites_binding.yaml at 32x32), C (B with 4 x 5x5),
#   D (A + the authors' cosine loss), E (A with Gaussian slots), F (the paper's recipe
#   with our decoder and init, never run on a GPU).
# A run resumes from benchmarks/out/device/<run>/ (an earlier lease's workdir, unpacked
# from learn.tar.gz and carried) when that folder exists, else from the state tracked in
# git, benchmarks/results/device/<run>/ (A at 109k steps, E at 30k), else from scratch.
# PRECISION (default bf16; fp32 with SMOKE) is train.precision for runs that do not fix
# their own (G: fp32).
# EXTRA adds overrides to every run's training, e.g. EXTRA=train.compile=true.
# SMOKE=1 runs the same path on the CPU in about two minutes, with tiny data and a few
# steps per run (tests/e2e/test_gpu_bench.py); GPU_SECONDS and TRAIN_SECONDS still apply.
# Needs pydantic's wheels in .whl/ where the machine lacks them (device README).
set -u
OUT=${OUT:?set OUT to a folder for the results}
SMOKE=${SMOKE:-}
DEVICE=${DEVICE:-$([ -n "$SMOKE" ] && echo cpu || echo cuda)}
GPU_SECONDS=${GPU_SECONDS:-180}
TRAIN_SECONDS=${TRAIN_SECONDS:-300}
PY=${PY:-python3}
RUNS=${RUNS:-G A}
# Smoke: fp32, since bf16 autocast on a CPU without bf16 units made A's two steps 151 s
# against 29 s (gpu.py's smoke rows still run bf16).
PRECISION=${PRECISION:-$([ -n "$SMOKE" ] && echo fp32 || echo bf16)}
EXTRA=${EXTRA:-}
if [ -d .whl ] && ! $PY -c "import pydantic" 2>/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
W=${WORK:-/tmp/learn}; mkdir -p "$W" "$OUT"
{ nvidia-smi -L 2>/dev/null; $PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no cuda')"; nproc; } > "$W/machine.txt" 2>&1
cat "$W/machine.txt"

declare -A CONFIG=(
  [G]=configs/dsprites_slot_attention.yaml [A]=configs/dsprites_binding64.yaml
  [B]=configs/dsprites_binding.yaml [C]=configs/dsprites_binding.yaml
  [D]=configs/dsprites_binding64.yaml [E]=configs/dsprites_binding64.yaml
  [F]=configs/dsprites_slot_attention.yaml
)
declare -A ARGS=(  # the run's overrides, for its training and its report
  [G]="eval.every=1000 eval.batch_size=160"
  [A]=""
  [B]="train.steps=1000000"
  [C]="model.decoder_layers=4 model.decoder_kernel=5 train.steps=1000000"
  [D]="loss.type=cosine loss.beta=0.01 loss.cosine_reduction=mean"
  [E]="model.slot_init=gaussian model.eval_slot_init=seeded"
  [F]="model.decoder=broadcast_cnn model.decoder_channels=32 model.decoder_layers=4
       model.slot_init=gaussian model.eval_slot_init=seeded eval.every=1000 eval.batch_size=160"
)
declare -A PREC=([G]=fp32)  # runs that fix their precision
declare -A FROM=([D]=A)     # a run with no state of its own starts from this run's
SMOKE_ARGS=""
if [ -n "$SMOKE" ]; then  # tiny data of its own; two more steps than the run's state has
  SMOKE_ARGS="data.train=$W/data/train data.val=$W/data/val data.synthetic_train=64
    data.synthetic_val=24 train.batch_size=4 eval.every=2 eval.batch_size=8
    eval.max_images=24 train.checkpoint_every=2 train.log_every=1 train.device=cpu"
fi

for run in $RUNS; do
  base=${FROM[$run]:-$run}
  for saved in "benchmarks/out/device/$run" "benchmarks/results/device/$run" \
               "benchmarks/out/device/$base" "benchmarks/results/device/$base"; do
    if [ ! -d "$W/$run" ] && [ -d "$saved" ]; then
      cp -r "$saved" "$W/$run" && rm -f "$W/$run/masks_vs_blocks.png"
      echo "$run resumes from $saved"
    fi
  done
done
steps_for() {  # smoke: the resumed step + 2, else the config's own
  [ -z "$SMOKE" ] && return
  last=$(ls -d "$W/$1"/checkpoints/step-* 2>/dev/null | tail -n 1)
  echo "train.steps=$(( ${last:+10#${last##*step-}} + 2 ))"
}

# 1. The performance rows, while the CPUs generate every run's training set.
$PY -c "
import sys
from slotsweep.config import load_config
from slotsweep.data.sources.synthetic import ensure_synthetic
for name in sorted(set(sys.argv[1:])):
    c = load_config(name, '''$SMOKE_ARGS'''.split()); ensure_synthetic(c.data, resolution=c.model.resolution)
" $(for run in $RUNS; do echo "${CONFIG[$run]}"; done) > "$W/data.log" 2>&1 &
data_pid=$!
timeout -s TERM "$GPU_SECONDS" $PY benchmarks/gpu.py "$([ -n "$SMOKE" ] && echo --smoke || echo --quick)" \
  --out "$OUT/gpu.json" > "$W/gpu.log" 2>&1
echo "gpu.py exit $? (124: cut at ${GPU_SECONDS}s; finished sections are in gpu.json)"
tail -n 40 "$W/gpu.log"
wait "$data_pid" || { cat "$W/data.log"; exit 1; }

# 2. The learning runs, side by side on the GPU.
for run in $RUNS; do
  timeout -s TERM "$TRAIN_SECONDS" $PY benchmarks/learning.py "${CONFIG[$run]}" ${ARGS[$run]} \
    train.device=$DEVICE train.precision=${PREC[$run]:-$PRECISION} $EXTRA $SMOKE_ARGS \
    $(steps_for "$run") --workdir "$W/$run" > "$W/$run.log" 2>&1 &
done
wait
for run in $RUNS; do
  $PY benchmarks/learning.py "${CONFIG[$run]}" ${ARGS[$run]} $SMOKE_ARGS --report-only \
    --workdir "$W/$run" > "$W/$run.report" 2>&1 &
done
wait
for run in $RUNS; do
  echo "== $run: ${CONFIG[$run]} ${ARGS[$run]}"; tail -n 4 "$W/$run.log"; cat "$W/$run.report"
  ls -d "$W/$run"/checkpoints/step-* 2>/dev/null | head -n -1 | xargs -r rm -rf
done
# Under the 16 MB a device call brings back: no datasets, one checkpoint per run.
cp "$W/gpu.log" "$OUT/gpu.log"
tar czf "$OUT/learn.tar.gz" -C "$W" machine.txt $(for run in $RUNS; do echo "$run $run.log $run.report"; done)
ls -la "$OUT"
