"""Targeted PGD: keras_transfer.adversarial.PGD against CleverHans 4, in one process.

Same model (MobileNet alpha=0.25 with its real ImageNet weights, 224 px,
logits), same images (dog photos of ../shared/data/oxford_pets, centre crop),
same target (281 "tabby"), same eps, steps, step size, batch size and random
start. CleverHans is called as documented:
`projected_gradient_descent(model_fn=<logits model>, x, eps, eps_iter, nb_iter,
norm, clip_min=0, clip_max=255, y=targets, targeted=True, rand_init=True)`,
one batch at a time.

Both are timed after a warm-up run (tracing excluded), in alternating
repeats (TF's global seed is set once, before the warm-up: resetting it
before each peer run cleared TF's kernel caches and slowed the next run);
the median time is reported, as wall time and as the process's CPU time
(which other programs on a shared machine disturb less). Success rates
are printed as floats (as returned) and after rounding to uint8 (as saved).
Ours runs with `quantize=False` (float output, like CleverHans) and
`quantize=True` (the default: uint8 output, success judged after rounding).

Work is counted as well as time: gradient evaluations per image and per
second (ours stops each image at its first success; CleverHans always runs
every step), and each run's fraction of the ceiling: the bare compiled
forward + backward pass of the same logits model with respect to its input,
at the same batch size, timed just before the run. A subset of the photos
(`--no-stop-images`) is also attacked without early stop (the same work as
CleverHans); at a small batch (`--small-batch`), ours with early stop attacks
all the photos and the subset.

    python benchmarks/bench_pgd.py [--num-images 368] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402  (sets KERAS_HOME before keras is imported)

_common.setup_keras_home()

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from cleverhans.tf2.attacks.projected_gradient_descent import projected_gradient_descent  # noqa: E402

import keras_transfer as kt  # noqa: E402
from keras_transfer import adversarial as adv  # noqa: E402
from keras_transfer.data import load_image_files  # noqa: E402

TABBY = 281


def dog_photos(num_images: int) -> np.ndarray:
    folder = _common.shared_path("oxford_pets", "images")
    # Oxford-IIIT Pet: a lower-case file name is a dog breed.
    paths = sorted(os.path.join(folder, n) for n in os.listdir(folder) if n[:1].islower())[:num_images]
    images, kept, skipped = load_image_files(paths, image_size=224, resize="crop")
    if skipped:
        print(f"skipped {len(skipped)} undecodable files", flush=True)
    return images


def cleverhans_pgd(model, images, *, eps, steps, step_size, batch_size) -> np.ndarray:
    # Its random starts come from TF's global generator, seeded once in `main`: `tf.random.set_seed`
    # clears TensorFlow's kernel caches, so that every compiled function is instantiated again on its
    # next call; called before every peer run, it cost the run after it about 15% (ours, measured).
    outputs = []
    for i in range(0, len(images), batch_size):
        x = tf.constant(images[i : i + batch_size], tf.float32)
        y = tf.fill([x.shape[0]], TABBY)
        outputs.append(
            projected_gradient_descent(
                model, x, eps, step_size, steps, np.inf,
                clip_min=0.0, clip_max=255.0, y=y, targeted=True, rand_init=True, rand_minmax=eps,
            ).numpy()
        )
    return np.concatenate(outputs)


def tabby_rate(model, images) -> float:
    return float(np.mean(np.argmax(adv.predict_logits(model, images), axis=1) == TABBY))


def timed(fn):
    """`(result, wall seconds, CPU seconds)` of `fn()`."""
    c0 = time.process_time()
    with _common.Timer() as t:
        result = fn()
    return result, t.seconds, time.process_time() - c0


def make_runs(model, images, criterion, common, args) -> dict:
    """name -> (images, batch size, run(seed) -> (adversarial images, gradient evaluations))."""
    few = images[: args.no_stop_images]
    big, small = args.batch_size, args.small_batch

    def peer(data, batch):
        return data, batch, lambda seed: (
            cleverhans_pgd(model, data, batch_size=batch, **common), len(data) * args.steps
        )

    def ours(data, batch, **kwargs):
        attack = adv.PGD(norm="inf", **kwargs, **common)

        def run(seed):
            result = attack(model, data, criterion, batch_size=batch, seed=seed)
            return result.adversarial, int(result.gradient_steps.sum())

        return data, batch, run

    return {
        "CleverHans": peer(images, big),
        "ours float": ours(images, big, quantize=False),
        "ours uint8": ours(images, big),
        f"CleverHans ({len(few)} images)": peer(few, big),
        "ours uint8 no early stop": ours(few, big, early_stop=False),
        f"CleverHans batch {small}": peer(few, small),
        # Early stop leaves a tail of part-empty batches once no image is left to start: on every
        # photo, as at batch 32, the tail weighs what it does there; on the 64, as much as it does
        # for a user attacking 64.
        f"ours uint8 batch {small}": ours(images, small),
        f"ours uint8 batch {small} ({len(few)} images)": ours(few, small),
        f"ours uint8 no early stop batch {small}": ours(few, small, early_stop=False),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-images", type=int, default=368, help="dog photos to attack (default 368, all)")
    parser.add_argument("--eps", type=float, default=4.0, help="L-inf radius in pixel units (default 4)")
    parser.add_argument("--steps", type=int, default=10, help="PGD steps (default 10)")
    parser.add_argument("--step-size", type=float, default=1.0, help="step in pixel units (default 1)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per batch (default 32)")
    parser.add_argument("--small-batch", type=int, default=8, help="the second, small batch size (default 8)")
    parser.add_argument("--no-stop-images", type=int, default=64,
                        help="photos attacked without early stop, and at the small batch (default 64)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats of each side (default 3)")
    args = parser.parse_args(argv)

    images = dog_photos(args.num_images)
    model = kt.build_imagenet_classifier("mobilenet", alpha=0.25)
    n = len(images)
    print(
        f"MobileNet 0.25 @224, {n} dog photos -> 'tabby' ({TABBY}); L-inf eps={args.eps:g}, "
        f"{args.steps} steps of {args.step_size:g}, random start, batch {args.batch_size}; "
        f"{os.cpu_count()} CPU cores; TF {tf.__version__}",
        flush=True,
    )
    print(f"clean images already 'tabby': {tabby_rate(model, images):.4f}", flush=True)
    criterion = adv.TargetedMisclassification(TABBY)
    common = dict(eps=args.eps, steps=args.steps, step_size=args.step_size)
    big, small = args.batch_size, args.small_batch
    runs = make_runs(model, images, criterion, common, args)

    def ours(quantize=True):
        return adv.PGD(norm="inf", quantize=quantize, **common)

    ceiling_steps = {big: 6, small: 12}

    # Warm-up: tracing of every compiled function, on one batch.
    tf.random.set_seed(0)
    cleverhans_pgd(model, images[:big], batch_size=big, **common)
    cleverhans_pgd(model, images[:small], batch_size=small, **common)
    for quantize in (False, True):
        ours(quantize)(model, images[:big], criterion, batch_size=big)
    ours()(model, images[:small], criterion, batch_size=small)
    for batch in ceiling_steps:
        adv.network_rate(model, batch_size=batch, steps=1)

    wall: dict[str, list[float]] = {key: [] for key in runs}
    cpu: dict[str, list[float]] = {key: [] for key in runs}
    ceiling: dict[str, list[float]] = {key: [] for key in runs}  # gradients/s next to each run
    last: dict[str, np.ndarray] = {}
    gradients: dict[str, int] = {}
    for repeat in range(args.repeats):
        for key, (data, batch, run) in runs.items():
            # The bare network at the same batch size, between every run.
            rate = adv.network_rate(model, batch_size=batch, steps=ceiling_steps[batch])
            (last[key], gradients[key]), seconds, cpu_seconds = timed(lambda: run(repeat))
            wall[key].append(seconds)
            cpu[key].append(cpu_seconds)
            ceiling[key].append(rate * batch)
        print(f"repeat {repeat + 1}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in wall.items()), flush=True)
    report(model, runs, wall, cpu, ceiling, last, gradients, args)


def report(model, runs, wall, cpu, ceiling, last, gradients, args) -> None:
    print()
    print("ceiling: the bare compiled forward + backward pass of the logits model with respect to its input, at the")
    print("run's batch size, timed just before each run; 'of ceiling' = the run's gradient evaluations/s over the")
    print("ceiling's (images x batches/s), median over the repeats of each repeat's ratio")
    for batch in sorted({batch for _, batch, _ in runs.values()}, reverse=True):
        rates = [r for key, (_, b, _) in runs.items() if b == batch for r in ceiling[key]]
        print(f"  batch {batch}: {statistics.median(rates):.1f} gradients/s (median of {len(rates)}, "
              f"range {min(rates):.1f}-{max(rates):.1f})")
    print()
    print(f"{'':36s} {'images':>6s} {'batch':>5s} {'img/s':>7s} {'grad/img':>8s} {'grad/s':>7s} {'of ceiling':>10s} "
          f"{'success':>8s} {'(uint8)':>8s} {'max Linf':>8s}")
    rates = {}
    for key, (data, batch, _) in runs.items():
        x = last[key]
        rounded = np.clip(np.round(x.astype(np.float64)), 0, 255).astype(np.uint8)
        linf, _ = adv.perturbation_norms(data, rounded)
        seconds = statistics.median(wall[key])
        rates[key] = (len(data) / seconds, gradients[key] / seconds)
        fraction = statistics.median(gradients[key] / w / c for w, c in zip(wall[key], ceiling[key]))
        print(f"{key:36s} {len(data):6d} {batch:5d} {rates[key][0]:7.2f} {gradients[key] / len(data):8.2f} "
              f"{rates[key][1]:7.1f} {fraction:10.3f} {tabby_rate(model, x.astype(np.float32)):8.4f} "
              f"{tabby_rate(model, rounded):8.4f} {linf.max():8.1f}")
    print()
    peer_images, peer_gradients = rates["CleverHans"]
    for key, label in (("ours float", "float output (ours quantize=False)"), ("ours uint8", "uint8 output (ours quantize=True) ")):
        cpu_ratio = statistics.median(cpu["CleverHans"]) / statistics.median(cpu[key])
        print(f"speed-up vs CleverHans, {label}: {rates[key][0] / peer_images:.2f}x images/s (wall), "
              f"{cpu_ratio:.2f}x (CPU time); per gradient evaluation {rates[key][1] / peer_gradients:.2f}x")
    no_stop = rates["ours uint8 no early stop"][1] / rates[f"CleverHans ({args.no_stop_images} images)"][1]
    print(f"gradient evaluations/s, ours uint8 / CleverHans, batch {args.batch_size}: {rates['ours uint8'][1] / peer_gradients:.2f}x "
          f"with early stop, {no_stop:.2f}x without (same {args.no_stop_images} images, both all {args.steps} steps)")


if __name__ == "__main__":
    main()
