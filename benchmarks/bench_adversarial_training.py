"""The cost of an adversarial fine-tuning epoch beside a standard one, on the same photos.

Both sides are `keras_transfer.phases.run_phase` as `train` runs phase 2
(MobileNetV2 1.0 at 224 px with its real ImageNet weights, the main job's
augmentation inside the model, the package's `tf.data` batches, every epoch
committed to a run folder): the standard side fits the classifier, the
adversarial side fits `AdversarialFineTuning` around an identical classifier
(`--adversarial-eps 4`, one attack step from a random start, and
`--adversarial-steps 3` as a second row). The photos are the first
`--images` training images of the cats-vs-dogs split of ../shared/data. The
sides alternate in this one process, round after round (so that a change of
the machine's load falls on all of them), an epoch is timed from its start to
the start of the next (the commit inside it), and the first epoch of each
side and round (tracing) is not counted. The head is not trained first: the
timing does not depend on the weights, and the robustness a run buys is
measured in experiments/robustness/. Validation is not part of the timed epochs (under
the attack, validation costs the same multiple of a clean validation pass).

Printed: images/s of each side (median epoch) and each side's epoch time in
standard epochs; then the same for one compiled `train_step` of each side on
one in-memory batch (no pipeline, no commit), interleaved. An adversarial batch makes the attack's forward and
backward passes (which reach the input, through the frozen layers too) and
trains on the clean and the attacked images.

    python benchmarks/bench_adversarial_training.py [--images 96] [--epochs 2] [--rounds 2] [--fine-tune-at all]
"""

from __future__ import annotations

import argparse
import statistics
import time

import _common

_common.setup_keras_home()

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_transfer as kt  # noqa: E402
from keras_transfer import phases, training  # noqa: E402
from keras_transfer.adversarial_training import AdversarialFineTuning, AdversarialTraining  # noqa: E402
from keras_transfer.run_folder import RunFolder  # noqa: E402

from bench_fine_tune import EpochStarts  # noqa: E402


def build(fine_tune_at, *, seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    model = kt.build_classifier("mobilenet_v2", num_classes=2, image_size=224, augmentation=True)
    training.unfreeze_for_fine_tuning(model, fine_tune_at, train_batchnorm=False)
    return model


def epoch_seconds(model, train, *, epochs: int, batch_size: int) -> list[float]:
    timer = EpochStarts()
    folder = _common.temp_dir("bench_adversarial_training_")
    run = RunFolder(folder)
    run.prepare()
    plan = phases.PhasePlan("fine_tune", model, phases.image_batches(train, batch_size=batch_size, shuffle=True),
                            None, 0, epochs, phases.Optimization(1e-4))
    phases.run_phase(plan, options=phases.FitOptions(verbose=0, tensorboard_dir=f"{folder}/tb"), run=run,
                     callbacks=[timer])
    return timer.seconds[1:]


def step_seconds(sides: dict, train, *, fine_tune_at, batch_size: int, repeats: int = 3) -> dict[str, list[float]]:
    """Seconds of one compiled `train_step` of each side on the same in-memory batch, interleaved."""
    x, y = next(iter(phases.image_batches(train, batch_size=batch_size)))
    steps = {}
    for name, attack in sides.items():
        model = build(fine_tune_at)
        fitted = model if attack is None else AdversarialFineTuning(model, attack=attack)
        phases.compile_classifier(fitted, optimizer=keras.optimizers.Adam(1e-4))
        steps[name] = tf.function(lambda a, b, fitted=fitted: fitted.train_step((a, b)))
        float(steps[name](x, y)["loss"])  # traced outside the timings
    seconds: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            float(step(x, y)["loss"])
            seconds[name].append(time.perf_counter() - start)
    return seconds


def report(title: str, seconds: dict[str, list[float]], images: int) -> None:
    print(title)
    standard = statistics.median(seconds["standard"])
    for name, times in seconds.items():
        median = statistics.median(times)
        print(f"  {name:20s} {images / median:6.2f} images/s, {median / standard:.2f}x standard")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=2, help="per side and round, the first not counted")
    parser.add_argument("--rounds", type=int, default=2, help="the sides alternate, round after round")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--eps", type=float, default=4.0)
    parser.add_argument("--fine-tune-at", default="all", help="as --fine-tune-at of the training commands")
    args = parser.parse_args()
    fine_tune_at = None if args.fine_tune_at == "default" else args.fine_tune_at

    data = kt.load_folder(_common.shared_path("cats_vs_dogs", "train"), image_size=224, val_split=0.2, seed=0)
    train = data.train.take(args.images).cache()
    n = sum(1 for _ in train)
    print(f"{n} training images of the cats-vs-dogs split, batch {args.batch_size}, fine_tune_at={args.fine_tune_at}, "
          f"{args.epochs - 1} counted epochs per side and round, {args.rounds} rounds")
    sides = {
        "standard": None,
        "adversarial 1 step": AdversarialTraining(eps=args.eps, steps=1),
        "adversarial 3 steps": AdversarialTraining(eps=args.eps, steps=3),
    }
    seconds: dict[str, list[float]] = {name: [] for name in sides}
    for round_ in range(args.rounds):
        for name, attack in sides.items():
            model = build(fine_tune_at)
            fitted = model if attack is None else AdversarialFineTuning(model, attack=attack)
            times = epoch_seconds(fitted, train, epochs=args.epochs, batch_size=args.batch_size)
            seconds[name].extend(times)
            print(f"round {round_ + 1} {name:20s} epochs: " + ", ".join(f"{t:.1f} s" for t in times), flush=True)
            keras.backend.clear_session()
    report("epochs (median; pipeline, commit and TensorBoard included):", seconds, n)
    steps = step_seconds(sides, train, fine_tune_at=fine_tune_at, batch_size=args.batch_size)
    for name, times in steps.items():
        print(f"train_step {name:20s}: " + ", ".join(f"{t:.2f} s" for t in times))
    report(f"one compiled train_step on an in-memory batch of {args.batch_size} (median of 3, interleaved):",
           steps, args.batch_size)


if __name__ == "__main__":
    main()
