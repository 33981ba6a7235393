"""Export a trained run (or an ImageNet classifier) for serving: SavedModel and TFLite.

Writes, in `--output-dir`:

- `saved_model/`: a TensorFlow SavedModel with the signatures
  `serving_default` (encoded image files, a 1-D string tensor, decoded and
  resized in the graph as for training) and `serve_pixels` (uint8
  `(n, size, size, 3)`), both returning `logits` and `probabilities`;
- `model.tflite` (unless `--no-tflite`): float32 TFLite, uint8 pixels in;
- `classes.json`: the class names, in output order;
- `export.json`: the model, image size, resize, signatures, and the largest
  difference between the exported models' logits and the Keras model's on
  random pixels (a check that the export computes what the model does).

See `keras_transfer.export` for the details. A separate command rather than
a `--export` flag of `predict`: exporting needs no photos and writes a
folder, predicting needs photos and writes a CSV, so each command keeps its
own required flags. Every file is written crash-safely (a temporary name
renamed into place). Bad input ends in one line on stderr and exit status 2.

Example::

    python -m keras_transfer.experiments.export --model runs/pets/model.keras --output-dir serving/pets
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

from keras_transfer import export as export_lib
from keras_transfer import files, inference, run_folder
from keras_transfer import models as models_lib
from keras_transfer import settings as settings_lib
from keras_transfer.data import RESIZE_MODES
from keras_transfer.experiments import _cli
from keras_transfer.experiments._classifier_source import ClassifierSource, load_classifier, run_command
from keras_transfer.settings import Choice, Flag, Optional, Path, setting

PROG = "python -m keras_transfer.experiments.export"
SAVED_MODEL_DIR = "saved_model"
TFLITE_FILE = "model.tflite"
SUMMARY_FILE = "export.json"
_CHECK_IMAGES = 4


@dataclasses.dataclass(frozen=True)
class ExportConfig(ClassifierSource):
    """What to export (`backbone`, `alpha` or `model`) and where.

    Every field is a `keras_transfer.settings.setting` (default, valid
    values, help and flag declared with it).
    """

    output_dir: str = setting(
        kind=Path(), metavar="DIR",
        help="folder for saved_model/, model.tflite, classes.json and export.json (created if needed).",
    )
    resize: str | None = setting(
        None, kind=Optional(Choice(RESIZE_MODES)),
        help="how the SavedModel's serving_default makes squares of encoded images (None: as the --model run "
        "was trained, from its metrics.json; else stretch).",
    )
    tflite: bool = setting(True, kind=Flag(), help="also write model.tflite (--no-tflite: only the SavedModel).")

    def __post_init__(self):
        settings_lib.validate(self)
        self.check_source()


def _max_differences(model, saved_model: str, tflite: str | None) -> dict[str, float]:
    """Largest absolute logit difference of each export from the Keras model, on random pixels."""
    size = models_lib.image_size_of(model)
    pixels = np.random.default_rng(0).integers(0, 256, size=(_CHECK_IMAGES, size, size, 3), dtype=np.uint8)
    # The exports' logits drop a final softmax (`as_logits_model`): compare them with the model's logits.
    logits_model = models_lib.as_logits_model(model)
    expected = np.asarray(logits_model.predict(pixels.astype(np.float32), verbose=0), dtype=np.float32)
    served = export_lib.saved_model_outputs(saved_model, pixels, signature=export_lib.PIXELS_SIGNATURE)
    differences = {"saved_model": float(np.abs(served["logits"] - expected).max())}
    if tflite is not None:
        differences["tflite"] = float(np.abs(export_lib.tflite_outputs(tflite, pixels)["logits"] - expected).max())
    return differences


def run(config: ExportConfig) -> dict:
    """Exports the classifier and writes the files listed in the module docstring.

    Returns:
        The content of `export.json`.
    """
    with run_folder.folder_lock(config.output_dir, command=config.command or PROG):
        model, names, description = load_classifier(config.model, config.backbone, config.alpha)
        resize = config.resize or (inference.resize_of_run(config.model) if config.model else None) or "stretch"
        saved_model = export_lib.export_saved_model(
            model, os.path.join(config.output_dir, SAVED_MODEL_DIR), resize=resize
        )
        tflite, tflite_path = None, os.path.join(config.output_dir, TFLITE_FILE)
        if config.tflite:
            tflite = export_lib.export_tflite(model, tflite_path)
        elif os.path.exists(tflite_path):
            # An earlier export's file would pass for this one beside the new SavedModel.
            os.remove(tflite_path)
        models_lib.save_class_names(names, os.path.join(config.output_dir, run_folder.CLASSES_FILE))
        summary = {
            "command": config.command,
            "model": description,
            "image_size": models_lib.image_size_of(model),
            "resize": resize,
            "num_classes": len(names),
            "saved_model": {
                "path": os.path.abspath(saved_model),
                "signatures": {
                    export_lib.BYTES_SIGNATURE: "images: string [n] (encoded image files)",
                    export_lib.PIXELS_SIGNATURE: "images: uint8 [n, size, size, 3]",
                },
                "outputs": list(export_lib.OUTPUT_NAMES),
            },
            "tflite": (
                {"path": os.path.abspath(tflite), "input": "images: uint8 [n, size, size, 3]"} if tflite else None
            ),
            "max_logit_difference": _max_differences(model, saved_model, tflite),
            "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
        }
        files.write_json(os.path.join(config.output_dir, SUMMARY_FILE), summary)
    return files.jsonable(summary)


def _report(summary: dict, config: ExportConfig, seconds: float) -> None:
    saved = summary["saved_model"]
    print(f"SavedModel: {saved['path']} (signatures {', '.join(saved['signatures'])})")
    if summary["tflite"]:
        print(f"TFLite: {summary['tflite']['path']}")
    differences = ", ".join(f"{k} {v:.2e}" for k, v in summary["max_logit_difference"].items())
    print(f"largest logit difference from the Keras model on random pixels: {differences}")
    print(f"image size {summary['image_size']}, resize {summary['resize']}; done in {seconds:.0f} s")


def build_parser() -> _cli.Parser:
    parser = _cli.Parser(
        prog=PROG,
        description=(
            "Export a classifier (--model RUN/model.keras, or a backbone's ImageNet classifier) as a TensorFlow "
            "SavedModel (encoded-image and pixel signatures) and a TFLite file, with classes.json."
        ),
    )
    _cli.add_flags(parser, ExportConfig, required=("output_dir",))
    return parser


def config_from_args(args, *, command: str | None = None) -> ExportConfig:
    return _cli.from_args(ExportConfig, args, command=command)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command; returns the exit status (2 for any bad input, with one line on stderr)."""
    return run_command(build_parser(), argv, make_config=config_from_args, run=run, report=_report)


if __name__ == "__main__":
    sys.exit(main())
