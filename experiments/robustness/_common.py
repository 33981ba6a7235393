"""What the study scripts of this folder share.

Saved classifiers named on the command line (`--model NAME=PATH`, repeated:
each `PATH` a `.keras` file saved by a run of this package, with the run's
`classes.json` beside it) and the held-out images those runs were validated on.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

import numpy as np

DEFAULT_DATA = "../shared/data/cats_vs_dogs/train"


def add_model_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", dest="models", action="append", required=True, metavar="NAME=PATH",
        help="a saved model (a run's model.keras, its classes.json beside it) and the name it is reported "
        "under; repeat for several.",
    )


def parse_models(specs: Sequence[str]) -> dict[str, str]:
    """`NAME=PATH` strings -> {name: path}, checked (distinct names, existing files)."""
    parsed: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"Expected --model NAME=PATH. Received: --model {spec!r}")
        if name in parsed:
            raise SystemExit(f"Expected distinct model names. Received: {name!r} twice")
        if not os.path.isfile(path):
            raise SystemExit(f"No model file at {path!r} (--model {spec}).")
        parsed[name] = path
    return parsed


def load_models(paths: dict[str, str]) -> tuple[dict, list[str], str]:
    """Loads the models; returns them, their common class names and their common resize mode.

    Raises SystemExit when a `classes.json` is missing or the models' classes
    (names and order) differ: scores of different classes cannot be compared
    or averaged.
    """
    import keras_transfer as kt
    from keras_transfer import inference, models, run_folder

    loaded, names, resizes = {}, {}, {}
    for name, path in paths.items():
        classes_path = os.path.join(os.path.dirname(os.path.abspath(path)), run_folder.CLASSES_FILE)
        if not os.path.isfile(classes_path):
            raise SystemExit(f"No {run_folder.CLASSES_FILE} beside {path!r}: the model's class names are needed.")
        names[name] = models.load_class_names(classes_path)
        resizes[name] = inference.resize_of_run(path) or "stretch"
        loaded[name] = kt.load_model(path)
    if len({tuple(n) for n in names.values()}) > 1:
        raise SystemExit(f"Expected models with the same classes in the same order. Received: {names}")
    if len(set(resizes.values())) > 1:
        raise SystemExit(f"Expected models trained on images resized the same way. Received: {resizes}")
    return loaded, next(iter(names.values())), next(iter(resizes.values()))


def validation_images(data_dir: str, *, image_size: int, resize: str, val_split: float, seed: int,
                      class_names: Sequence[str], max_images: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The held-out split of `data_dir`, labelled with the models' classes (matched by name).

    The split is `keras_transfer.load_folder`'s (stratified, drawn from
    `seed`): with the run's `val_split` and seed (the training seed) these
    are the validation images of a model trained on `data_dir`.
    `max_images` keeps that many, evenly spread over the split (which is in
    class order), so every class stays represented.
    """
    from keras_transfer import classes as classes_lib
    from keras_transfer.data import load_folder

    data = load_folder(data_dir, image_size=image_size, val_split=val_split, seed=seed, resize=resize)
    mapping = classes_lib.class_mapping(data.class_names, class_names).astype(np.int32)
    images, labels = [], []
    for image, label in data.val.as_numpy_iterator():
        images.append(image)
        labels.append(mapping[label])
    images, labels = np.stack(images), np.asarray(labels, np.int32)
    if max_images is not None and max_images < len(images):
        keep = np.linspace(0, len(images) - 1, max_images).round().astype(int)
        images, labels = images[keep], labels[keep]
    return images, labels
