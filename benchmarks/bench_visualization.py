"""Class visualization: keras_transfer.visualization against tf-keras-vis ActivationMaximization.

Same model (MobileNet alpha=0.25 with its real ImageNet weights, 224 px,
logits), same targets (281 "tabby" and 340 "zebra", one batch of 2), same
start image (mid-grey plus the same Gaussian noise), same number of steps,
same objective, same penalty, same transforms, same optimizer:

- objective: logit + 3 * log-softmax of the target (our default). tf-keras-vis
  takes it as a score function, which its documentation allows (`score`:
  "A Score instance, function or a list of them");
- penalty: total variation only. Ours is the mean absolute neighbour
  difference on a [0, 1] scale with weight w; tf-keras-vis' `TotalVariation2D`
  is the same sum on the [0, 255] input divided by H*W*C, so it gets weight
  w / 255 * W / (W - 1), which makes the two penalties equal;
- transforms: jitter 8 px, rotation 5 degrees, zoom 0.9-1.1, as tf-keras-vis'
  `Jitter(8)`, `Rotate2D(5)`, `Scale(0.9, 1.1)` (which it applies to the image
  itself at every step, in NumPy/SciPy, while ours transform the model's view
  in TF ops inside the compiled step);
- optimizer: Adam, learning rate 0.01 on our [0, 1] pixel scale = 2.55 on
  tf-keras-vis' [0, 255] scale (Adam's step is in parameter units);
- parameterization: raw pixels for both (tf-keras-vis has no other). Our
  default Fourier parameterization is timed too, for information.

Quality: the target probability of the final images rounded to uint8 (as
saved), and their total variation. Ceiling: the bare compiled forward +
backward pass of the same logits model with respect to its input, at the same
batch size and size (224 px, the optimized resolution), timed before every
run; each loop's steps/s is printed as a fraction of it. A second part runs
ours at batch 8 (8 classes, pixel and the default Fourier parameterization)
against the batch-8 ceiling, interleaved, with the target probabilities. Speed: steps per second of the whole
`__call__`/`visualize_classes` (ours also without its one tracing step), as
wall time and as the process's CPU time, which other programs on a shared
machine disturb less. Ours runs `--repeats` times (median), tf-keras-vis once
(it is ~10x slower); a 3-step warm-up of each comes first.

    python benchmarks/bench_visualization.py [--steps 128] [--repeats 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402  (sets KERAS_HOME before keras is imported)

_common.setup_keras_home()
_common.shared_path("keras_home", "models", "mobilenet_2_5_224_tf.h5")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tf_keras_vis.activation_maximization import ActivationMaximization  # noqa: E402
from tf_keras_vis.activation_maximization.input_modifiers import Jitter, Rotate2D, Scale  # noqa: E402
from tf_keras_vis.activation_maximization.regularizers import TotalVariation2D  # noqa: E402

import keras_transfer as kt  # noqa: E402
from keras_transfer import adversarial as adv  # noqa: E402
from keras_transfer import visualization as vis  # noqa: E402

TARGETS = [281, 340]
NAMES = ["tabby", "zebra"]
# The batch-of-8 run: tabby, zebra, goldfish, bald eagle, tree frog, golden retriever, monarch, espresso.
TARGETS_8 = [281, 340, 1, 22, 31, 207, 323, 967]


def peer_score(log_prob_weight: float):
    targets = tf.constant(TARGETS)

    def score(output):
        logit = tf.gather(output, targets, axis=1, batch_dims=1)
        log_prob = tf.gather(tf.nn.log_softmax(output, axis=-1), targets, axis=1, batch_dims=1)
        return logit + log_prob_weight * log_prob

    return score


def run_peer(model, start, config: vis.VisualizationConfig, tv_weight_peer: float, steps: int):
    activation_maximization = ActivationMaximization(model, clone=False)
    kwargs = dict(
        seed_input=tf.constant(start * 255.0),
        input_range=(0.0, 255.0),
        input_modifiers=[
            Jitter(jitter=config.jitter),
            Rotate2D(degree=config.rotation),
            Scale(low=1.0 - config.scale, high=1.0 + config.scale),
        ],
        regularizers=[TotalVariation2D(weight=tv_weight_peer)],
        steps=steps,
        optimizer=keras.optimizers.Adam(learning_rate=config.effective_learning_rate * 255.0),
    )
    wall, cpu = time.perf_counter(), time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Keras warns that a list input does not match the named input
        images = activation_maximization(peer_score(config.log_prob_weight), **kwargs)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return np.asarray(images), wall, cpu, kwargs


def run_ours(model, config: vis.VisualizationConfig, targets=TARGETS):
    after_first = {}

    def mark(step, logs):  # after the first step, which traces the compiled step
        if step == 0:
            after_first["wall"], after_first["cpu"] = time.perf_counter(), time.process_time()

    wall, cpu = time.perf_counter(), time.process_time()
    result = vis.visualize_classes(model, targets, config=config, progress=False, callbacks=[mark])
    end_wall, end_cpu = time.perf_counter(), time.process_time()
    steady_cpu = (config.steps - 1) / (end_cpu - after_first["cpu"])
    steady_wall = (config.steps - 1) / (end_wall - after_first["wall"])
    return result, end_wall - wall, end_cpu - cpu, steady_wall, steady_cpu


def quality(model, images, targets=TARGETS) -> tuple[list[float], list[float]]:
    uint8 = np.clip(np.round(images), 0, 255).astype(np.uint8)
    probs = kt.class_probabilities(model, uint8)
    tv = vis.total_variation(uint8 / 255.0).numpy()
    return [float(probs[i, t]) for i, t in enumerate(targets)], [float(v) for v in tv]


def ceiling_rate(model, batch: int, *, steps: int | None = None) -> float:
    """Steps/s of the bare compiled forward + backward of the logits model wrt its input (~1 s)."""
    return adv.network_rate(model, batch_size=batch, steps=steps or max(4, 24 // batch))


def print_ceiling(ceilings, ours_runs, peer_fraction: float) -> None:
    ours_fraction = statistics.median(run[3] / c for run, c in zip(ours_runs, ceilings))
    print(f"ceiling (bare compiled forward + backward of the logits model wrt its input, batch 2, 224 px, timed "
          f"before each run): median {statistics.median(ceilings):.2f} steps/s; fraction of ceiling: ours pixel "
          f"{ours_fraction:.3f} (steady wall), tf-keras-vis {peer_fraction:.3f}")


def batch_of_8(model, args) -> None:
    """Ours at batch 8 against the network's own ceiling, interleaved, with quality."""
    configs = {
        name: vis.VisualizationConfig(parameterization=name, steps=args.steps, seed=args.seed)
        for name in ("pixel", "fourier")
    }
    for config in configs.values():  # warm-up
        vis.visualize_classes(model, TARGETS_8, config=dataclasses.replace(config, steps=3), progress=False)
    fractions: dict[str, list[float]] = {name: [] for name in configs}
    speeds: dict[str, list[float]] = {name: [] for name in configs}
    ceilings: list[float] = []
    results = {}
    for _ in range(args.repeats):
        for name, config in configs.items():
            # Timed before and after the run, 12 steps each (a few steps alone vary 2x on a shared machine).
            before = ceiling_rate(model, len(TARGETS_8), steps=12)
            results[name], _, _, steady_wall, _ = run_ours(model, config, TARGETS_8)
            ceiling = (before + ceiling_rate(model, len(TARGETS_8), steps=12)) / 2
            ceilings.append(ceiling)
            speeds[name].append(steady_wall)
            fractions[name].append(steady_wall / ceiling)
    print()
    print(f"batch 8 ({len(TARGETS_8)} classes {TARGETS_8}), {args.steps} steps, default settings but the "
          "parameterization; ceiling = the bare compiled forward + backward of the logits model wrt its input at "
          f"batch 8, 224 px, the mean of 12 steps before and 12 after every run: median {statistics.median(ceilings):.2f} batches/s "
          f"(range {min(ceilings):.2f}-{max(ceilings):.2f})")
    print(f"{'method':<24}{'steps/s':>10}{'of ceiling':>12}{'mean p':>10}{'min p':>10}   (p(target) on the saved uint8 images)")
    for name in configs:
        probs, _ = quality(model, results[name].images, TARGETS_8)
        print(f"{'ours ' + name:<24}{statistics.median(speeds[name]):>10.2f}{statistics.median(fractions[name]):>12.3f}"
              f"{np.mean(probs):>10.4f}{np.min(probs):>10.4f}")


