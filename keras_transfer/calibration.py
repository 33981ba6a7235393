"""Can the probabilities be trusted? Calibration error, reliability, temperature scaling.

A classifier is calibrated when, of the images it labels with confidence
0.8, 80% are right. Modern networks fine-tuned on few images are usually
over-confident (Guo et al. 2017, "On Calibration of Modern Neural
Networks"). This module measures it and fixes it the way that paper does:

- `reliability(probabilities, labels)`: per confidence bin, the mean
  confidence, the accuracy and the count (the data of a reliability diagram,
  drawn by `keras_transfer.plotting.training.plot_reliability`);
- `expected_calibration_error`: the count-weighted mean gap between the two;
- `fit_temperature(logits, labels)`: the one scalar `T` that minimizes the
  negative log-likelihood of `softmax(logits / T)`; it never changes which
  class is predicted;
- `apply_temperature(model, T)`: folds `1 / T` into the classifier's logits
  layer (its kernel and bias are divided by `T`), so the saved model's own
  logits, and therefore its softmax, are the calibrated ones: nothing else
  has to remember `T`.
"""

from __future__ import annotations

import dataclasses
import math

import keras
import numpy as np

from keras_transfer import settings as settings_lib

DEFAULT_BINS = 15  # as Guo et al. 2017
# The search interval of log(T): T from e^-4 (sharpen 55x) to e^4 (flatten 55x).
_LOG_T_RANGE = (-4.0, 4.0)
# A fitted log(T) this close to an end of the range is "at the limit" (see `at_search_limit`).
_AT_LIMIT = 1e-3


@dataclasses.dataclass(frozen=True)
class Reliability:
    """Per-bin statistics of confidence (the top probability) against accuracy.

    Attributes:
        edges: the `bins + 1` bin edges in [0, 1].
        confidence: mean confidence per bin (`nan` for an empty bin).
        accuracy: accuracy per bin (`nan` for an empty bin).
        counts: images per bin.
    """

    edges: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray
    counts: np.ndarray

    @property
    def ece(self) -> float:
        """Expected calibration error: sum over bins of `count / n * |accuracy - confidence|`."""
        total = int(self.counts.sum())
        if not total:
            return float("nan")
        full = self.counts > 0
        gaps = np.abs(self.accuracy[full] - self.confidence[full])
        return float(np.sum(self.counts[full] * gaps) / total)

    def to_dict(self) -> dict:
        """JSON-ready, with `None` for the empty bins."""
        def listed(values):
            return [None if math.isnan(v) else float(v) for v in values]

        return {
            "ece": self.ece,
            "edges": [float(e) for e in self.edges],
            "confidence": listed(self.confidence),
            "accuracy": listed(self.accuracy),
            "counts": [int(c) for c in self.counts],
        }

    @classmethod
    def from_dict(cls, data: dict) -> "Reliability":
        """The inverse of `to_dict` (e.g. from `metrics.json`)."""
        def array(values):
            return np.array([np.nan if v is None else v for v in values], dtype=np.float64)

        return cls(
            edges=np.asarray(data["edges"], dtype=np.float64),
            confidence=array(data["confidence"]),
            accuracy=array(data["accuracy"]),
            counts=np.asarray(data["counts"], dtype=np.int64),
        )


def _checked(probabilities, labels) -> tuple[np.ndarray, np.ndarray]:
    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    if probabilities.ndim != 2 or probabilities.shape[0] != labels.shape[0]:
        raise ValueError(
            "Expected probabilities of shape (n, num_classes) and n labels. "
            f"Received: probabilities shape {probabilities.shape}, labels shape {labels.shape}"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= probabilities.shape[1]):
        raise ValueError(
            f"Expected labels in [0, {probabilities.shape[1] - 1}]. "
            f"Received labels from {labels.min()} to {labels.max()}"
        )
    return probabilities, labels


def reliability(probabilities, labels, *, bins: int = DEFAULT_BINS) -> Reliability:
    """Bins the images by confidence (their top probability): equal-width bins in [0, 1].

    Args:
        probabilities: `(n, num_classes)` class probabilities.
        labels: `(n,)` true class indices.
        bins: number of equal-width confidence bins. Defaults to `15`.
    """
    bins = settings_lib.Int(min=1).check("bins", bins)
    probabilities, labels = _checked(probabilities, labels)
    confidence = probabilities.max(axis=1) if len(labels) else np.zeros(0)
    correct = (probabilities.argmax(axis=1) == labels) if len(labels) else np.zeros(0, bool)
    edges = np.linspace(0.0, 1.0, bins + 1)
    # Bin i holds (edges[i], edges[i + 1]]; a confidence of exactly 0 goes to the first.
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    counts = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(which, weights=confidence, minlength=bins) / counts
        accuracy = np.bincount(which, weights=correct.astype(np.float64), minlength=bins) / counts
    return Reliability(edges=edges, confidence=mean_confidence, accuracy=accuracy, counts=counts)


