"""The cost of an adversarial fine-tuning epoch beside a standard one, on the same photos.

Both sides are `keras_transfer.phases.run_phase` as `train` runs phase 2
(MobileNetV2 1.0 at 224 px with its real ImageNet weights, the main job's
augmentation inside the model, the package's `tf.data` batches, every epoch
committed to a run folder): the standard side fits the classifier, the
adversarial side fits `AdversarialFineTuning` around an identical classifier
(`--adversarial-eps 4`, one attack step from a random start, and
`--adversarial-steps 3` as a second row). The photos are the first
`--images` training images of the cats-vs-dogs split of ../shared/data. The
sides alternate in this one process, an epoch is timed from its start to the
start of the next (the commit inside it), and the first epoch of each side
(tracing) is not counted. Validation is not part of the timed epochs (under
the attack, validation costs the same multiple of a clean validation pass).

Printed: images/s of each side, each adversarial side's cost in standard
epochs, and the passes it makes over the network per batch (the attack's
forward and backward passes reach the input, through the frozen layers too).

    python benchmarks/bench_adversarial_training.py [--images 128] [--epochs 3] [--fine-tune-at all]
"""

from __future__ import annotations

import argparse
import statistics

import _common

_common.setup_keras_home()

import keras  # noqa: E402

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


def epoch_seconds(model, train, *, epochs: int, batch_size: int) -> tuple[list[float], dict]:
    timer = EpochStarts()
    folder = _common.temp_dir("bench_adversarial_training_")
    run = RunFolder(folder)
    run.prepare()
    plan = phases.PhasePlan("fine_tune", model, phases.image_batches(train, batch_size=batch_size, shuffle=True),
                            None, 0, epochs, phases.Optimization(1e-4))
    records = phases.run_phase(plan, options=phases.FitOptions(verbose=0, tensorboard_dir=f"{folder}/tb"), run=run,
                               callbacks=[timer])
    return timer.seconds[1:], records[max(records)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=3, help="per side, the first not counted")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--eps", type=float, default=4.0)
    parser.add_argument("--fine-tune-at", default="all", help="as --fine-tune-at of the training commands")
    args = parser.parse_args()
    fine_tune_at = None if args.fine_tune_at == "default" else args.fine_tune_at

    data = kt.load_folder(_common.shared_path("cats_vs_dogs", "train"), image_size=224, val_split=0.2, seed=0)
    train = data.train.take(args.images).cache()
    n = sum(1 for _ in train)
    print(f"{n} training images of the cats-vs-dogs split, batch {args.batch_size}, fine_tune_at={args.fine_tune_at}, "
          f"{args.epochs - 1} counted epochs per side")
    sides = {
        "standard": None,
        "adversarial 1 step": AdversarialTraining(eps=args.eps, steps=1),
        "adversarial 3 steps": AdversarialTraining(eps=args.eps, steps=3),
    }
    rates = {}
    for name, attack in sides.items():
        model = build(fine_tune_at)
        fitted = model if attack is None else AdversarialFineTuning(model, attack=attack)
        seconds, last = epoch_seconds(fitted, train, epochs=args.epochs, batch_size=args.batch_size)
        rates[name] = n / statistics.median(seconds)
        logs = ", ".join(f"{k} {v:.3f}" for k, v in sorted(last.items()) if "accuracy" in k)
        print(f"{name:20s} epochs: " + ", ".join(f"{s:.1f} s" for s in seconds) + f"  (last epoch: {logs})",
              flush=True)
        keras.backend.clear_session()
    for name, rate in rates.items():
        cost = rates["standard"] / rate
        print(f"{name:20s} {rate:6.2f} images/s, {cost:.2f}x the standard epoch's time")


if __name__ == "__main__":
    main()
