#!/usr/bin/env bash
# The real runs behind experiments/transfer_learning/README.md.
# Needs KERAS_HOME with the MobileNetV2 ImageNet weights (see the top-level README)
# and ../shared/data beside the project. Writes into $RUNS (default: runs/).
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS="${RUNS:-runs}"
PETS=../shared/data/oxford_pets
CVD=../shared/data/cats_vs_dogs/train
COMMON="--backbone mobilenet_v2 --image-size 224 --linear-probe --verbose 2"

# Main runs (seed 0): 100 head epochs on cached features, then 5 fine-tuning epochs;
# with and without augmentation.
python -m keras_transfer.experiments.pets --data-dir $PETS $COMMON --epochs 100 --fine-tune-epochs 5 \
    --output-dir "$RUNS/pets"
python -m keras_transfer.experiments.pets --data-dir $PETS $COMMON --epochs 100 --fine-tune-epochs 5 \
    --no-augment --output-dir "$RUNS/pets_no_augment"
python -m keras_transfer.experiments.cats_vs_dogs --data-dir $CVD $COMMON --epochs 100 --fine-tune-epochs 5 \
    --output-dir "$RUNS/cats_vs_dogs"
python -m keras_transfer.experiments.cats_vs_dogs --data-dir $CVD $COMMON --epochs 100 --fine-tune-epochs 5 \
    --no-augment --output-dir "$RUNS/cats_vs_dogs_no_augment"

# Head vs linear probe on four more splits (phase 1 only).
for seed in 1 2 3 4; do
  python -m keras_transfer.experiments.pets --data-dir $PETS $COMMON --epochs 100 --fine-tune-epochs 0 \
      --seed $seed --tensorboard-images-every 0 --output-dir "$RUNS/pets_seed$seed"
  python -m keras_transfer.experiments.cats_vs_dogs --data-dir $CVD $COMMON --epochs 100 --fine-tune-epochs 0 \
      --seed $seed --tensorboard-images-every 0 --output-dir "$RUNS/cats_vs_dogs_seed$seed"
done

# The main job's defaults (100 head epochs, 10 fine-tuning epochs with augmentation) on the five
# splits, against the probe.
for seed in 0 1 2 3 4; do
  python -m keras_transfer.experiments.pets --data-dir $PETS $COMMON --seed $seed --tensorboard-images-every 0 \
      --output-dir "$RUNS/pets_default_seed$seed"
done
