"""`--backbone/--alpha` or `--model`: the classifier an analysis command works on.

Shared by the `ideal_class` and `adversarial` command lines.
"""

from __future__ import annotations

import argparse
import os

DEFAULT_BACKBONE = "mobilenet"
# The MobileNet width with ImageNet weights at hand (see ../shared/data).
DEFAULT_MOBILENET_ALPHA = 0.25


def add_arguments(parser: argparse.ArgumentParser, *, verb: str) -> None:
    """Adds the mutually exclusive `--backbone`/`--model` and `--alpha`."""
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--backbone",
        default=DEFAULT_BACKBONE,
        help=f"Keras Applications backbone whose 1000-class ImageNet classifier is {verb} (default: %(default)s).",
    )
    source.add_argument(
        "--model",
        default=None,
        metavar="PATH.keras",
        help="a classifier saved by keras_transfer; class names come from classes.json beside it.",
    )
    parser.add_argument(
        "--alpha",
        type=float,
        default=None,
        help=f"width multiplier of --backbone (default: {DEFAULT_MOBILENET_ALPHA} for mobilenet, whose "
        "weights are at hand; the family default otherwise).",
    )


def load_classifier(model_path: str | None, backbone: str, alpha: float | None):
    """(model, class names, description) of a saved model or a backbone's ImageNet classifier."""
    import keras_transfer as kt
    from keras_transfer import classes as classes_lib

    if model_path is not None:
        model = kt.load_model(model_path)
        description = os.path.abspath(model_path)
    else:
        if alpha is None and backbone.replace("_", "").lower() == DEFAULT_BACKBONE:
            alpha = DEFAULT_MOBILENET_ALPHA
        model = kt.build_imagenet_classifier(backbone, alpha=alpha)
        description = f"{backbone} (alpha={alpha}) ImageNet classifier"
    # classes.json beside a saved model, else the ImageNet names of a 1000-class one.
    num_classes = int(model.outputs[0].shape[-1])
    return model, classes_lib.class_names_for_model(model_path, num_classes), description
