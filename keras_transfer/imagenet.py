"""ImageNet class names (the 1000 classes of the Keras Applications tops)."""

from __future__ import annotations

import functools
import json
from importlib import resources


@functools.lru_cache(maxsize=1)
def class_index() -> tuple[tuple[str, str], ...]:
    """(WordNet id, name) of the 1000 ImageNet classes, in index order."""
    text = resources.files("keras_transfer").joinpath("resources/imagenet_class_index.json").read_text("utf-8")
    raw = json.loads(text)
    return tuple((raw[str(i)][0], raw[str(i)][1]) for i in range(len(raw)))


def class_names() -> list[str]:
    """The 1000 ImageNet class names in index order (`"tabby"`, `"zebra"`, ...)."""
    return [name for _, name in class_index()]
