"""Classify new photos with a trained run (or an ImageNet classifier); optionally score them.

Writes `--output FILE.csv`, one row per decoded image: `path`, then
`class_1, probability_1, ..., class_<k>, probability_<k>` (`--top-k`), and
with `--labels-from-folders` also `label` and `correct`. Beside it,
`FILE.json` holds the counts, the files that could not be decoded (listed,
not fatal) and the files not decoded on purpose, and, with
`--labels-from-folders`, accuracy, top-k accuracy, per-class accuracy and the
confusion matrix, so a model can be scored on a test set kept apart. Both are
written atomically.

Images are decoded and resized exactly as for training
(`keras_transfer.inference`), streamed through `tf.data` in `--batch-size`
batches with a progress bar. `--resize` defaults to the one the run was
trained with (its `metrics.json`).

Bad input (no images, a missing or corrupt `--model`, an empty folder, a
`--top-k` above the number of classes, a class folder that names no class of
the model, no decodable image at all) ends in one line on stderr and exit
status 2, before anything is written.

Examples::

    python -m keras_transfer.experiments.predict --model runs/pets/model.keras --images new_photos/ \\
        --top-k 3 --output predictions.csv
    python -m keras_transfer.experiments.predict --model runs/cats/model.keras --images test_set/ \\
        --labels-from-folders --output test/predictions.csv
    python -m keras_transfer.experiments.predict --image cat.jpg --output cat.csv   # ImageNet MobileNet
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Sequence

import keras
import tensorflow as tf

from keras_transfer import files, inference
from keras_transfer import settings as settings_lib
from keras_transfer.data import RESIZE_MODES
from keras_transfer.experiments import _cli
from keras_transfer.experiments._classifier_source import ClassifierSource, load_classifier, run_command
from keras_transfer.settings import Choice, Flag, Int, Many, Optional, Path, setting

PROG = "python -m keras_transfer.experiments.predict"
_INPUT = "images"
_OUTPUT = "output"
MAX_BATCH_SIZE = 4096
# At most this many files are listed in the JSON (skipped, ignored) and rows on stdout.
MAX_LISTED = 1000
_PRINTED_ROWS = 10
DEFAULT_TOP_K = 3


@dataclasses.dataclass(frozen=True)
class PredictConfig(ClassifierSource):
    """Which images to classify, with which model (`backbone`, `alpha` or `model`), and where to write.

    Every field is a `keras_transfer.settings.setting` (default, valid
    values, help and flag declared with it).
    """

    output: str = setting(
        kind=Path(), group=_OUTPUT, metavar="FILE.csv",
        help="the CSV of predictions (created with its folder; FILE.json is written beside it).",
    )
    images: tuple[str, ...] = setting(
        (), kind=Many(Path(), min_items=0), flag=None, group=_INPUT,
        help="an image file to classify; repeat for several.",
    )
    images_dir: str | None = setting(
        None, kind=Optional(Path()), flag="--images", group=_INPUT, metavar="DIR",
        help="a folder of images to classify, searched recursively (.jpg .jpeg .png .gif .bmp .webp, any case).",
    )
    labels_from_folders: bool = setting(
        False, kind=Flag(), group=_INPUT,
        help="--images is class-per-folder (DIR/<class>/<image>, folders named as the model's classes): also "
        "report accuracy, top-k accuracy and the confusion matrix.",
    )
    resize: str | None = setting(
        None, kind=Optional(Choice(RESIZE_MODES)), group=_INPUT,
        help="how photos become the model's squares (None: as the --model run was trained, from its "
        "metrics.json; else stretch).",
    )
    top_k: int | None = setting(
        None, kind=Optional(Int(min=1)),
        help=f"classes per image in the CSV, and k of the top-k accuracy; at most the number of classes "
        f"(None: {DEFAULT_TOP_K}, or the number of classes if smaller).",
    )
    batch_size: int = setting(
        32, kind=Int(min=1, max=MAX_BATCH_SIZE), help="images decoded and classified at once."
    )
    progress: bool = setting(True, kind=Flag(), group=_OUTPUT, help="show a progress bar.")

    def __post_init__(self):
        settings_lib.validate(self)
        self.check_source()
        if bool(self.images) == (self.images_dir is not None):
            raise ValueError(
                "Expected either --images DIR or --image FILE (repeatable), not both and not neither. "
                f"Received: images_dir={self.images_dir!r}, images={list(self.images)!r}"
            )
        if self.labels_from_folders and self.images_dir is None:
            raise ValueError("--labels-from-folders needs a class-per-folder --images DIR. Received: --image files")
        if not self.output.endswith(".csv"):
            raise ValueError(f"Expected --output to be a .csv file. Received: output={self.output!r}")

    @property
    def summary_path(self) -> str:
        """The JSON beside the CSV."""
        return self.output[: -len(".csv")] + ".json"


def _predict(config: PredictConfig, model, names: Sequence[str], resize: str, top_k: int) -> inference.Predictions:
    arguments = dict(
        class_names=names, top_k=top_k, batch_size=config.batch_size, resize=resize, progress=config.progress
    )
    if config.labels_from_folders:
        return inference.score(model, config.images_dir, **arguments)
    source = config.images_dir if config.images_dir is not None else list(config.images)
    return inference.predict(model, source, **arguments)


def run(config: PredictConfig) -> dict:
    """Classifies the images and writes the CSV and the JSON (see the module docstring).

    Returns:
        The content of the JSON.
    """
    model, names, description = load_classifier(config.model, config.backbone, config.alpha)
    top_k = inference.check_top_k(config.top_k, len(names), default=DEFAULT_TOP_K)  # before reading images
    resize = config.resize or (inference.resize_of_run(config.model) if config.model else None) or "stretch"
    files.check_writable_dir(os.path.dirname(os.path.abspath(config.output)))
    for path in (config.output, config.summary_path):
        if os.path.isdir(path):
            raise IsADirectoryError(f"{path!r} is a folder; expected --output to name a .csv file to write.")
    predictions = _predict(config, model, names, resize, top_k)
    found = len(predictions) + len(predictions.skipped)
    if not len(predictions):
        raise ValueError(
            f"None of the {found} image file(s) could be decoded, e.g. {list(predictions.skipped[:3])}; "
            "expected JPEG, PNG, GIF, BMP or WebP images."
        )
    summary = {
        "command": config.command,
        "model": description,
        "images": config.images_dir if config.images_dir is not None else list(config.images),
        "image_size": int(model.input_shape[1]),
        "resize": resize,
        "top_k": top_k,
        "counts": {
            "found": found + len(predictions.ignored),
            "predicted": len(predictions),
            "skipped": len(predictions.skipped),
            "ignored": len(predictions.ignored),
        },
        "skipped_files": list(predictions.skipped[:MAX_LISTED]),
        "ignored_files": [path for path, _ in predictions.ignored[:MAX_LISTED]],
        "metrics": predictions.metrics() if predictions.labels is not None else None,
        "predictions_csv": os.path.abspath(config.output),
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
    }
    predictions.write_csv(config.output)
    files.write_json(config.summary_path, summary)
    summary = files.jsonable(summary)
    summary["first_rows"] = predictions.to_rows()[:_PRINTED_ROWS]  # for the report, not the JSON
    return summary


def _format_confusion(confusion: dict) -> list[str]:
    names = confusion["classes"]
    width = max(6, *(len(n) for n in names))
    lines = [" " * (width + 2) + " ".join(f"{n:>{width}}" for n in names)]
    for name, row in zip(names, confusion["matrix"]):
        lines.append(f"  {name:>{width}} " + " ".join(f"{v:>{width}d}" for v in row))
    return lines


def _report(summary: dict, config: PredictConfig, seconds: float) -> None:
    counts = summary["counts"]
    print(
        f"Classified {counts['predicted']} image(s) in {seconds:.0f} s; {counts['skipped']} could not be decoded "
        f"(skipped), {counts['ignored']} other file(s) ignored."
    )
    for path in summary["skipped_files"][:_PRINTED_ROWS]:
        print(f"  skipped: {path}")
    metrics = summary["metrics"]
    if metrics is None:
        for row in summary["first_rows"]:
            ranked = ", ".join(
                f"{row[f'class_{r}']} {row[f'probability_{r}']:.3f}" for r in range(1, summary["top_k"] + 1)
            )
            print(f"  {row['path']}: {ranked}")
        if counts["predicted"] > _PRINTED_ROWS:
            print(f"  ... and {counts['predicted'] - _PRINTED_ROWS} more in the CSV")
    else:
        top_k = metrics["top_k_accuracy"]
        top_k = f", top-{metrics['top_k']} accuracy {top_k:.4f}" if top_k is not None else ""
        print(f"accuracy {metrics['accuracy']:.4f}{top_k} on {metrics['count']} images")
        per_class = ", ".join(f"{name} {value:.4f}" for name, value in metrics["per_class_accuracy"].items())
        print(f"per-class accuracy: {per_class}")
        print("confusion matrix (rows: true class, columns: predicted):")
        print("\n".join(_format_confusion(metrics["confusion_matrix"])))
    print(f"Predictions in {os.path.abspath(config.output)}, summary in {os.path.abspath(config.summary_path)}")


def build_parser() -> _cli.Parser:
    parser = _cli.Parser(
        prog=PROG,
        description=(
            "Classify photos with a trained classifier (--model RUN/model.keras) or a backbone's ImageNet "
            "classifier: writes a CSV with the top-k classes and probabilities of every decodable image and a "
            "JSON summary beside it; with --labels-from-folders, scores a class-per-folder test set."
        ),
    )
    groups: dict = {}
    _cli.add_repeated_flag(parser, PredictConfig, "images", "--image", metavar="FILE", groups=groups)
    _cli.add_flags(parser, PredictConfig, required=("output",), groups=groups)
    return parser


def config_from_args(args, *, command: str | None = None) -> PredictConfig:
    return _cli.from_args(PredictConfig, args, command=command)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command; returns the exit status (2 for any bad input, with one line on stderr)."""
    return run_command(build_parser(), argv, make_config=config_from_args, run=run, report=_report)


if __name__ == "__main__":
    sys.exit(main())
