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

Every setting is declared once (`IdealClassConfig`,
`keras_transfer.visualization.VisualizationConfig`) and becomes a flag. Bad
input (an unknown class, a missing or corrupt `--model`, an output folder that
is a file, read-only or in use by another run, a number out of range) ends in
one line on stderr and exit status 2, before anything is optimized.

Examples::

    python -m keras_transfer.experiments.ideal_class --class tabby --class zebra --output-dir runs/ideal
    python -m keras_transfer.experiments.ideal_class --model runs/pets/model.keras --class Abyssinian \\
        --output-dir runs/ideal_breed
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

from keras_transfer import files, models, naming, run_folder
from keras_transfer import settings as settings_lib
from keras_transfer import visualization as vis
from keras_transfer.experiments import _cli
from keras_transfer.experiments._classifier_source import (
    ClassifierSource,
    load_classifier,
    run_command,
)
from keras_transfer.plotting.visualization import plot_class_images, plot_visualization_history
from keras_transfer.settings import Either, Flag, Int, Many, Path, Text, setting

PROG = "python -m keras_transfer.experiments.ideal_class"
_OUTPUT = "output"


@dataclasses.dataclass(frozen=True)
class IdealClassConfig(ClassifierSource):
    """What to visualize, with which model (`backbone`, `alpha` or `model`), and where to write it.

    Every field but `visualization` is a `keras_transfer.settings.setting`
    (default, valid values and help declared with it); `visualization` holds
    the optimization hyper-parameters. Defaults to
    `VisualizationConfig(seed=0)`.
    """

    classes: tuple[int | str, ...] = setting(
        kind=Many(Either((Int(min=0), Text()))), flag=None,
        help="class index or name (e.g. 281, tabby, 'tabby cat', zebra); repeat for several. "
        "An unknown name is an error that lists close matches.",
    )
    output_dir: str = setting(
        kind=Path(), group=_OUTPUT, metavar="DIR",
        help="folder for the images, figures, result.json and TensorBoard logs (created if needed).",
    )
    visualization: vis.VisualizationConfig = dataclasses.field(
        default_factory=lambda: vis.VisualizationConfig(seed=0)
    )
    image_every: int = setting(
        50, kind=Int(min=1), group=_OUTPUT, help="write the images to TensorBoard every this many steps."
    )
    progress: bool = setting(True, kind=Flag(), group=_OUTPUT, help="show a progress bar.")

    def __post_init__(self):
        settings_lib.validate(self)
        self.check_source()
        if not isinstance(self.visualization, vis.VisualizationConfig):
            raise TypeError(f"Expected a VisualizationConfig. Received: visualization={self.visualization!r}")


def run(config: IdealClassConfig) -> dict:
    """Visualizes the classes and writes the files listed in the module docstring.

    The output folder is checked (writable, not in use by another run) and
    the model and classes are resolved before anything is optimized.

    Returns:
        The content of `result.json`.
    """
    with run_folder.folder_lock(config.output_dir, command=config.command or PROG):
        model, names, model_description = load_classifier(config.model, config.backbone, config.alpha)
        vis.resolve_targets(list(config.classes), names)  # fail on a bad class before optimizing anything
        # TensorBoard would show an earlier run's logs in this folder mixed with this one's, at the same steps.
        files.remove_outputs(config.output_dir, ["logs"])
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
        paths = _save_images(config.output_dir, result)
        # Measure what was written, not what is in memory: the PNGs read back.
        saved = np.stack([files.read_png(p) for p in paths])
        per_class = _measure(model, names, result, paths, saved)
        _save_figures(config.output_dir, result, saved, per_class)
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
        files.write_json(os.path.join(config.output_dir, "result.json"), summary)
    return files.jsonable(summary)


def _save_images(output_dir: str, result: vis.VisualizationResult) -> list[str]:
    """Writes `ideal_<class>.png` per image (names made safe and unique); returns the paths."""
    stems = naming.unique_stems([f"ideal_{name}" for name in result.class_names])
    paths = [os.path.join(output_dir, f"{stem}.png") for stem in stems]
    for image, path in zip(result.uint8_images, paths):
        files.write_png(path, image)
    return paths


def _measure(model, names: Sequence[str], result: vis.VisualizationResult, paths, saved: np.ndarray) -> list[dict]:
    """Per class: the probabilities and total variation of the saved image, and the final loss terms."""
    probabilities = models.class_probabilities(model, saved)
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
    return per_class


def _save_figures(output_dir: str, result: vis.VisualizationResult, saved: np.ndarray, per_class) -> None:
    titles = [f"{c['class_name']} ({c['class_index']})\np={c['probability']:.3f}" for c in per_class]
    files.save_figure(plot_class_images(saved, titles=titles), os.path.join(output_dir, "ideal_classes.png"))
    history = plot_visualization_history(result.history, labels=result.class_names)
    files.save_figure(history, os.path.join(output_dir, "history.png"))


def build_parser() -> _cli.Parser:
    parser = _cli.Parser(
        prog=PROG,
        description=(
            "Optimize an 'ideal' image of each class for a classifier: gradient ascent on the input with "
            "a total-variation penalty and random jitter, zoom and rotation. Writes ideal_<class>.png per "
            "class, ideal_classes.png (all of them), history.png, result.json and TensorBoard logs."
        ),
    )
    groups: dict = {}
    _cli.add_repeated_flag(parser, IdealClassConfig, "classes", "--class", metavar="CLASS", required=True)
    _cli.add_flags(parser, IdealClassConfig, required=("output_dir",), groups=groups)
    _cli.add_flags(parser, vis.VisualizationConfig, defaults={"seed": 0}, groups=groups)
    return parser


def config_from_args(args, *, command: str | None = None) -> IdealClassConfig:
    visualization = _cli.from_args(vis.VisualizationConfig, args)
    return _cli.from_args(IdealClassConfig, args, visualization=visualization, command=command)


def _report(summary: dict, config: IdealClassConfig, seconds: float) -> None:
    for item in summary["classes"]:
        print(
            f"{item['file']}: {item['class_name']} ({item['class_index']}) p={item['probability']:.4f} "
            f"top-1={item['predicted_name']} tv={item['total_variation']:.4f}"
        )
    rate = summary["steps_per_second"]
    speed = f"{rate:.1f} steps/s" if rate is not None else "speed not measured (no step after the compiling one)"
    print(f"{speed}; results in {os.path.abspath(config.output_dir)} ({seconds:.0f} s)")


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command; returns the exit status (2 for any bad input, with one line on stderr)."""
    return run_command(build_parser(), argv, make_config=config_from_args, run=run, report=_report)


if __name__ == "__main__":
    sys.exit(main())