def print_settings(pixel: vis.VisualizationConfig, tv_weight_peer: float, args) -> None:
    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, tf-keras-vis 0.8.7 (installed)")
    print(f"model: MobileNet alpha=0.25 ImageNet, 224 px, logits; targets {TARGETS} {NAMES}; batch 2; "
          f"{args.steps} steps; seed {args.seed}")
    print("ours (pixel):  VisualizationConfig(" + ", ".join(
        f"{k}={getattr(pixel, k)!r}" for k in ("parameterization", "objective", "log_prob_weight", "jitter", "scale",
                                               "rotation", "jit_compile")
    ) + f", learning_rate={pixel.effective_learning_rate} ([0,1] scale), tv_weight={pixel.effective_tv_weight} "
        "(mean over pixels, [0,1] scale), Adam)")
    print(f"tf-keras-vis:  ActivationMaximization(model, clone=False)(score=logit + {pixel.log_prob_weight} * "
          f"log_softmax, seed_input=<same start x 255>, input_range=(0, 255), input_modifiers=[Jitter(jitter="
          f"{pixel.jitter}), Rotate2D(degree={pixel.rotation}), Scale(low={1 - pixel.scale}, high={1 + pixel.scale})], "
          f"regularizers=[TotalVariation2D(weight={tv_weight_peer:.6f})], steps={args.steps}, "
          f"optimizer=Adam(learning_rate={pixel.effective_learning_rate * 255:.2f}))")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=128, help="optimization steps (default: %(default)s).")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of ours (default: %(default)s).")
    parser.add_argument("--seed", type=int, default=0, help="seed of the start image (default: %(default)s).")
    args = parser.parse_args()

    model = kt.build_imagenet_classifier("mobilenet", alpha=0.25)
    size = 224
    pixel = vis.VisualizationConfig(parameterization="pixel", steps=args.steps, seed=args.seed)
    # The same start image for both: our PixelImage start for this seed.
    start = vis.PixelImage(size).initial(len(TARGETS), std=pixel.init_std, rng=np.random.default_rng(args.seed))
    tv_weight_peer = pixel.effective_tv_weight / 255.0 * size / (size - 1)

    print_settings(pixel, tv_weight_peer, args)

    # Warm-up: builds the model's call paths and loads kernels for both.
    run_ours(model, vis.VisualizationConfig(parameterization="pixel", steps=3, seed=args.seed))
    run_peer(model, start, pixel, tv_weight_peer, 3)

    rows = {}
    ours_runs = []
    ceilings = []  # batch 2, before every run of ours and the peer's
    for _ in range(args.repeats):
        ceilings.append(ceiling_rate(model, len(TARGETS)))
        ours_runs.append(run_ours(model, pixel))
    ceilings.append(ceiling_rate(model, len(TARGETS)))
    peer_images, peer_wall, peer_cpu, _ = run_peer(model, start, pixel, tv_weight_peer, args.steps)
    peer_ceiling = ceilings[-1]
    fourier = vis.VisualizationConfig(steps=args.steps, seed=args.seed)
    xla = vis.VisualizationConfig(parameterization="pixel", steps=args.steps, seed=args.seed, jit_compile=True)
    fourier_run = run_ours(model, fourier)
    xla_run = run_ours(model, xla)

    def summarize(runs):
        result = runs[0][0]
        wall = statistics.median(r[1] for r in runs)
        cpu = statistics.median(r[2] for r in runs)
        steady_wall = statistics.median(r[3] for r in runs)
        steady_cpu = statistics.median(r[4] for r in runs)
        return result, args.steps / wall, args.steps / cpu, steady_wall, steady_cpu

    rows["ours pixel"] = summarize(ours_runs)
    rows["ours pixel XLA"] = summarize([xla_run])
    rows["ours fourier (default)"] = summarize([fourier_run])
    peer_probs, peer_tv = quality(model, peer_images)

    peer_wall_sps, peer_cpu_sps = args.steps / peer_wall, args.steps / peer_cpu
    print()
    print("steps per second: 'all' = whole call / steps; 'steady' = without our first step, which traces")
    print(f"{'method':<24}{'wall all':>10}{'wall steady':>13}{'CPU all':>10}{'CPU steady':>12}"
          f"{'p(tabby)':>10}{'p(zebra)':>10}{'TV tabby':>10}{'TV zebra':>10}")
    for name, (result, sps_wall, sps_cpu, steady_wall, steady_cpu) in rows.items():
        probs, tv = quality(model, result.images)
        print(f"{name:<24}{sps_wall:>10.2f}{steady_wall:>13.2f}{sps_cpu:>10.2f}{steady_cpu:>12.2f}"
              f"{probs[0]:>10.4f}{probs[1]:>10.4f}{tv[0]:>10.4f}{tv[1]:>10.4f}")
    print(f"{'tf-keras-vis pixel':<24}{peer_wall_sps:>10.2f}{peer_wall_sps:>13.2f}{peer_cpu_sps:>10.2f}"
          f"{peer_cpu_sps:>12.2f}{peer_probs[0]:>10.4f}{peer_probs[1]:>10.4f}{peer_tv[0]:>10.4f}{peer_tv[1]:>10.4f}")
    ours_result, ours_wall, ours_cpu, ours_steady_wall, ours_steady_cpu = rows["ours pixel"]
    ours_probs, _ = quality(model, ours_result.images)
    fourier_wall = rows["ours fourier (default)"][1]
    print()
    print("speed ratio ours pixel / tf-keras-vis pixel (same work): "
          f"wall {ours_wall / peer_wall_sps:.1f}x (whole call, with our tracing step), "
          f"wall steady {ours_steady_wall / peer_wall_sps:.1f}x; "
          f"CPU {ours_cpu / peer_cpu_sps:.1f}x, CPU steady {ours_steady_cpu / peer_cpu_sps:.1f}x "
          "(CPU time adds up both cores: our compiled kernels use both, tf-keras-vis' eager Python loop mostly one)")
    print(f"speed ratio ours fourier (default) / tf-keras-vis pixel: wall {fourier_wall / peer_wall_sps:.1f}x")
    print_ceiling(ceilings, ours_runs, peer_wall_sps / peer_ceiling)
    verdict = all(o >= p for o, p in zip(ours_probs, peer_probs))
    print(f"final target probability (uint8), ours pixel vs tf-keras-vis: {ours_probs[0]:.4f} vs {peer_probs[0]:.4f} "
          f"(tabby), {ours_probs[1]:.4f} vs {peer_probs[1]:.4f} (zebra): ours {'>=' if verdict else 'NOT >='} peer")
    batch_of_8(model, args)


if __name__ == "__main__":
    main()
