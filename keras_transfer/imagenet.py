"""ImageNet class names (the 1000 classes of the Keras Applications tops) and class groups.

A group is a set of ImageNet classes that together mean one thing to a
person ("a domestic cat": tabby, tiger cat, Persian, Siamese, Egyptian cat).
`group_probabilities` asks an independent ImageNet classifier how much of
its probability falls in each group: with `PET_GROUPS`, whether an image
looks like a cat or a dog to a network that was not trained on it.
"""

from __future__ import annotations

import functools
import json
import numbers
import types
from collections.abc import Mapping, Sequence
from importlib import resources

import numpy as np

from keras_transfer import models

NUM_CLASSES = 1000
# Domestic cats: tabby, tiger_cat, Persian_cat, Siamese_cat, Egyptian_cat
# (282 "tiger_cat" is the striped domestic cat; the wild tiger is 292).
CAT_CLASSES = tuple(range(281, 286))
# Dogs: every breed, Chihuahua (151) to Mexican_hairless (268); wolves,
# foxes and wild dogs (269-280) are not included.
DOG_CLASSES = tuple(range(151, 269))
PET_GROUPS = types.MappingProxyType({"cats": CAT_CLASSES, "dogs": DOG_CLASSES})


@functools.lru_cache(maxsize=1)
def class_index() -> tuple[tuple[str, str], ...]:
    """(WordNet id, name) of the 1000 ImageNet classes, in index order."""
    text = resources.files("keras_transfer").joinpath("resources/imagenet_class_index.json").read_text("utf-8")
    raw = json.loads(text)
    return tuple((raw[str(i)][0], raw[str(i)][1]) for i in range(len(raw)))


def class_names() -> list[str]:
    """The 1000 ImageNet class names in index order (`"tabby"`, `"zebra"`, ...)."""
    return [name for _, name in class_index()]


def group_mass(
    probabilities,
    groups: Mapping[str, Sequence[int]] | None = None,
) -> dict[str, np.ndarray]:
    """The probability mass of each group of classes, per image.

    Args:
        probabilities: `(batch, num_classes)` class probabilities (rows
            summing to 1).
        groups: group name -> class indices (distinct, in
            `[0, num_classes)`; groups may overlap). Defaults to `None`:
            `PET_GROUPS` (`"cats"`, `"dogs"`).

    Returns:
        Group name -> float64 array `(batch,)`, in the order of `groups`.

    Raises:
        ValueError: probabilities that are not a 2-D array, or a bad group
            (no name, no class, a class out of range or repeated).
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim != 2:
        raise ValueError(
            f"Expected probabilities of shape (batch, num_classes). Received: shape={probabilities.shape}"
        )
    groups = _check_groups(PET_GROUPS if groups is None else groups, probabilities.shape[1])
    return {name: probabilities[:, list(indices)].sum(axis=1) for name, indices in groups.items()}


def group_probabilities(
    model,
    images,
    *,
    groups: Mapping[str, Sequence[int]] | None = None,
    batch_size: int = 16,
) -> dict[str, np.ndarray]:
    """How much of a classifier's probability falls in each group of classes.

    With an independent ImageNet classifier (e.g.
    `keras_transfer.build_imagenet_classifier("mobilenet", alpha=0.25)`) and
    the default `PET_GROUPS`, this turns "looks like a cat" into a number:
    the summed probability of the five domestic cat classes, beside that of
    the 118 dog breeds.

    Args:
        model: a classifier from RGB pixels in [0, 255] to class scores
            (logits, or probabilities from a final softmax layer).
        images: `(batch, height, width, 3)` pixels in [0, 255], any dtype;
            resized bilinearly to the model's input size when they differ
            (as `keras_transfer.models.class_probabilities` does).
        groups: group name -> class indices of `model`. Defaults to `None`:
            `PET_GROUPS`, for a 1000-class ImageNet model.
        batch_size: images per forward pass. Defaults to `16`.

    Returns:
        Group name -> float64 array `(batch,)`.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise ValueError(f"Expected batch_size to be an int >= 1. Received: batch_size={batch_size!r}")
    probabilities = models.class_probabilities(model, images, batch_size=int(batch_size))
    return group_mass(probabilities, groups)


def _check_groups(groups, num_classes: int) -> dict[str, tuple[int, ...]]:
    if not isinstance(groups, Mapping) or not groups:
        raise ValueError(f"Expected a non-empty mapping of group name -> class indices. Received: groups={groups!r}")
    checked = {}
    for name, indices in groups.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"Expected group names to be non-empty strings. Received: group name {name!r}")
        if isinstance(indices, (str, bytes)) or not isinstance(indices, Sequence) or not indices:
            raise ValueError(
                f"Expected group {name!r} to be a non-empty sequence of class indices. Received: {indices!r}"
            )
        bad = [i for i in indices if isinstance(i, bool) or not isinstance(i, numbers.Integral)
               or not 0 <= i < num_classes]
        if bad:
            raise ValueError(
                f"Expected the classes of group {name!r} to be indices in [0, {num_classes}). Received: {bad[:5]!r}"
            )
        if len(set(indices)) != len(indices):
            raise ValueError(f"Expected distinct classes in group {name!r}. Received: {list(indices)!r}")
        checked[name] = tuple(int(i) for i in indices)
    return checked
