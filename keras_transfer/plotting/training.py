"""Figures of a training run: curves, confusion matrix, reliability, predictions, feature maps.

Every function returns a `matplotlib.figure.Figure` built without pyplot (no
global state, no display needed); save it with `fig.savefig(path)`.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

PHASE_LABELS = {"head": "head (frozen backbone)", "fine_tune": "fine-tuning"}


def plot_training_curves(
    history: Mapping[str, Mapping[str, Sequence[float]]],
    *,
    metrics: Sequence[str] = ("loss", "accuracy"),
    fine_tune_start: int | None = None,
    title: str | None = None,
) -> Figure:
    """Training and validation curves of both phases on one epoch axis.

    Args:
        history: `{phase: {"epoch": [...], "loss": [...], "val_loss": [...],
            ...}}` with 0-based epochs, as in `TrainResult.history`. Phases
            are drawn in the order given.
        metrics: the metrics to draw, one panel each; `val_<metric>` is drawn
            beside `<metric>` when present. Defaults to `("loss", "accuracy")`.
        fine_tune_start: the first (0-based) epoch of fine-tuning, marked by
            a vertical line. Defaults to the first epoch of the `"fine_tune"`
            phase when `history` has one.
        title: figure title. Defaults to `None`.
    """
    if not metrics:
        raise ValueError(f"Expected at least one metric. Received: metrics={metrics!r}")
    if fine_tune_start is None and history.get("fine_tune", {}).get("epoch"):
        fine_tune_start = int(history["fine_tune"]["epoch"][0])
    fig = Figure(figsize=(5.5 * len(metrics), 4.0), layout="constrained")
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, metric in zip(axes, metrics):
        drawn = False
        for name, color in ((metric, "tab:blue"), (f"val_{metric}", "tab:orange")):
            # One line per split across both phases, so the curve is continuous.
            xs: list[float] = []
            ys: list[float] = []
            for phase in history.values():
                if name in phase and "epoch" in phase:
                    xs.extend(int(e) + 1 for e in phase["epoch"])
                    ys.extend(float(v) for v in phase[name])
            if xs:
                label = "validation" if name.startswith("val_") else "train"
                ax.plot(xs, ys, marker="o", markersize=3, color=color, label=label)
                drawn = True
        if fine_tune_start is not None:
            # Between the last head epoch and the first fine-tuning epoch (1-based axis).
            ax.axvline(fine_tune_start + 0.5, color="gray", linestyle="--", linewidth=1, label="fine-tuning starts")
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        if drawn or fine_tune_start is not None:
            ax.legend(loc="best", fontsize="small")
        ax.xaxis.get_major_locator().set_params(integer=True)
    if title:
        fig.suptitle(title)
    return fig


def plot_reliability(reliabilities: Mapping[str, Any], *, title: str | None = None) -> Figure:
    """Reliability diagram: accuracy against confidence per bin, with the ECE of each curve.

    A calibrated model's points lie on the diagonal; points below it mean
    over-confidence. The lower panel shows how many images fall in each bin.

    Args:
        reliabilities: `{label: keras_transfer.calibration.Reliability}`,
            e.g. `{"before": ..., "after temperature scaling": ...}`, drawn in
            that order.
        title: figure title. Defaults to `None`.
    """
    if not reliabilities:
        raise ValueError("Expected at least one reliability to draw. Received: reliabilities={}")
    fig = Figure(figsize=(5.5, 6.0), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    top.plot([0, 1], [0, 1], color="gray", linestyle="--", linewidth=1, label="perfectly calibrated")
    offsets = np.linspace(-0.2, 0.2, len(reliabilities)) if len(reliabilities) > 1 else [0.0]
    for (label, rel), offset in zip(reliabilities.items(), offsets):
        full = rel.counts > 0
        top.plot(rel.confidence[full], rel.accuracy[full], marker="o", markersize=4,
                 label=f"{label} (ECE {rel.ece:.3f})")
        centers = (rel.edges[:-1] + rel.edges[1:]) / 2
        width = float(np.diff(rel.edges).min())
        bottom.bar(centers + offset * width, rel.counts, width=width / max(len(reliabilities), 1), alpha=0.7,
                   label=label)
    top.set_ylabel("accuracy")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1.02)
    top.grid(alpha=0.3)
    top.legend(loc="upper left", fontsize="small")
    bottom.set_xlabel("confidence (top probability)")
    bottom.set_ylabel("images")
    bottom.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return fig


def plot_confusion_matrix(
    confusion: np.ndarray,
    class_names: Sequence[str],
    *,
    normalize: bool = True,
    title: str | None = None,
) -> Figure:
    """A confusion matrix, true classes in rows and predicted classes in columns.

    Args:
        confusion: `[num_classes, num_classes]` counts, e.g. from
            `keras_transfer.training.confusion_matrix`.
        class_names: the class names, in label order.
        normalize: colour by the fraction of each true class (row) instead of
            raw counts; cells still show counts when there are few classes.
            Defaults to `True`.
        title: axes title. Defaults to `"Confusion matrix"`.
    """
    confusion = np.asarray(confusion)
    n = len(class_names)
    if confusion.shape != (n, n):
        raise ValueError(
            f"Expected a ({n}, {n}) confusion matrix for {n} class names. Received: shape {confusion.shape}"
        )
    values = confusion.astype(np.float64)
    if normalize:
        totals = values.sum(axis=1, keepdims=True)
        values = np.divide(values, totals, out=np.zeros_like(values), where=totals > 0)
    side = min(max(4.0, 0.32 * n + 2.5), 16.0)
    fig = Figure(figsize=(side + 1.0, side), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(values, cmap="Blues", vmin=0.0, vmax=1.0 if normalize else None)
    fig.colorbar(image, ax=ax, shrink=0.8, label="fraction of true class" if normalize else "count")
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    fontsize = "small" if n <= 12 else 6
    ax.set_xticklabels(class_names, rotation=90 if n > 4 else 0, fontsize=fontsize)
    ax.set_yticklabels(class_names, fontsize=fontsize)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 15:
        for i in range(n):
            for j in range(n):
                dark = values[i, j] > (0.5 if normalize else values.max() / 2)
                ax.text(j, i, str(int(confusion[i, j])), ha="center", va="center", fontsize=fontsize,
                        color="white" if dark else "black")
    accuracy = np.trace(confusion) / max(confusion.sum(), 1)
    ax.set_title(f"{title or 'Confusion matrix'} (accuracy {accuracy:.1%}, n={int(confusion.sum())})")
    return fig


def plot_prediction_grid(
    images: np.ndarray,
    labels: Sequence[int],
    predictions: Sequence[int],
    class_names: Sequence[str],
    *,
    probabilities: Sequence[float] | None = None,
    columns: int = 4,
    title: str | None = None,
) -> Figure:
    """A grid of images titled with their predicted and true labels.

    Correct predictions are titled in green, wrong ones in red.

    Args:
        images: `[n, height, width, 3]` RGB images in [0, 255].
        labels: the true class indices.
        predictions: the predicted class indices.
        class_names: the class names, in label order.
        probabilities: the predicted class's probability per image, shown
            beside its name. Defaults to `None`.
        columns: images per row. Defaults to `4`.
        title: figure title. Defaults to `None`.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"Expected images of shape [n, height, width, 3]. Received: shape {images.shape}")
    n = len(images)
    if n == 0 or len(labels) != n or len(predictions) != n:
        raise ValueError(
            "Expected as many labels and predictions as images (at least one). "
            f"Received: {n} images, {len(labels)} labels, {len(predictions)} predictions"
        )
    if columns < 1:
        raise ValueError(f"Expected columns >= 1. Received: columns={columns!r}")
    columns = min(columns, n)
    rows = math.ceil(n / columns)
    # A fixed layout: the constraint solver doubles the time of a grid of
    # many small axes, and TensorBoard draws one every epoch.
    height = 2.5 * rows + (0.4 if title else 0.0)
    fig = Figure(figsize=(2.2 * columns, height))
    # Room above the first row for its two-line titles (and the figure title).
    top = 1.0 - (0.4 + (0.4 if title else 0.0)) / height
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=top, wspace=0.1, hspace=0.45)
    axes = fig.subplots(rows, columns, squeeze=False)
    for index, ax in enumerate(axes.flat):
        ax.axis("off")
        if index >= n:
            continue
        ax.imshow(np.clip(images[index], 0, 255).astype(np.uint8))
        true, pred = int(labels[index]), int(predictions[index])
        text = f"pred: {class_names[pred]}"
        if probabilities is not None:
            text += f" ({float(probabilities[index]):.0%})"
        text += f"\ntrue: {class_names[true]}"
        ax.set_title(text, fontsize=8, color="tab:green" if pred == true else "tab:red")
    if title:
        fig.suptitle(title)
    return fig


