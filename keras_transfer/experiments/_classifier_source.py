"""`--backbone/--alpha` or `--model`: the classifier an analysis command works on.

Shared by the `ideal_class` and `adversarial` command lines: the settings
(`ClassifierSource`, a base of both configurations), the loading, the
repeated flags (`--class`, `--image`) that `_cli.add_flags` does not make, and
the `main` of both (`run_command`).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence

from keras_transfer import errors
from keras_transfer.experiments import _cli
from keras_transfer.settings import Optional, Path, Real, Text, setting

DEFAULT_BACKBONE = "mobilenet"
# The MobileNet width with ImageNet weights at hand (see ../shared/data).
DEFAULT_MOBILENET_ALPHA = 0.25
SOURCE_GROUP = "classifier"


@dataclasses.dataclass(frozen=True, kw_only=True)
class ClassifierSource:
    """The classifier (a backbone's ImageNet classifier, or a saved `.keras` model) and the command line.

    Subclasses call `check_source()` from their `__post_init__`: it fills in
    `backbone` (`"mobilenet"` when neither is given) and rejects a backbone,
    or an alpha, together with a saved model.
    """

    backbone: str | None = setting(
        None, kind=Optional(Text()), group=SOURCE_GROUP,
        help=f"Keras Applications backbone whose 1000-class ImageNet classifier is used "
        f"(None: {DEFAULT_BACKBONE}, unless --model is given).",
    )
    alpha: float | None = setting(
        None, kind=Optional(Real(min=0, min_open=True, max=4)), group=SOURCE_GROUP,
        help=f"width multiplier of --backbone (None: {DEFAULT_MOBILENET_ALPHA} for mobilenet, whose weights are "
        "at hand; the family default otherwise).",
    )
    model: str | None = setting(
        None, kind=Optional(Path()), group=SOURCE_GROUP, metavar="PATH.keras",
        help="a classifier saved by keras_transfer instead of --backbone; class names come from classes.json "
        "beside it.",
    )

    command: str | None = setting(
        None, kind=Optional(Text()), flag=None, fingerprint=False,
        help="the command line that ran this, recorded in the command's JSON output.",
    )

    def check_source(self) -> None:
        if self.model is not None and self.backbone is not None:
            raise ValueError(
                "Give --backbone or --model, not both. "
                f"Received: backbone={self.backbone!r}, model={self.model!r}"
            )
        if self.model is not None and self.alpha is not None:
            raise ValueError(
                f"alpha applies to --backbone models, not to a saved --model. Received: alpha={self.alpha!r}, "
                f"model={self.model!r}"
            )
        if self.model is None and self.backbone is None:
            object.__setattr__(self, "backbone", DEFAULT_BACKBONE)


def run_command(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    *,
    make_config: Callable,
    run: Callable,
    report: Callable,
) -> int:
    """Parses `argv`, runs and reports under the command-line policy; returns the exit status.

    `--help` returns 0 and a usage error 2 (argparse has printed its one
    line); any other bad input is one line and 2 (`_cli.run_main`).

    Args:
        parser: the command's parser.
        argv: the arguments. Defaults to `sys.argv[1:]` when `None`.
        make_config: `(args, command=...)` -> the configuration.
        run: configuration -> summary (the content of result.json).
        report: `(summary, config, seconds)` -> None, prints the outcome.
    """
    words = sys.argv[1:] if argv is None else list(argv)
    command = " ".join([parser.prog, *map(shlex.quote, words)])

    def body() -> None:
        start = time.perf_counter()
        config = make_config(parser.parse_args(words), command=command)
        summary = run(config)
        report(summary, config, time.perf_counter() - start)

    return _cli.run_main(parser.prog, words, body)


def load_classifier(model_path: str | None, backbone: str | None, alpha: float | None):
    """(model, class names, description) of a saved model or a backbone's ImageNet classifier.

    Raises:
        FileNotFoundError, PermissionError, ValueError: a missing or
            unreadable `model_path`, one that is not a `.keras` file, or an
            unknown backbone, with a message naming it.
        keras_transfer.errors.CorruptFileError: a `.keras` file that cannot
            be loaded.
    """
    import keras_transfer as kt
    from keras_transfer import classes as classes_lib

    if model_path is not None:
        model = _load_saved(model_path)
        description = os.path.abspath(model_path)
    else:
        backbone = backbone or DEFAULT_BACKBONE
        if alpha is None and backbone.replace("_", "").lower() == DEFAULT_BACKBONE:
            alpha = DEFAULT_MOBILENET_ALPHA
        model = kt.build_imagenet_classifier(backbone, alpha=alpha)
        description = f"{backbone} (alpha={alpha}) ImageNet classifier"
    outputs = model.outputs
    if len(outputs) != 1 or len(outputs[0].shape) != 2 or outputs[0].shape[-1] is None or outputs[0].shape[-1] < 2:
        from keras_transfer import models as models_lib

        models_lib.as_logits_model(model)  # raises: not a classifier, naming its outputs
    # classes.json beside a saved model, else the ImageNet names of a 1000-class one.
    num_classes = int(model.outputs[0].shape[-1])
    return model, classes_lib.class_names_for_model(model_path, num_classes), description


def _load_saved(path: str):
    """`keras_transfer.load_model(path)` (which checks the file), with any other loading failure as corrupt."""
    import keras_transfer as kt

    try:
        return kt.load_model(path)
    except (OSError, ValueError):  # missing, unreadable, not .keras, corrupt: already named
        raise
    except Exception as error:  # noqa: BLE001 - what Keras raises for a bad archive varies by version
        raise errors.CorruptFileError(
            f"The model file {os.fspath(path)!r} cannot be loaded ({type(error).__name__}: "
            f"{errors.one_line(error)}); save it again or use another copy."
        ) from error


def image_paths(images: Sequence[str], images_dir: str | None) -> list[str]:
    """The files of repeated `--image FILE` flags, then the image files of `--images DIR` (sorted by name).

    Raises:
        FileNotFoundError, NotADirectoryError, ValueError: a missing file or
            folder, a folder that is a file, or one with no image file,
            naming it and the flag.
    """
    from keras_transfer.data import IMAGE_EXTENSIONS

    paths = list(images)
    for path in paths:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"No image file at {path!r} (--image).")
    if images_dir is not None:
        if not os.path.exists(images_dir):
            raise FileNotFoundError(f"No folder at {images_dir!r} (--images).")
        if not os.path.isdir(images_dir):
            raise NotADirectoryError(f"--images {images_dir!r} is a file, not a folder; use --image for one file.")
        names = sorted(n for n in os.listdir(images_dir)
                       if not n.startswith(".") and n.lower().endswith(IMAGE_EXTENSIONS))
        if not names:
            raise ValueError(f"No image files ({', '.join(IMAGE_EXTENSIONS)}) in {images_dir!r} (--images).")
        paths.extend(os.path.join(images_dir, n) for n in names)
    return paths
