"""A fine-tuning epoch against its ceiling: the bare compiled train step on in-memory batches.

Ours is `keras_transfer.phases.run_phase` as `train` runs phase 2: MobileNetV2
1.0 at 224 px with its real ImageNet weights, the top third of the backbone
trainable, the main job's augmentation inside the model, batches from the
package's `tf.data` pipeline (uint8 images cached in memory, shuffled each
epoch), and every epoch committed to a run folder (weight backup with the
optimizer state, then the history) with the TensorBoard scalars written.

The ceiling is the work such an epoch cannot avoid: the same model's
compiled `train_step` (augmentation, forward, backward through the trainable
part, Adam update) called on the same images already stacked in memory as
uint8 batches, nothing else. Both sides alternate in this one process on the
same photos (Oxford pets from ../shared/data, the first `--images` training
images of the main job's split); an epoch is timed from its start to the
start of the next (or the end of training), so the commit is inside it. The
first epoch of each side (tracing) is not counted. Printed: images/s of each
side and ours as a fraction of the ceiling.

A third side is phase 2 with `--cache-bottom`: the frozen bottom of the
backbone runs once per view (the images and their mirror images, timed
apart as its one-time cost), then the same `run_phase` trains the top on
those outputs, one random view per image and epoch (its augmentation is the
flip only; its ceiling is the same bare `train_step`, since that is what a
user compares it with).

    python benchmarks/bench_fine_tune.py [--images 256] [--epochs 3] [--repeats 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import _common

_common.setup_keras_home()

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_transfer as kt  # noqa: E402
from keras_transfer import phases, training  # noqa: E402
from keras_transfer.run_folder import RunFolder  # noqa: E402


class EpochStarts(keras.callbacks.Callback):
    """Times each epoch from its start to the next one's (the last: to the end of training)."""

    def __init__(self):
        super().__init__()
        self.marks: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self.marks.append(time.perf_counter())

    def on_train_end(self, logs=None):
        self.marks.append(time.perf_counter())

    @property
    def seconds(self) -> list[float]:
        return [b - a for a, b in zip(self.marks, self.marks[1:])]


def build(*, seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    model = kt.build_classifier("mobilenet_v2", num_classes=37, image_size=224, augmentation=True)
    training.unfreeze_for_fine_tuning(model, None, train_batchnorm=False)
    return model


def ours(model, train: tf.data.Dataset, *, epochs: int, batch_size: int, folder: str) -> list[float]:
    timer = EpochStarts()
    run = RunFolder(folder)
    run.prepare()
    plan = phases.PhasePlan("fine_tune", model, phases.image_batches(train, batch_size=batch_size, shuffle=True),
                            None, 0, epochs, phases.Optimization(1e-5))
    options = phases.FitOptions(verbose=0, tensorboard_dir=f"{folder}/tensorboard")
    phases.run_phase(plan, options=options, run=run, callbacks=[timer])
    return timer.seconds[1:]


def cached_bottom(model, train: tf.data.Dataset, labels: np.ndarray, *, epochs: int, batch_size: int,
                  folder: str) -> tuple[list[float], float]:
    """Epoch seconds on the bottom's outputs, and the seconds of computing them (both views)."""
    start = time.perf_counter()
    bottom, top = kt.models.split_below_trainable(model)
    views = [phases.predict_images(bottom, ds, batch_size=batch_size) for ds in (train, phases.mirrored(train))]
    extraction = time.perf_counter() - start
    timer = EpochStarts()
    run = RunFolder(folder)
    run.prepare()
    plan = phases.PhasePlan("fine_tune", top, phases.view_batches(views, labels, batch_size=batch_size), None, 0,
                            epochs, phases.Optimization(1e-5))
    options = phases.FitOptions(verbose=0, tensorboard_dir=f"{folder}/tensorboard")
    phases.run_phase(plan, options=options, run=run, callbacks=[timer])
    return timer.seconds[1:], extraction


def ceiling(model, images: np.ndarray, labels: np.ndarray, *, epochs: int, batch_size: int) -> list[float]:
    phases.compile_classifier(model, optimizer=keras.optimizers.Adam(1e-5))
    step = tf.function(lambda x, y: model.train_step((x, y)))
    batches = [(tf.constant(images[i:i + batch_size]), tf.constant(labels[i:i + batch_size]))
               for i in range(0, len(images), batch_size)]
    seconds = []
    for _ in range(epochs):
        start = time.perf_counter()
        for x, y in batches:
            logs = step(x, y)
        float(logs["loss"])  # wait for the last step
        seconds.append(time.perf_counter() - start)
    return seconds[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=3, help="per side and repeat, the first not counted")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    data = kt.load_oxford_pets(_common.shared_path("oxford_pets"), image_size=224, val_split=0.2, seed=0)
    train = data.train.take(args.images).cache()
    images = np.stack([x for x, _ in train.as_numpy_iterator()])
    labels = np.array([y for _, y in train.as_numpy_iterator()])
    print(f"{len(images)} training images of the main job's split, batch {args.batch_size}, "
          f"{args.epochs - 1} counted epochs per side and repeat, {args.repeats} repeats (alternating)")
    rates = {"ours": [], "ceiling": [], "cached bottom": []}
    extraction = []
    for repeat in range(args.repeats):
        runs = {
            "ours": lambda: ours(build(), train, epochs=args.epochs, batch_size=args.batch_size,
                                 folder=_common.temp_dir("bench_fine_tune_")),
            "ceiling": lambda: ceiling(build(), images, labels, epochs=args.epochs, batch_size=args.batch_size),
            "cached bottom": lambda: cached_bottom(build(), train, labels, epochs=args.epochs,
                                                   batch_size=args.batch_size,
                                                   folder=_common.temp_dir("bench_fine_tune_bottom_")),
        }
        for name, run in runs.items():
            seconds = run()
            if name == "cached bottom":
                seconds, once = seconds
                extraction.append(once)
            rates[name].extend(len(images) / s for s in seconds)
            print(f"repeat {repeat + 1} {name:13s} epochs: " + ", ".join(f"{s:.1f} s" for s in seconds))
            keras.backend.clear_session()
    ours_rate, ceiling_rate, bottom_rate = (statistics.median(rates[k]) for k in ("ours", "ceiling", "cached bottom"))
    print(f"ours          {ours_rate:.2f} images/s (median epoch)")
    print(f"ceiling       {ceiling_rate:.2f} images/s (bare compiled train_step on in-memory uint8 batches)")
    print(f"fraction of ceiling: {ours_rate / ceiling_rate:.2f}")
    once = statistics.median(extraction)
    print(f"cached bottom {bottom_rate:.2f} images/s (median epoch): {bottom_rate / ours_rate:.2f}x ours, "
          f"{bottom_rate / ceiling_rate:.2f}x the ceiling; computing the bottom once (2 views) took {once:.1f} s, "
          f"{once * ours_rate / len(images):.2f} of an epoch of ours")


if __name__ == "__main__":
    main()