def expected_calibration_error(probabilities, labels, *, bins: int = DEFAULT_BINS) -> float:
    """ECE with equal-width confidence bins (Guo et al. 2017). Defaults to 15 bins."""
    return reliability(probabilities, labels, bins=bins).ece


def _nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    scaled = logits / temperature
    scaled = scaled - scaled.max(axis=1, keepdims=True)
    log_z = np.log(np.exp(scaled).sum(axis=1))
    return float(np.mean(log_z - scaled[np.arange(len(labels)), labels]))


def fit_temperature(logits, labels, *, tolerance: float = 1e-6) -> float:
    """The temperature `T` minimizing the mean cross-entropy of `softmax(logits / T)`.

    The loss is smooth and unimodal in `log T` (it is convex in `1 / T`), so
    a golden-section search over `log T` in [-4, 4] finds it to
    `tolerance` without gradients or a learning rate. `T > 1` softens an
    over-confident model, `T < 1` sharpens an under-confident one.

    Args:
        logits: `(n, num_classes)` logits of held-out images (the
            validation split: fitting on training images would learn the
            over-confidence it should remove).
        labels: `(n,)` their true classes.
        tolerance: width of the final interval of `log T`. Defaults to `1e-6`.

    Raises:
        ValueError: no images, shapes that do not match, or a `tolerance`
            that is not a positive number.
    """
    tolerance = settings_lib.Real(min=0, min_open=True).check("tolerance", tolerance)
    logits = np.asarray(logits, dtype=np.float64)
    logits_checked, labels = _checked(logits, labels)
    if not len(labels):
        raise ValueError("Expected at least one image to fit a temperature on. Received: 0 images")
    if not np.all(np.isfinite(logits_checked)):
        raise ValueError("Expected finite logits to fit a temperature on. Received logits with NaN or inf")
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    lo, hi = _LOG_T_RANGE
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = (_nll(logits_checked, labels, math.exp(v)) for v in (a, b))
    width = math.inf
    while tolerance < hi - lo < width:  # or until float64 can narrow the interval no further
        width = hi - lo
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = _nll(logits_checked, labels, math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = _nll(logits_checked, labels, math.exp(b))
    return float(math.exp((lo + hi) / 2.0))


def at_search_limit(temperature: float) -> bool:
    """Whether a `fit_temperature` result lies at an end of its search range.

    There the loss was still falling: the held-out images give no bound.
    Typically every one of them is classified right, and the cross-entropy
    only keeps asking for more confidence (`T -> 0`); applying the limit
    would make the model about 55 times more confident on that evidence.
    """
    log_t = math.log(temperature)
    return min(abs(log_t - limit) for limit in _LOG_T_RANGE) < _AT_LIMIT


def apply_temperature(model: keras.Model, temperature: float, *, layer: str = "logits") -> None:
    """Divides the logits layer's kernel and bias by `temperature`, in place.

    Afterwards `model(x) == old_model(x) / temperature` (to float rounding):
    the saved `.keras` file carries the calibration with no extra layer, and
    every consumer of the logits (predict, attacks, explanations) sees the
    calibrated ones. The predicted class never changes.

    Args:
        model: a classifier whose last layer is a `Dense` producing logits
            (as `keras_transfer.models.build_classifier` makes).
        temperature: `T > 0`, e.g. from `fit_temperature`.
        layer: name of that `Dense` layer. Defaults to `"logits"`.

    Raises:
        ValueError: a temperature that is not a positive finite number, or
            no `Dense` layer of that name.
    """
    temperature = settings_lib.Real(min=0, min_open=True).check("temperature", temperature)
    if not math.isfinite(temperature):
        raise ValueError(f"Expected a finite temperature. Received: temperature={temperature!r}")
    try:
        dense = model.get_layer(layer)
    except ValueError:
        dense = None
    if not isinstance(dense, keras.layers.Dense):
        raise ValueError(
            f"Expected a classifier with a Dense layer named {layer!r} producing the logits (as "
            f"keras_transfer.models.build_classifier makes). Received: model {model.name!r}"
        )
    dense.kernel.assign(dense.kernel / temperature)
    if dense.use_bias:
        dense.bias.assign(dense.bias / temperature)
