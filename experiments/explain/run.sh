#!/usr/bin/env bash
# The real runs behind experiments/explain/faithfulness.md.
# Needs KERAS_HOME with the MobileNet 0.25 ImageNet weights (see the top-level README), ../shared/data and
# the pets model of the main job in ../runs_after/pets. The full outputs (an overlay per image and method,
# TensorBoard logs) go to $RUNS (default: runs/); panel.png, curves_patch*.png and result.json are copied here.
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS="${RUNS:-runs}"
HERE=experiments/explain
# 16 curve steps (each moves 1/16 of the pixels) keep the 2-core run in about half an hour; the
# curves are drawn both on single pixels (Petsiuk et al.) and on 16 px squares.
COMMON="--curve-steps 16 --patches 1,16 --panel-images 6"

# MobileNet alpha=0.25 on ImageNet classes: 20 cats and 20 dogs of Kaggle's Dogs vs Cats, alternating.
IMAGES=()
for i in $(seq 1 20); do
  IMAGES+=(--image ../shared/data/cats_vs_dogs/train/cats/cat.$i.jpg --image ../shared/data/cats_vs_dogs/train/dogs/dog.$i.jpg)
done
python -m keras_transfer.experiments.explain --backbone mobilenet --alpha 0.25 "${IMAGES[@]}" $COMMON \
    --output-dir "$RUNS/explain_imagenet_mobilenet"

# The pets model (MobileNetV2, 37 breeds): 30 of its validation photos, one breed after another.
PETS=()
while read -r path; do PETS+=(--image "$path"); done < <(python $HERE/pets_val_images.py 30)
python -m keras_transfer.experiments.explain --model ../runs_after/pets/model.keras "${PETS[@]}" $COMMON \
    --output-dir "$RUNS/explain_pets"

for name in imagenet_mobilenet pets; do
  mkdir -p "$HERE/$name"
  cp "$RUNS/explain_$name"/{panel.png,curves_patch1.png,curves_patch16.png,result.json} "$HERE/$name/"
done

# tf-keras-vis against ours on MobileNet 0.25 (32 photos, 20 SmoothGrad samples, median of 5 calls).
python benchmarks/bench_explain.py 2>&1 | grep -v "^WARNING\|^I0000\|^E0000\|^W0000" > $HERE/bench_explain_output.txt
python $HERE/table.py $HERE/imagenet_mobilenet/result.json $HERE/pets/result.json
