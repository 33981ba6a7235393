"""Figures of class visualizations: a grid of images and the optimization history.

Save them with `keras_transfer.files.save_figure(fig, path)` (atomic).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

# Figures are built with matplotlib.figure.Figure, not pyplot: no backend or
# global state is involved and nothing is ever shown.
import matplotlib.figure
import numpy as np


def plot_class_images(
    images,
    *,
    titles: Sequence[str] | None = None,
    ncols: int | None = None,
    image_inches: float = 2.6,
    suptitle: str | None = None,
) -> matplotlib.figure.Figure:
    """A grid of images, one per class, with a title under each.

    Args:
        images: `(n, height, width, 3)` pixels in [0, 255] (any dtype).
        titles: one title per image. Defaults to `None` (no titles).
        ncols: number of columns. Defaults to `None`: up to 4.
        image_inches: size of each image in inches. Defaults to `2.6`.
        suptitle: title of the figure. Defaults to `None`.

    Returns:
        A matplotlib Figure.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"Expected images of shape (n, height, width, 3). Received: shape={images.shape}")
    n = images.shape[0]
    if titles is not None and len(titles) != n:
        raise ValueError(f"Expected one title per image ({n}). Received: {len(titles)} titles")
    ncols = ncols or min(n, 4)
    if ncols < 1:
        raise ValueError(f"Expected ncols >= 1. Received: ncols={ncols!r}")
    nrows = math.ceil(n / ncols)
    extra = 0.5 if suptitle else 0.0
    fig = matplotlib.figure.Figure(figsize=(ncols * image_inches, nrows * (image_inches + 0.35) + extra))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for index, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if index >= n:
            continue
        ax.imshow(np.clip(images[index], 0, 255).astype(np.uint8), interpolation="nearest")
        if titles is not None:
            ax.set_title(titles[index], fontsize=9)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def plot_visualization_history(
    history: Mapping[str, np.ndarray],
    *,
    labels: Sequence[str] | None = None,
) -> matplotlib.figure.Figure:
    """Objective, penalty and target probability over the steps, one line per image.

    Args:
        history: `VisualizationResult.history` (arrays of shape
            `(steps, batch)` under `"objective"`, `"penalty"`, `"tv"` and
            `"probability"`).
        labels: one legend label per image. Defaults to `None`
            (`"image 0"`, ...).

    Returns:
        A matplotlib Figure with three panels.
    """
    missing = [k for k in ("objective", "penalty", "probability") if k not in history]
    if missing:
        raise ValueError(f"Expected a visualization history with keys {missing}. Received keys: {sorted(history)}")
    batch = np.asarray(history["objective"]).shape[1]
    labels = list(labels) if labels is not None else [f"image {i}" for i in range(batch)]
    fig = matplotlib.figure.Figure(figsize=(12, 3.4))
    axes = fig.subplots(1, 3)
    panels = (
        ("objective", "objective (maximized)"),
        ("penalty", "weighted penalty"),
        ("probability", "target probability (transformed input)"),
    )
    for ax, (key, title) in zip(axes, panels):
        values = np.asarray(history[key])
        steps = np.arange(1, values.shape[0] + 1)
        for i in range(batch):
            ax.plot(steps, values[:, i], label=labels[i], linewidth=1.2)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[2].set_ylim(-0.02, 1.02)
    axes[2].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig
