"""Ideal class images: what a classifier thinks a class looks like.

Optimizes one image per requested class with `keras_transfer.visualization`
and writes, in `--output-dir`:

- `ideal_<class>.png`: each image, lossless, at the resolution it was
  optimized at (the model's input size unless `--image-size` is given);
- `ideal_classes.png`: a figure with all of them;
- `history.png`: objective, penalty and target probability over the steps;
- `result.json`: per class the target probability measured on the saved
  uint8 PNG (read back from disk), its top-5, the number of steps and the
  final loss terms; plus the full configuration and the timing;
- `logs/`: TensorBoard scalars and images.

Examples::

    python -m keras_transfer.experiments.ideal_class --class tabby --class zebra --output-dir runs/ideal
    python -m keras_transfer.experiments.ideal_class --model runs/pets/model.keras --class Abyssinian \\
        --output-dir runs/ideal_breed
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
import time
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf
from PIL import Image

from keras_transfer import visualization as vis
from keras_transfer.experiments._classifier_source import DEFAULT_BACKBONE, add_arguments, load_classifier
from keras_transfer.plotting.visualization import plot_class_images, plot_visualization_history


@dataclasses.dataclass(frozen=True)
class IdealClassConfig:
    """What to visualize, with which model, and where to write it.

    Attributes:
        classes: class indices or names, one image each.
        output_dir: folder for the images, figures, `result.json` and logs.
        backbone: ImageNet classifier to visualize (ignored with `model`).
            Defaults to `"mobilenet"`.
        alpha: width multiplier of the backbone. Defaults to `None`: 0.25
            for `"mobilenet"`, the family default otherwise.
        model: path of a `.keras` classifier saved by this package (class
            names from `classes.json` beside it). Defaults to `None`.
        visualization: optimization hyper-parameters. Defaults to
            `VisualizationConfig(seed=0)`.
        image_every: TensorBoard image interval in steps. Defaults to `50`.
        progress: show a progress bar. Defaults to `True`.
        command: the command line that ran this, recorded in `result.json`.
            Defaults to `None`.
    """

    classes: tuple[str, ...]
    output_dir: str
    backbone: str = DEFAULT_BACKBONE
    alpha: float | None = None
    model: str | None = None
    visualization: vis.VisualizationConfig = dataclasses.field(
        default_factory=lambda: vis.VisualizationConfig(seed=0)
    )
    image_every: int = 50
    progress: bool = True
    command: str | None = None

    def __post_init__(self):
        if not self.classes:
            raise ValueError(f"Expected at least one class. Received: classes={self.classes!r}")
        if self.model is not None and self.alpha is not None:
            raise ValueError(
                f"alpha applies to --backbone models, not to a saved --model. Received: alpha={self.alpha!r}, "
                f"model={self.model!r}"
            )


def _file_stem(name: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "-_" else "_" for c in name.strip().replace(" ", "_"))
    return f"ideal_{cleaned or 'class'}"


def run(config: IdealClassConfig) -> dict:
    """Visualizes the classes and writes the files listed in the module docstring.

    Returns:
        The content of `result.json`.
    """
    model, names, model_description = load_classifier(config.model, config.backbone, config.alpha)
    vis.resolve_targets(list(config.classes), names)  # fail on a bad class before creating anything
    os.makedirs(config.output_dir, exist_ok=True)
    log_dir = os.path.join(config.output_dir, "logs")
    start = time.perf_counter()
    result = vis.visualize_classes(
        model,
        list(config.classes),
        config=config.visualization,
        class_names=names,
        log_dir=log_dir,
        image_every=config.image_every,
        progress=config.progress,
    )
    seconds = time.perf_counter() - start

    paths: list[str] = []
    for image, name in zip(result.uint8_images, result.class_names):
        stem = _file_stem(name)
        path = os.path.join(config.output_dir, f"{stem}.png")
        suffix = 2
        while path in paths:
            path = os.path.join(config.output_dir, f"{stem}_{suffix}.png")
            suffix += 1
        Image.fromarray(image).save(path)
        paths.append(path)

    # Measure what was written, not what is in memory: the PNGs read back.
    saved = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])
    probabilities = vis.class_probabilities(model, saved)
    saved_tv = vis.total_variation(saved.astype(np.float32) / 255.0).numpy()

    per_class = []
    for i, (target, name, path) in enumerate(zip(result.targets, result.class_names, paths)):
        top5 = np.argsort(-probabilities[i])[:5]
        per_class.append(
            {
                "class_index": int(target),
                "class_name": name,
                "file": os.path.basename(path),
                "probability": float(probabilities[i, target]),
                "predicted_index": int(top5[0]),
                "predicted_name": names[int(top5[0])],
                "top5": [{"name": names[int(j)], "probability": float(probabilities[i, j])} for j in top5],
                "total_variation": float(saved_tv[i]),
                "steps": int(result.history["loss"].shape[0]),
                "final": {k: float(v[-1, i]) for k, v in result.history.items()},
            }
        )

    titles = [f"{c['class_name']} ({c['class_index']})\np={c['probability']:.3f}" for c in per_class]
    figure = plot_class_images(saved, titles=titles)
    figure.savefig(os.path.join(config.output_dir, "ideal_classes.png"), dpi=100)
    history_figure = plot_visualization_history(result.history, labels=result.class_names)
    history_figure.savefig(os.path.join(config.output_dir, "history.png"), dpi=100)

    summary = {
        "command": config.command,
        "model": model_description,
        "classes": per_class,
        "config": dataclasses.asdict(result.config),
        "effective": {
            "learning_rate": result.config.effective_learning_rate,
            "tv_weight": result.config.effective_tv_weight,
        },
        "seconds_total": seconds,
        "steps_per_second": result.steps_per_second,
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
    }
    with open(os.path.join(config.output_dir, "result.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)
    return summary


def build_parser() -> argparse.ArgumentParser:
    defaults = vis.VisualizationConfig()
    parser = argparse.ArgumentParser(
        prog="python -m keras_transfer.experiments.ideal_class",
        description=(
            "Optimize an 'ideal' image of each class for a classifier: gradient ascent on the input with "
            "a total-variation penalty and random jitter, zoom and rotation. Writes ideal_<class>.png per "
            "class, ideal_classes.png (all of them), history.png, result.json and TensorBoard logs."
        ),
    )
    add_arguments(parser, verb="visualized")
    parser.add_argument(
        "--class",
        dest="classes",
        action="append",
        required=True,
        metavar="CLASS",
        help="class index or name (e.g. 281, tabby, 'tabby cat', zebra); repeat for several. "
        "An unknown name is an error that lists close matches.",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=defaults.steps,
        help="gradient steps in total (default: %(default)s).",
    )
    parser.add_argument(
        "--learning-rate",
        type=float,
        default=None,
        help="Adam learning rate (default: %s)."
        % ", ".join(f"{v} for {k}" for k, v in vis.DEFAULT_LEARNING_RATES.items()),
    )
    parser.add_argument(
        "--objective",
        choices=vis.OBJECTIVES,
        default=defaults.objective,
        help="score maximized for the target class: the logit, the log-probability, or the logit plus "
        "--log-prob-weight times the log-probability (default: %(default)s).",
    )
    parser.add_argument(
        "--log-prob-weight",
        type=float,
        default=defaults.log_prob_weight,
        help="weight of the log-probability in the logit+log_prob objective (default: %(default)s).",
    )
    parser.add_argument(
        "--tv-weight",
        type=float,
        default=None,
        help="weight of the total variation (mean absolute neighbour difference on a [0, 1] scale) "
        "(default: %s)." % ", ".join(f"{v:g} for {k}" for k, v in vis.DEFAULT_TV_WEIGHTS.items()),
    )
    parser.add_argument(
        "--l1-weight",
        type=float,
        default=defaults.l1_weight,
        help="weight of mean |pixel - grey| on a [0, 1] scale (default: %(default)s).",
    )
    parser.add_argument(
        "--l2-weight",
        type=float,
        default=defaults.l2_weight,
        help="weight of mean (pixel - grey)^2 on a [0, 1] scale (default: %(default)s).",
    )
    parser.add_argument(
        "--parameterization",
        choices=vis.PARAMETERIZATIONS,
        default=defaults.parameterization,
        help="optimize raw pixels, or a 1/f-scaled Fourier spectrum with decorrelated colour "
        "(default: %(default)s).",
    )
    parser.add_argument(
        "--jitter",
        type=int,
        default=defaults.jitter,
        help="maximum random shift in pixels (default: %(default)s).",
    )
    parser.add_argument(
        "--scale",
        type=float,
        default=defaults.scale,
        help="maximum random zoom in or out, 0.1 = 0.9 to 1.1 (default: %(default)s).",
    )
    parser.add_argument(
        "--rotation",
        type=float,
        default=defaults.rotation,
        help="maximum random rotation in degrees (default: %(default)s).",
    )
    parser.add_argument(
        "--octaves",
        type=int,
        default=defaults.octaves,
        help="number of coarse-to-fine sizes, 1 = a single size (default: %(default)s).",
    )
    parser.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="side of the optimized image (default: the model's input size); the model sees it resampled "
        "to its input size.",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the start image and the random transforms (default: %(default)s).",
    )
    parser.add_argument(
        "--jit-compile", action="store_true", help="compile the step with XLA (often slower on CPU)."
    )
    parser.add_argument(
        "--image-every",
        type=int,
        default=50,
        help="write the images to TensorBoard every this many steps (default: %(default)s).",
    )
    parser.add_argument("--no-progress", action="store_true", help="do not show a progress bar.")
    parser.add_argument("--output-dir", required=True, help="folder for the results (created if needed).")
    return parser


def config_from_args(args: argparse.Namespace) -> IdealClassConfig:
    visualization = vis.VisualizationConfig(
        steps=args.steps,
        learning_rate=args.learning_rate,
        objective=args.objective,
        log_prob_weight=args.log_prob_weight,
        parameterization=args.parameterization,
        tv_weight=args.tv_weight,
        l1_weight=args.l1_weight,
        l2_weight=args.l2_weight,
        jitter=args.jitter,
        scale=args.scale,
        rotation=args.rotation,
        octaves=args.octaves,
        image_size=args.image_size,
        jit_compile=args.jit_compile,
        seed=args.seed,
    )
    return IdealClassConfig(
        classes=tuple(args.classes),
        output_dir=args.output_dir,
        backbone=args.backbone,
        alpha=args.alpha,
        model=args.model,
        visualization=visualization,
        image_every=args.image_every,
        progress=not args.no_progress,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        config = config_from_args(args)
        command = " ".join([parser.prog, *map(shlex.quote, argv)])
        config = dataclasses.replace(config, command=command)
        summary = run(config)
    except (ValueError, FileNotFoundError) as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    except vis.NonFiniteLossError as error:
        parser.exit(1, f"{parser.prog}: error: {error}\n")
    for item in summary["classes"]:
        print(
            f"{item['file']}: {item['class_name']} ({item['class_index']}) p={item['probability']:.4f} "
            f"top-1={item['predicted_name']} tv={item['total_variation']:.4f}"
        )
    print(f"{summary['steps_per_second']:.1f} steps/s; results in {os.path.abspath(config.output_dir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
