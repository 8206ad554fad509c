#!/usr/bin/env bash
# Issue 4's GPU check, in one device lease (about 9 minutes): learning benchmarks (RUNS,
# default "F"; earlier leases ran "B A C", "A", "A", "A E") share one GPU for
# TRAIN_SECONDS (two runs get ~35 steps/s each, half of one alone), then each
# prints its curve, baselines, by-object table, margins and mask picture
# (benchmarks/learning.py --report-only). Everything lands in
# $OUT/learn.tar.gz (curves, logs, reports, pictures, the latest checkpoint per run).
#   A: the chosen configuration at the paper's scale (configs/dsprites_binding64.yaml).
#      At 109k steps (three leases' worth) it binds multi-sprite scenes but still splits
#      96% of the lone sprites among the spare slots, and its FG-ARI has been flat since
#      ~75k steps (BENCHMARKS.md): training on alone is unlikely to fix them.
#   B: the chosen 32x32 configuration (its FG-ARI levels off at ~0.53 by 90k steps);
#   C: B's configuration with the paper's decoder (4 layers of 5x5), from scratch: do
#      sharper masks help FG-ARI on one-object scenes?
#   D: A plus the paper's cosine loss on slots as the authors ran it (weight 0.01,
#      margin 0.2, mean over all B*K^2 pairs: 0.01 x 0.62 at 50k, against a
#      reconstruction loss of 0.0079; the paper's sum would be ~20x that), branching
#      from A's saved state. At 50k, two or more slots share half the sprites, and the
#      slots that share one are near-duplicates (median cosine 0.97; 0.74 between the
#      slots of different sprites), which that loss penalises: does it make sprites
#      whole? (A 300-step CPU probe: no, so far; BENCHMARKS.md.) Run "A D" to compare
#      them over the same steps.
#   E: A with the paper's slot initialisation (one learned Gaussian, a fresh draw per
#      image; evaluation uses a fixed draw) instead of learned per-slot queries, from
#      scratch. With queries, every scene starts from the same five points, one slot
#      takes most of the background, and a lone sprite's spare slots take patches of it
#      (8% of its stray pixels go to the background's slot at 93k); with fresh draws,
#      spare slots may split the background instead, which FG-ARI ignores. Measured to
#      30k steps (fourth lease): it binds as soon as A and tracks A's FG-ARI, with mBO
#      ~0.05 lower, and splits all 86 lone sprites (BENCHMARKS.md).
#   F: the paper's own recipe, untouched (configs/dsprites_slot_attention.yaml: Gaussian
#      slots, no implicit gradient, 10k warmup, no clipping), evaluated every 1,000
#      steps, from scratch. B, A, C and E all carry the search's training aids and all
#      split lone sprites, while the published 90.7 FG-ARI needs most of them whole: is
#      the split ours (the aids) or the data's? Give it a lease to itself (RUNS=F).
# A run resumes from benchmarks/out/device/<run>/ (an earlier lease's workdir: curve and
# latest checkpoint, unpacked from learn.tar.gz and carried) when that folder exists,
# else from benchmarks/results/device/<run>/ (the last recorded state, tracked in git:
# A at 109k steps, E at 30k).
# PRECISION (default bf16; the first lease ran fp32) is train.precision for every run:
# bf16 autocast halves a step on a CPU with AVX512-BF16 (BENCHMARKS.md) and uses the
# GPU's tensor cores, so a lease takes A further (76 steps/s alone on an H200).
# EXTRA adds overrides to every run's training (not its report), e.g.
# EXTRA=train.compile=true: untried on a GPU so far; on the CPU here (F's config, batch
# 8, 40 steps) it compiled in ~40 s and then matched eager's losses to 3 digits, at
# eager's speed (0.51 steps/s on 2 cores).
# Needs pydantic's wheels in .whl/ where the machine lacks them (device README).
#   OUT=/tmp/o TRAIN_SECONDS=485 bash benchmarks/device_binding.sh
set -u
TRAIN_SECONDS=${TRAIN_SECONDS:-485}
DEVICE=${DEVICE:-cuda}
OUT=${OUT:?set OUT to a folder for the results}
PY=${PY:-python3}
RUNS=${RUNS:-F}
PRECISION=${PRECISION:-bf16}
EXTRA=${EXTRA:-}  # more overrides for every run's training, e.g. train.compile=true
if [ -d .whl ] && ! $PY -c "import pydantic" 2>/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
W=${WORK:-/tmp/learn}; mkdir -p "$W"
{ nvidia-smi -L 2>/dev/null; $PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no cuda')"; nproc; } > "$W/machine.txt" 2>&1
cat "$W/machine.txt"
declare -A FROM=([D]=A)  # a run with no state of its own starts from this run's
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

# Generate both datasets before training starts, so no run's clock waits on the other's.
$PY -c "
from slotsweep.config import load_config
from slotsweep.data.synthetic import ensure_synthetic
for name in ('configs/dsprites_binding.yaml', 'configs/dsprites_binding64.yaml'):
    c = load_config(name); ensure_synthetic(c.data, resolution=c.model.resolution)
" || exit 1

declare -A ARGS=(
  [B]="configs/dsprites_binding.yaml train.steps=1000000"
  [A]="configs/dsprites_binding64.yaml"
  [C]="configs/dsprites_binding.yaml model.decoder_layers=4 model.decoder_kernel=5 train.steps=1000000"
  [D]="configs/dsprites_binding64.yaml loss.type=cosine loss.beta=0.01 loss.cosine_reduction=mean"
  [E]="configs/dsprites_binding64.yaml model.slot_init=gaussian model.eval_slot_init=seeded"
  [F]="configs/dsprites_slot_attention.yaml eval.every=1000 eval.batch_size=160"
)
for run in $RUNS; do
  timeout -s TERM "$TRAIN_SECONDS" $PY benchmarks/learning.py ${ARGS[$run]} train.device=$DEVICE \
    train.precision=$PRECISION $EXTRA --workdir "$W/$run" > "$W/$run.log" 2>&1 &
done
wait
for run in $RUNS; do
  $PY benchmarks/learning.py ${ARGS[$run]} --report-only --workdir "$W/$run" > "$W/$run.report" 2>&1 &
done
wait
for run in $RUNS; do
  echo "== $run: ${ARGS[$run]}"; tail -n 4 "$W/$run.log"; cat "$W/$run.report"
  ls -d "$W/$run"/checkpoints/step-* 2>/dev/null | head -n -1 | xargs -r rm -rf
done
# Under the 16 MB a device call brings back: no datasets, one checkpoint per run.
tar czf "$OUT/learn.tar.gz" -C "$W" machine.txt $(for run in $RUNS; do echo "$run $run.log $run.report"; done)
ls -la "$OUT"