def plot_feature_maps(
    model,
    image: np.ndarray,
    *,
    layer: str | int | None = None,
    max_maps: int = 32,
    columns: int | None = None,
) -> Figure:
    """The feature maps of one backbone layer for one image.

    The lesson's "features extracted by VGG-16" picture: the image goes
    through the classifier's preprocessing and the backbone up to `layer`;
    each panel is one channel of that layer's output. Channels are ranked by
    their spatial variance, so dead (constant) channels come last.

    Args:
        model: a classifier built by `keras_transfer.models` (or any model
            with a `"backbone"` layer).
        image: one `[height, width, 3]` RGB image in [0, 255], of the
            model's input size.
        layer: name or index of a backbone layer. Defaults to the first
            convolution of the backbone.
        max_maps: the number of channels shown. Defaults to `32`.
        columns: panels per row. Defaults to `None` (a square-ish grid).
    """
    import keras

    from keras_transfer import models as models_lib

    image = np.asarray(image)
    size = models_lib.image_size_of(model)
    if image.shape != (size, size, 3):
        raise ValueError(
            f"Expected one RGB image of the model's input shape {(size, size, 3)}. Received: shape {image.shape}"
        )
    if max_maps < 1 or (columns is not None and columns < 1):
        raise ValueError(f"Expected max_maps >= 1 and columns >= 1. Received: max_maps={max_maps}, columns={columns}")
    backbone = models_lib.get_backbone(model)
    chosen = _backbone_layer(backbone, layer)
    probe = keras.Model(backbone.inputs, chosen.output)
    x = image[None].astype("float32")
    names = [l.name for l in model.layers]
    if models_lib.PREPROCESSING_NAME in names:
        x = model.get_layer(models_lib.PREPROCESSING_NAME)(x)
    maps = np.asarray(keras.ops.convert_to_numpy(probe(x, training=False)), dtype=np.float32)[0]
    if maps.ndim != 3:
        raise ValueError(
            f"Layer {chosen.name!r} outputs shape {maps.shape}, not feature maps [height, width, channels]; "
            "choose a convolutional layer."
        )
    order = np.argsort(-maps.reshape(-1, maps.shape[-1]).var(axis=0), kind="stable")[:max_maps]
    panels = len(order) + 1
    columns = min(columns or math.ceil(math.sqrt(panels)), panels)
    rows = math.ceil(panels / columns)
    fig = Figure(figsize=(1.6 * columns, 1.75 * rows + 0.4), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    axes.flat[0].imshow(np.clip(image, 0, 255).astype(np.uint8))
    axes.flat[0].set_title("input", fontsize=7)
    for ax, channel in zip(list(axes.flat)[1:], order):
        ax.imshow(maps[..., channel], cmap="viridis")
        ax.set_title(f"#{channel}", fontsize=7)
    fig.suptitle(
        f"{backbone.name}: {chosen.name} ({maps.shape[0]}x{maps.shape[1]}, {maps.shape[2]} channels; "
        f"{len(order)} most varied shown)",
        fontsize=9,
    )
    return fig


def _backbone_layer(backbone, layer: str | int | None):
    """The chosen layer (see `keras_transfer.models.find_layer`), or the first convolution."""
    import keras

    from keras_transfer import models as models_lib

    if layer is not None:
        return models_lib.find_layer(backbone, layer)
    for candidate in backbone.layers:
        if isinstance(candidate, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)):
            return candidate
    raise ValueError(f"Backbone {backbone.name!r} has no convolution layer; pass layer=")


def figure_to_png(fig: Figure, *, dpi: int = 100) -> bytes:
    """The PNG bytes of a figure (for TensorBoard image summaries)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()
