"""Linear-probe reference: scikit-learn logistic regression on frozen features.

The classic measure of how good a frozen backbone's features are for a task.
A transfer-learning run reports it beside its own accuracy on the same split,
so "the package's pipeline matches or beats a linear probe" is a checked
number. Needs scikit-learn (`pip install keras_transfer[probe]`).
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np


@dataclasses.dataclass(frozen=True)
class ProbeResult:
    """Accuracy of a logistic regression trained on frozen features.

    Attributes:
        train_accuracy: accuracy on the features it was fit on.
        val_accuracy: accuracy on the held-out features.
        C: inverse regularization strength used.
        seconds: wall time of the fit.
    """

    train_accuracy: float
    val_accuracy: float
    C: float
    seconds: float

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def linear_probe(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    val_features: np.ndarray,
    val_labels: np.ndarray,
    *,
    C: float = 1.0,
    max_iter: int = 3000,
) -> ProbeResult:
    """Fits a standardized multinomial logistic regression and scores it.

    Args:
        train_features: `(n, d)` pooled backbone features of the training split.
        train_labels: `(n,)` integer labels.
        val_features: `(m, d)` features of the validation split.
        val_labels: `(m,)` integer labels.
        C: inverse L2 regularization strength of scikit-learn's
            `LogisticRegression`; `TrainConfig.head_l2` is on the scale of
            `1 / C`. Defaults to `1.0`.
        max_iter: iteration cap of the lbfgs solver. Defaults to `3000`.
    """
    try:
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
    except ImportError as error:  # optional dependency
        raise ImportError(
            "The linear probe needs scikit-learn: pip install 'keras_transfer[probe]'"
        ) from error
    train_features = np.asarray(train_features, dtype="float32").reshape(len(train_features), -1)
    val_features = np.asarray(val_features, dtype="float32").reshape(len(val_features), -1)
    if len(train_features) != len(train_labels) or len(val_features) != len(val_labels):
        raise ValueError(
            "Features and labels differ in length. Received: "
            f"{len(train_features)} train features for {len(train_labels)} labels, "
            f"{len(val_features)} val features for {len(val_labels)} labels."
        )
    if C <= 0:
        raise ValueError(f"Expected C > 0. Received: C={C!r}")
    start = time.perf_counter()
    classifier = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter))
    classifier.fit(train_features, train_labels)
    seconds = time.perf_counter() - start
    return ProbeResult(
        train_accuracy=float(classifier.score(train_features, train_labels)),
        val_accuracy=float(classifier.score(val_features, val_labels)) if len(val_labels) else float("nan"),
        C=float(C),
        seconds=seconds,
    )
