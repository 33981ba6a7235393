"""Phase 1 on cached features vs. the same head trained on the frozen backbone.

Both sides run `keras_transfer.training.train` in this one process, on the
same real photos (../shared/data/cats_vs_dogs/train, 500 cats + 500 dogs,
80/20 stratified split), with MobileNetV2 1.0 at 224 px and its real ImageNet
weights, the same seed, head, optimizer, batch size and number of epochs,
augmentation off (cached features cannot be augmented):

- cached: the backbone's pooled features are computed once, then the head
  (the classifier's own dropout + logits layers) is fitted on them;
- end to end: the lesson's way, `model.fit` on the images with the backbone
  frozen (`cache_features=False`).

"Per epoch" is what Keras' `fit` spends between `on_epoch_begin` and
`on_epoch_end`: one pass over the 800 training examples (forward, backward
through the head, Adam update) plus the validation pass over the 200
validation examples. The first epoch is left out of the mean because it
traces and compiles the step functions. The feature extraction (one forward
pass of the backbone over train and validation) is the cached side's one-time
cost; the break-even is the number of epochs after which the cached side is
ahead in total time. The decoded images are cached in memory before either
side runs, so JPEG decoding is in neither figure (it is printed separately).

    python benchmarks/bench_cached_head.py [--epochs 6] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import time

import _common

_common.setup_keras_home()

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_transfer import data as data_lib  # noqa: E402
from keras_transfer import training  # noqa: E402


class EpochTimer(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seconds: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)


def run(data, *, cached: bool, epochs: int, batch_size: int, learning_rate: float) -> dict:
    config = training.TrainConfig(
        backbone="mobilenet_v2", alpha=1.0, weights="imagenet", augment=False, batch_size=batch_size,
        epochs=epochs, fine_tune_epochs=0, learning_rate=learning_rate, cache_features=cached, verbose=0, seed=0,
    )
    timer = EpochTimer()
    started = time.perf_counter()
    result = training.train(data, config, callbacks=[timer])
    total = time.perf_counter() - started
    keras.backend.clear_session()
    history = result.history["head"]
    return {
        "epoch_s": timer.seconds,
        "after_first_s": float(np.mean(timer.seconds[1:])),
        "extraction_s": result.metrics["phases"]["head"].get("feature_extraction_s", 0.0),
        "total_s": total,
        "val_accuracy": result.metrics["final"]["val"]["accuracy"],
        "train_accuracy": result.metrics["final"]["train"]["accuracy"],
        "val_curve": history["val_accuracy"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=6, help="head epochs of each side (>= 2)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error(f"--epochs must be >= 2 to time epochs after the first. Received: {args.epochs}")

    folder = _common.shared_path("cats_vs_dogs", "train")
    started = time.perf_counter()
    data = data_lib.load_folder(folder, image_size=224, val_split=0.2, seed=0)
    for split in (data.train, data.val):
        for _ in split.batch(256):  # make sure every image is decoded into the in-memory cache
            pass
    decode_s = time.perf_counter() - started
    print(f"data: {folder}: train {len(data.train)}, val {len(data.val)} images at 224 px "
          f"(decoded once in {decode_s:.1f} s, cached in memory for both sides)")
    print(f"MobileNetV2 1.0, ImageNet weights; the package's default head (standardized features, L2 1.0, "
          f"zero-initialized Dense(2)); Adam {args.learning_rate:g}, "
          f"batch {args.batch_size}, {args.epochs} epochs, no augmentation, seed 0\n")

    end_to_end = run(data, cached=False, epochs=args.epochs, batch_size=args.batch_size,
                     learning_rate=args.learning_rate)
    cached = run(data, cached=True, epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate)

    for name, r in (("end to end (frozen backbone)", end_to_end), ("cached features", cached)):
        epochs = ", ".join(f"{s:.3f}" for s in r["epoch_s"])
        curve = ", ".join(f"{a:.3f}" for a in r["val_curve"])
        print(f"{name}:\n  epoch times s: [{epochs}]\n  val accuracy per epoch: [{curve}]")
    speedup = end_to_end["after_first_s"] / cached["after_first_s"]
    saved_per_epoch = end_to_end["after_first_s"] - cached["after_first_s"]
    break_even = cached["extraction_s"] / saved_per_epoch if saved_per_epoch > 0 else float("inf")
    print()
    print(f"{'':32s}{'s/epoch after 1st':>18s}{'one-time s':>12s}{'total s':>10s}{'val acc':>9s}{'train acc':>11s}")
    for name, r in (("end to end (frozen backbone)", end_to_end), ("cached features", cached)):
        print(f"{name:32s}{r['after_first_s']:18.3f}{r['extraction_s']:12.1f}{r['total_s']:10.1f}"
              f"{r['val_accuracy']:9.3f}{r['train_accuracy']:11.3f}")
    difference = 100 * (cached["val_accuracy"] - end_to_end["val_accuracy"])
    print("* total = whole train() call: model build, (extraction), all epochs, final evaluation of train/val images")
    print(f"\nspeed-up per epoch after the first: {speedup:.0f}x (target >= 20x)")
    print(f"validation accuracy difference (cached - end to end): {difference:+.1f} points (target within +-1)")
    print(f"feature extraction (one-time, train + val): {cached['extraction_s']:.1f} s = "
          f"{cached['extraction_s'] / end_to_end['after_first_s']:.2f} end-to-end epochs; "
          f"break-even after {break_even:.2f} epochs")


if __name__ == "__main__":
    main()
