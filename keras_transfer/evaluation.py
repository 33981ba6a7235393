"""One evaluation of a classifier on a split: logits kept, everything else derived.

`evaluate(model, batches, labels, class_names)` runs the model once and
returns an `Evaluation` holding the logits and labels; accuracy, loss, the
confusion matrix, per-class and top-k accuracy, probabilities and their
calibration (reliability bins, ECE) are derived from them.
The end-of-run plots, `metrics.json` and the per-epoch TensorBoard images
all draw from such an object: nothing runs the model a second time to
recompute what an evaluation already holds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from functools import cached_property

import keras
import numpy as np
import tensorflow as tf

from keras_transfer import calibration
from keras_transfer.settings import Int, Real

TOP_K = Int(min=1)
TEMPERATURE = Real(min=0, min_open=True)


@dataclasses.dataclass(frozen=True, eq=False)
class Samples:
    """A few images of a split, spread over it, for pictures (uint8, with their positions)."""

    indices: np.ndarray
    images: np.ndarray


@dataclasses.dataclass(frozen=True, eq=False)
class Evaluation:
    """A classifier's logits on a split, with the labels.

    Attributes:
        logits: float32 `(n, num_classes)`.
        labels: int64 `(n,)`.
        class_names: the class names, in label order.
        samples: a few of the split's images for pictures, or `None`.
    """

    logits: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    samples: Samples | None = None

    @cached_property
    def predictions(self) -> np.ndarray:
        return self.logits.argmax(axis=-1).astype(np.int64)

    @cached_property
    def probabilities(self) -> np.ndarray:
        return np.asarray(keras.ops.softmax(self.logits, axis=-1), dtype=np.float32)

    @property
    def accuracy(self) -> float:
        return float(np.mean(self.predictions == self.labels)) if len(self.labels) else float("nan")

    @property
    def loss(self) -> float:
        """Mean cross-entropy of the logits (Keras' own loss function)."""
        if not len(self.labels):
            return float("nan")
        values = keras.losses.sparse_categorical_crossentropy(self.labels, self.logits, from_logits=True)
        return float(np.mean(np.asarray(values)))

    @cached_property
    def confusion(self) -> np.ndarray:
        """Counts `(num_classes, num_classes)`: rows are true classes, columns predictions."""
        return confusion_matrix(self.labels, self.predictions, len(self.class_names))

    @property
    def per_class_accuracy(self) -> dict[str, float | None]:
        return per_class_accuracy(self.confusion, self.class_names)

    def top_k_accuracy(self, k: int) -> float:
        """Share of images whose true class is among the `k` highest logits."""
        k = TOP_K.check("k", k)
        if not len(self.labels):
            return float("nan")
        top = np.argsort(-self.logits, axis=-1, kind="stable")[:, :k]
        return float(np.mean(np.any(top == self.labels[:, None], axis=-1)))

    @cached_property
    def reliability(self) -> calibration.Reliability:
        """Confidence against accuracy per bin (`calibration.reliability`, 15 bins)."""
        return calibration.reliability(self.probabilities, self.labels)

    def with_temperature(self, temperature: float) -> "Evaluation":
        """The evaluation of the same model with its logits divided by `temperature`."""
        temperature = TEMPERATURE.check("temperature", temperature)
        return dataclasses.replace(self, logits=(self.logits / np.float32(temperature)).astype(np.float32))

    def summary(self, *, top_k: int | None = None) -> dict[str, float]:
        """Loss, accuracy, expected calibration error and, with `top_k` below the class count, top-k accuracy."""
        out = {"loss": self.loss, "accuracy": self.accuracy, "ece": self.reliability.ece}
        if top_k is not None and top_k < len(self.class_names):
            out[f"top{top_k}_accuracy"] = self.top_k_accuracy(top_k)
        return out


def confusion_matrix(labels: Sequence[int], predictions: Sequence[int], num_classes: int) -> np.ndarray:
    """`tf.math.confusion_matrix` with its inputs checked (rows: true, columns: predicted)."""
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    predictions = np.asarray(predictions, dtype=np.int64).reshape(-1)
    if labels.shape != predictions.shape:
        raise ValueError(f"Expected as many labels as predictions. Received: {labels.shape} and {predictions.shape}")
    for name, values in (("labels", labels), ("predictions", predictions)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(
                f"Expected {name} in [0, {num_classes}). Received values from {values.min()} to {values.max()}"
            )
    return tf.math.confusion_matrix(labels, predictions, num_classes=num_classes, dtype=tf.int64).numpy()


def per_class_accuracy(confusion: np.ndarray, class_names: Sequence[str]) -> dict[str, float | None]:
    """Recall of every class (`None` for a class absent from the labels)."""
    totals = confusion.sum(axis=1)
    return {
        name: (float(confusion[i, i] / totals[i]) if totals[i] else None) for i, name in enumerate(class_names)
    }


def mean_and_standard_error(values) -> tuple[float, float | None]:
    """Mean and standard error of repeated measurements (splits, seeds).

    The standard error is the sample standard deviation over sqrt(n);
    `None` for a single value.
    """
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2:
        return float(values.mean()), None
    return float(values.mean()), float(values.std(ddof=1) / np.sqrt(len(values)))


def labels_of(ds: tf.data.Dataset) -> np.ndarray:
    """The labels of an unbatched `(image, label)` dataset, in order."""
    labels = ds.map(lambda x, y: y)
    return np.fromiter(labels.as_numpy_iterator(), dtype=np.int64, count=-1)


def grid_indices(size: int, count: int = 16) -> np.ndarray:
    """`count` positions spread evenly over a split of `size` examples.

    Splits are ordered by class, so the first images would all be of one class.
    """
    if size == 0:
        return np.zeros(0, np.int64)
    return np.unique(np.linspace(0, size - 1, min(count, size)).round().astype(np.int64))


def images_at(ds: tf.data.Dataset, indices: Sequence[int]) -> np.ndarray:
    """The images at `indices` of an unbatched `(image, label)` dataset."""
    wanted = {int(i): None for i in indices}
    last = max(wanted) if wanted else -1
    for position, (image, _) in enumerate(ds.take(last + 1).as_numpy_iterator()):
        if position in wanted:
            wanted[position] = image
    return np.stack([wanted[int(i)] for i in indices])


def samples_of(ds: tf.data.Dataset, size: int, count: int = 16) -> Samples | None:
    """`count` images spread over an unbatched split of `size` examples."""
    indices = grid_indices(size, count)
    return Samples(indices, images_at(ds, indices)) if len(indices) else None


def evaluate(
    model: keras.Model,
    batches: tf.data.Dataset,
    labels: np.ndarray,
    class_names: Sequence[str],
    *,
    samples: Samples | None = None,
    flip_average: bool = False,
) -> Evaluation:
    """Runs `model` once over `batches` (in the order of `labels`).

    Args:
        model: any model from the batches' inputs to logits (a classifier, or
            its head on cached features).
        batches: batched `(input, label)` dataset.
        labels: the labels, in order.
        class_names: the class names.
        samples: images of the split to keep for pictures. Defaults to `None`.
        flip_average: test-time augmentation: the logits are the mean of
            those of each image and of its mirror image (inputs must be image
            batches). Defaults to `False`.
    """
    logits = np.asarray(model.predict(batches, verbose=0), dtype=np.float32)
    if flip_average:
        mirrored = batches.map(lambda x, *rest: (tf.image.flip_left_right(x), *rest))
        logits = (logits + np.asarray(model.predict(mirrored, verbose=0), dtype=np.float32)) / 2.0
    labels = np.asarray(labels, dtype=np.int64)
    if len(logits) != len(labels):
        raise ValueError(f"Expected one logit row per label. Received: {len(logits)} rows, {len(labels)} labels")
    return Evaluation(logits=logits, labels=labels, class_names=tuple(class_names), samples=samples)
