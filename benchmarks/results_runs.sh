#!/usr/bin/env bash
# The trainings and evaluations behind docs/results.md, one at a time.
#
#   bash benchmarks/results_runs.sh DATASETS OUT [ROW ...]
#
# DATASETS: the folder holding BSDS500/, ImageNet_sample_subset/, SunHays80/
# and CBSD68/ (see docs/results.md). OUT: where the photo folder, records,
# runs and evaluations go. ROW: rows to run (default: all, in table order);
# a row whose evaluation exists is skipped, an interrupted one resumes
# exactly from its last checkpoint. Each row has a fixed number of steps,
# chosen from the model's step time alone on 2 CPU cores (docs/results.md),
# so a row's figures do not depend on what else the machine was doing.
set -euo pipefail
DATASETS=${1:?usage: results_runs.sh DATASETS OUT [ROW ...]}
OUT=${2:?usage: results_runs.sh DATASETS OUT [ROW ...]}
shift 2
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python}
cd "$ROOT"

# The 780 training photos (never BSDS500/val: 68 of its photos are CBSD68).
PHOTOS=$OUT/photos780
if [ ! -d "$PHOTOS" ]; then
  mkdir -p "$PHOTOS.tmp"
  for d in BSDS500/train BSDS500/test ImageNet_sample_subset SunHays80; do
    for f in "$DATASETS/$d"/*.jpg "$DATASETS/$d"/*.JPEG; do
      [ -e "$f" ] && ln -s "$(realpath "$f")" "$PHOTOS.tmp/${d//\//_}_$(basename "$f")"
    done
  done
  mv "$PHOTOS.tmp" "$PHOTOS"
fi
echo "$(ls "$PHOTOS" | wc -l) training photos in $PHOTOS"

RECORDS=$OUT/records780  # with the ResNet branch's features (seed 0)
COMMON=(--config.data.batch_size=16
        --config.data.eval_batch_size=16 --config.data.num_workers=1
        --config.log_every_steps=20 --config.eval_every_steps=80
        --config.image_every_steps=160 --config.checkpoint_every_steps=160)
if [ ! -f "$RECORDS/metadata.json" ]; then
  "$PY" main.py --config=configs/default.py --mode=prepare \
    --config.data.train_dir="$PHOTOS" --config.data.val_dir="$DATASETS/CBSD68" \
    --config.data.prepared_dir="$RECORDS" --config.data.use_feature_cache=True \
    --config.model.require_resnet18_weights=False
fi

GAN=(--config.model.require_resnet18_weights=False)
CACHE=(--config.data.use_feature_cache=True)
CHROMA=(--config.model.output=chroma)
# The recipe's earlier rates, until its rows showed that the paper's
# constant rates (Adam G 1e-4 / D 1e-5) do as well: G 5e-4 / D 1e-4, a
# 20-step warmup and a cosine decay to zero.
COSINE_RATES=(--config.optim.g_learning_rate=5e-4 --config.optim.d_learning_rate=1e-4
              --config.optim.g_lr_schedule=cosine --config.optim.d_lr_schedule=cosine
              --config.optim.warmup_steps=20)
# name | config | steps | flags; a row's records: RECORDS unless RECORDS_OF
declare -A CONFIG STEPS FLAGS RECORDS_OF
ORDER=()
row() { ORDER+=("$1"); CONFIG[$1]=$2; STEPS[$1]=$3; shift 3; FLAGS[${ORDER[-1]}]="$*"; }
# 60-minute rows (steps = 60 min / the step time alone, docs/results.md)
row paper         configs/default.py 640 "${GAN[*]} ${CACHE[*]}"
row paper_chroma  configs/default.py 640 "${GAN[*]} ${CACHE[*]} ${CHROMA[*]}"
row scgan         configs/scgan_baseline.py 320 ""
row cic           configs/cic_baseline.py 2240 ""
row recipe        configs/recipe.py 640 "${GAN[*]} ${CACHE[*]}"
row recipe_cosine configs/recipe.py 640 "${GAN[*]} ${CACHE[*]} ${COSINE_RATES[*]}"
# The one colour lever that cost no PSNR at 160 steps (the class-rebalanced
# L1 on the recipe), at the 60-minute budget.
row recipe_rebalance configs/recipe.py 640 "${GAN[*]} ${CACHE[*]} --config.loss.l1_rebalance=True"
# The same with the EMA at its full decay from the first step (its warmup
# keeps the decay below 0.995 for 1790 steps: at step 640 it is 0.986).
row recipe_rebalance_ema_no_warmup configs/recipe.py 640 "${GAN[*]} ${CACHE[*]} --config.loss.l1_rebalance=True --config.optim.ema_warmup=False"
# The least-squares objective, the best PSNR of the 160-step rows.
row recipe_lsgan   configs/recipe.py 640 "${GAN[*]} ${CACHE[*]} --config.loss.gan=lsgan"
# The two together: the least-squares objective with the rebalanced L1.
row recipe_lsgan_rebalance configs/recipe.py 640 "${GAN[*]} ${CACHE[*]} --config.loss.gan=lsgan --config.loss.l1_rebalance=True"
# The recipe at half the paper's widths (the earlier quick start's): its step
# costs a third (1.40 s against 4.22 s, batch 16, measured back to back),
# so the same 60 minutes buy three times the steps.
HALF=(--config.model.g_features=\(32,64,128,256,256,256,256\)
      --config.model.d_features=\(32,64,128,256,256,1\))
row recipe_half_width configs/recipe.py 1920 "${GAN[*]} ${CACHE[*]} ${HALF[*]}"
# One switch at a time, at 320 steps (the paper's own row at this budget is
# the step-320 checkpoint of `paper`: a constant learning rate, so the same
# weights as a 320-step run).
row chroma_320    configs/default.py 320 "${GAN[*]} ${CACHE[*]} ${CHROMA[*]}"
# The recipe's switches, at 160 steps: the recipe, and the recipe with one
# switch set back to the paper's value at a time (the paper's own 160-step
# row is the step-160 checkpoint of chroma_320 for output=chroma), then
# levers for more colour, one at a time: a larger weight of its GAN loss,
# Zhang et al.'s class rebalancing on its L1 (more weight on rare,
# saturated colours), the other two objectives on the critic's logits.
row recipe_160                configs/recipe.py 160 "${GAN[*]} ${CACHE[*]}"
row recipe_no_ema_160         configs/recipe.py 160 "${GAN[*]} ${CACHE[*]} --config.optim.ema_decay=0"
row recipe_paper_gan_160      configs/recipe.py 160 "${GAN[*]} ${CACHE[*]} --config.loss.gan=paper --config.loss.gan_weight=0.5"
row recipe_gan_0.3_160        configs/recipe.py 160 "${GAN[*]} ${CACHE[*]} --config.loss.gan_weight=0.3"
row recipe_rebalance_160      configs/recipe.py 160 "${GAN[*]} ${CACHE[*]} --config.loss.l1_rebalance=True"
row recipe_hinge_160          configs/recipe.py 160 "${GAN[*]} ${CACHE[*]} --config.loss.gan=hinge"
row recipe_lsgan_160          configs/recipe.py 160 "${GAN[*]} ${CACHE[*]} --config.loss.gan=lsgan"
# The same with the recipe's earlier rates (the rows that chose the switches
# above, and a faster critic).
row recipe_cosine_160            configs/recipe.py 160 "${GAN[*]} ${CACHE[*]} ${COSINE_RATES[*]}"
row recipe_cosine_no_ema_160     configs/recipe.py 160 "${GAN[*]} ${CACHE[*]} ${COSINE_RATES[*]} --config.optim.ema_decay=0"
row recipe_cosine_paper_gan_160  configs/recipe.py 160 "${GAN[*]} ${CACHE[*]} ${COSINE_RATES[*]} --config.loss.gan=paper --config.loss.gan_weight=0.5"
row recipe_cosine_gan_0.3_160    configs/recipe.py 160 "${GAN[*]} ${CACHE[*]} ${COSINE_RATES[*]} --config.loss.gan_weight=0.3"
row recipe_cosine_d_4e-4_160     configs/recipe.py 160 "${GAN[*]} ${CACHE[*]} ${COSINE_RATES[*]} --config.optim.d_learning_rate=4e-4"
row recipe_cosine_rebalance_160  configs/recipe.py 160 "${GAN[*]} ${CACHE[*]} ${COSINE_RATES[*]} --config.loss.l1_rebalance=True"
# The quick start (the recipe at a quarter of the paper's widths without the
# ResNet branch) at 64 and at 128 px for equal train time: 10 minutes of
# each one's step alone (batch 16, --mode=benchmark back to back on 2 cores
# of a Zen 3: 0.61 s at 64 px, 1.71 s at 128 px; docs/results.md).
QS_EVERY=(--config.log_every_steps=50)
row qs_64  configs/quickstart.py 984 "${QS_EVERY[*]} --config.eval_every_steps=246 --config.image_every_steps=246"
row qs_128 configs/quickstart.py 350 "${QS_EVERY[*]} --config.eval_every_steps=175 --config.image_every_steps=175 --config.data.image_size=128"
RECORDS_OF[qs_128]=$OUT/records780_128  # 128 px, no features

for name in "${@:-${ORDER[@]}}"; do
  [ -n "${CONFIG[$name]:-}" ] || { echo "unknown row $name"; exit 2; }
  records=${RECORDS_OF[$name]:-$RECORDS}
  if [ ! -f "$records/metadata.json" ]; then
    size=$(sed -n 's/.*--config.data.image_size=\([0-9]*\).*/\1/p' <<< "${FLAGS[$name]}")
    "$PY" main.py --config=configs/default.py --mode=prepare \
      --config.data.train_dir="$PHOTOS" --config.data.val_dir="$DATASETS/CBSD68" \
      --config.data.prepared_dir="$records" --config.data.image_size="${size:-64}"
  fi
  run=$OUT/runs/$name
  if [ -f "$run/evaluation/bilinear/evaluation.json" ] && \
     [ -f "$run/evaluation/guided/evaluation.json" ]; then
    echo "== $name: done"; continue
  fi
  echo "== $name: ${CONFIG[$name]} ${STEPS[$name]} steps ${FLAGS[$name]}"
  start=$(date +%s)
  # shellcheck disable=SC2086
  "$PY" main.py --config="${CONFIG[$name]}" --workdir="$run" "${COMMON[@]}" \
    --config.data.prepared_dir="$records" --config.num_train_steps="${STEPS[$name]}" ${FLAGS[$name]}
  echo "$name: main.py --mode=train took $(( $(date +%s) - start )) s (this call; a resumed row counts only its own part)" | tee -a "$OUT/wall_times.txt"
  for up in bilinear guided; do
    "$PY" main.py --mode=evaluate --workdir="$run" --input="$DATASETS/CBSD68" \
      --output="$run/evaluation/$up" --chroma_upsampling=$up
  done
  # The rows of the shorter budgets that a constant-rate run holds as an
  # earlier checkpoint (the same weights as a run of that length).
  case $name in paper) early=320 ;; chroma_320) early=160 ;; *) early= ;; esac
  if [ -n "$early" ]; then
    for up in bilinear guided; do
      "$PY" main.py --mode=evaluate --workdir="$run" --step=$early \
        --input="$DATASETS/CBSD68" --output="$run/evaluation_$early/$up" \
        --chroma_upsampling=$up
    done
  fi
done
