"""Targeted PGD: keras_transfer.adversarial.PGD against CleverHans 4, in one process.

Same model (MobileNet alpha=0.25 with its real ImageNet weights, 224 px,
logits), same images (dog photos of ../shared/data/oxford_pets, centre crop),
same target (281 "tabby"), same eps, steps, step size, batch size and random
start. CleverHans is called as documented:
`projected_gradient_descent(model_fn=<logits model>, x, eps, eps_iter, nb_iter,
norm, clip_min=0, clip_max=255, y=targets, targeted=True, rand_init=True)`,
one batch at a time.

Both are timed after a warm-up run (tracing excluded), in alternating
repeats; the median time is reported, as wall time and as the process's CPU
time (which other programs on a shared machine disturb less). Success rates are printed as floats
(as returned) and after rounding to uint8 (as saved). Ours runs twice:
`quantize=False` (float output, like CleverHans) and `quantize=True` (the
default: uint8 output, success judged after rounding).

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


def cleverhans_pgd(model, images, *, eps, steps, step_size, batch_size, seed) -> np.ndarray:
    tf.random.set_seed(seed)
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


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-images", type=int, default=368, help="dog photos to attack (default 368, all)")
    parser.add_argument("--eps", type=float, default=4.0, help="L-inf radius in pixel units (default 4)")
    parser.add_argument("--steps", type=int, default=10, help="PGD steps (default 10)")
    parser.add_argument("--step-size", type=float, default=1.0, help="step in pixel units (default 1)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per batch (default 32)")
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
    ours = {
        quantize: adv.PGD(norm="inf", eps=args.eps, steps=args.steps, step_size=args.step_size, quantize=quantize)
        for quantize in (False, True)
    }
    criterion = adv.TargetedMisclassification(TABBY)
    common = dict(eps=args.eps, steps=args.steps, step_size=args.step_size, batch_size=args.batch_size)

    # Warm-up: tracing of every compiled function, on one batch.
    warm = images[: args.batch_size]
    cleverhans_pgd(model, warm, seed=0, **common)
    for attack in ours.values():
        attack(model, warm, criterion, batch_size=args.batch_size)

    times: dict[str, list[float]] = {"cleverhans": [], "ours_float": [], "ours_uint8": []}
    cpu: dict[str, list[float]] = {key: [] for key in times}
    last: dict[str, np.ndarray] = {}
    evals = {}
    for repeat in range(args.repeats):
        c0 = time.process_time()
        with _common.Timer() as t:
            last["cleverhans"] = cleverhans_pgd(model, images, seed=repeat, **common)
        times["cleverhans"].append(t.seconds)
        cpu["cleverhans"].append(time.process_time() - c0)
        for quantize, key in ((False, "ours_float"), (True, "ours_uint8")):
            c0 = time.process_time()
            with _common.Timer() as t:
                result = ours[quantize](model, images, criterion, batch_size=args.batch_size, seed=repeat)
            times[key].append(t.seconds)
            cpu[key].append(time.process_time() - c0)
            last[key] = result.adversarial
            evals[key] = float(result.gradient_steps.mean())
        print(
            f"repeat {repeat + 1}: "
            + ", ".join(f"{k} {v[-1]:.1f} s (CPU {cpu[k][-1]:.1f} s)" for k, v in times.items()),
            flush=True,
        )

    print()
    print(f"{'':12s} {'img/s':>8s} {'success (float)':>16s} {'success (uint8)':>16s} {'max Linf':>9s} {'grad/img':>9s}")
    rates = {}
    for key, label in (("cleverhans", "CleverHans"), ("ours_float", "ours float"), ("ours_uint8", "ours uint8")):
        x = last[key]
        rounded = np.clip(np.round(x.astype(np.float64)), 0, 255).astype(np.uint8)
        as_float = tabby_rate(model, x.astype(np.float32))
        as_uint8 = tabby_rate(model, rounded)
        linf, _ = adv.perturbation_norms(images, rounded)
        rate = n / statistics.median(times[key])
        rates[key] = rate
        grads = evals.get(key, float(args.steps))
        print(f"{label:12s} {rate:8.2f} {as_float:16.4f} {as_uint8:16.4f} {linf.max():9.1f} {grads:9.2f}")
    print()
    for key, label in (("ours_float", "float output (ours quantize=False)"), ("ours_uint8", "uint8 output (ours quantize=True) ")):
        wall = rates[key] / rates["cleverhans"]
        cpu_ratio = statistics.median(cpu["cleverhans"]) / statistics.median(cpu[key])
        print(f"speed-up vs CleverHans, {label}: {wall:.2f}x images/s (wall), {cpu_ratio:.2f}x (CPU time)")


if __name__ == "__main__":
    main()
