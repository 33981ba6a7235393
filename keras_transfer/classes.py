"""Class names and class lookup for any image classifier.

A class can be given by index (`281`, `"281"`) or by name (`"tabby"`,
`"tabby cat"`, `"Abyssinian"`); names are matched ignoring case, spaces,
underscores and hyphens. An unknown name is an error that suggests close
matches.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Sequence

import numpy as np

from keras_transfer import imagenet
from keras_transfer.models import load_class_names
from keras_transfer.run_folder import CLASSES_FILE

# Common names people use for ImageNet classes whose label is terser.
_IMAGENET_ALIASES = {"tabby cat": "tabby"}


def _norm(name: str) -> str:
    return re.sub(r"[\s_\-]+", " ", name.strip().lower())


def resolve_class(cls: int | str, class_names: Sequence[str]) -> int:
    """Returns the index of `cls` (an index or a name) in `class_names`.

    Raises:
        ValueError: for an index out of range or an unknown name; the message
            lists close matches.
    """
    n = len(class_names)
    if isinstance(cls, bool):
        raise TypeError(f"Expected a class index or name. Received: cls={cls!r}")
    # A string that names a class is that class, even in digits (class folders "1", "10", "2"); the exact
    # spelling tells apart names equal but for case ("Cardigan", "cardigan").
    named = False
    if isinstance(cls, str):
        exact = [i for i, name in enumerate(class_names) if name == cls]
        if len(exact) == 1:
            return exact[0]
        named = any(_norm(name) == _norm(cls) for name in class_names)
    if not named and (isinstance(cls, int) or (isinstance(cls, str) and cls.strip().lstrip("-").isdigit())):
        index = int(cls)
        if not 0 <= index < n:
            raise ValueError(f"Class index out of range: expected 0 <= index < {n}. Received: {cls!r}")
        return index
    if not isinstance(cls, str):
        raise TypeError(f"Expected a class index or name. Received: cls={cls!r}")
    wanted = _norm(cls)
    normalized = [_norm(name) for name in class_names]
    matches = [i for i, name in enumerate(normalized) if name == wanted]
    if len(matches) > 1:
        raise ValueError(
            f"Class name {cls!r} is ambiguous: classes {matches} are all named so. Give the index of the one "
            "meant instead."
        )
    if matches:
        return matches[0]
    alias = _IMAGENET_ALIASES.get(wanted)
    if alias is not None and alias in normalized:
        return normalized.index(alias)
    close = difflib.get_close_matches(wanted, normalized, n=5, cutoff=0.6)
    # Also offer names that contain the word asked for ("cat" -> "tiger cat").
    contains = [name for name in normalized if wanted in name and name not in close][: 5 - len(close)]
    suggestions = [class_names[normalized.index(name)] for name in close + contains]
    hint = f" Did you mean: {', '.join(repr(s) for s in suggestions)}?" if suggestions else ""
    raise ValueError(f"Unknown class {cls!r} among the model's {n} classes.{hint}")


def class_mapping(data_classes: Sequence[str], class_names: Sequence[str], *,
                  labels: Sequence[str] | None = None, noun: str = "class") -> np.ndarray:
    """The model's class index of each class of a data set, matched by name (`resolve_class`).

    Args:
        data_classes: the data set's class names (e.g. its class folders).
        class_names: the model's class names.
        labels: how to name each data class in an error (e.g. its folder's
            path). Defaults to `None`: its name.
        noun: what a data class is, in the error (e.g. `"class folder"`).
            Defaults to `"class"`.

    Returns:
        int64 `(len(data_classes),)`.

    Raises:
        ValueError: a data class that names no class of the model.
    """
    mapping = []
    for i, name in enumerate(data_classes):
        try:
            mapping.append(resolve_class(name, class_names))
        except ValueError as error:
            label = labels[i] if labels is not None else name
            plural = noun + ("es" if noun.endswith("s") else "s")
            raise ValueError(
                f"{noun.capitalize()} {label!r} names no class of the model: {error} Expected {plural} named as "
                "the model's classes (classes.json beside a saved run)."
            ) from None
    return np.asarray(mapping, np.int64)


def class_names_for_model(model_path: str | os.PathLike | None, num_classes: int) -> list[str]:
    """Class names of a classifier.

    For a saved model, `classes.json` beside it (written by every training
    run); for a 1000-class model without one, the ImageNet names; otherwise
    the indices as strings.
    """
    if model_path is not None:
        path = os.path.join(os.path.dirname(os.path.abspath(os.fspath(model_path))), CLASSES_FILE)
        if os.path.isfile(path):
            names = load_class_names(path)
            if len(names) != num_classes:
                raise ValueError(
                    f"{path} lists {len(names)} classes but the model has {num_classes} outputs."
                )
            return names
    if num_classes == 1000:
        return imagenet.class_names()
    return [str(i) for i in range(num_classes)]
