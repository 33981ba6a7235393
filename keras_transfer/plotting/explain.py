"""Pictures of explanations: a heat map over its photo, a panel comparing methods, faithfulness curves.

`overlay` returns a uint8 image (write it losslessly with
`keras_transfer.files.write_png`); the plot functions return Figures (save
them with `keras_transfer.files.save_figure`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

# Figures are built with matplotlib.figure.Figure, not pyplot: no backend or
# global state is involved and nothing is ever shown.
import matplotlib
import matplotlib.figure
import numpy as np


def overlay(image, heatmap, *, alpha: float = 0.5, colormap: str = "jet") -> np.ndarray:
    """A heat map blended over its photo, as uint8 `(H, W, 3)`.

    Args:
        image: `(H, W, 3)` pixels in [0, 255] (any dtype).
        heatmap: `(H, W)` values in [0, 1] (an `Explanation.maps` entry).
        alpha: opacity of the heat map. Defaults to `0.5`.
        colormap: a matplotlib colormap name. Defaults to `"jet"`.

    Returns:
        `(1 - alpha) * image + alpha * colormap(heatmap)`, rounded to uint8.
    """
    image = np.asarray(image, np.float32)
    heatmap = np.asarray(heatmap, np.float32)
    if image.ndim != 3 or image.shape[-1] != 3 or heatmap.shape != image.shape[:2]:
        raise ValueError(
            f"Expected an (H, W, 3) image and an (H, W) heat map of the same size. Received: image shape "
            f"{image.shape}, heatmap shape {heatmap.shape}"
        )
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"Expected 0 <= alpha <= 1. Received: alpha={alpha!r}")
    colours = matplotlib.colormaps[colormap](np.clip(heatmap, 0.0, 1.0))[..., :3] * 255.0
    blended = (1.0 - alpha) * np.clip(image, 0.0, 255.0) + alpha * colours
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)


def plot_explanations(
    images,
    maps: Mapping[str, np.ndarray],
    *,
    row_titles: Sequence[str] | None = None,
    alpha: float = 0.5,
    image_inches: float = 2.2,
) -> matplotlib.figure.Figure:
    """A panel: one row per image, the photo then one overlay per method.

    Args:
        images: `(n, H, W, 3)` pixels in [0, 255].
        maps: method name -> `(n, H, W)` maps in [0, 1], in column order.
        row_titles: one title per row, shown above its photo. Defaults to
            `None` (no titles).
        alpha: opacity of the heat maps. Defaults to `0.5`.
        image_inches: size of each cell in inches. Defaults to `2.2`.

    Returns:
        A matplotlib Figure.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or len(images) == 0:
        raise ValueError(f"Expected images of shape (n, height, width, 3), n >= 1. Received: shape={images.shape}")
    n = len(images)
    for name, value in maps.items():
        if np.shape(value) != images.shape[:3]:
            raise ValueError(f"Expected maps[{name!r}] of shape {images.shape[:3]}. Received: {np.shape(value)}")
    if row_titles is not None and len(row_titles) != n:
        raise ValueError(f"Expected one row title per image ({n}). Received: {len(row_titles)} titles")
    columns = 1 + len(maps)
    fig = matplotlib.figure.Figure(figsize=(columns * image_inches, n * (image_inches + 0.3) + 0.2))
    axes = fig.subplots(n, columns, squeeze=False)
    for row in range(n):
        cells = [np.clip(images[row], 0, 255).astype(np.uint8)]
        cells += [overlay(images[row], value[row], alpha=alpha) for value in maps.values()]
        for col, (ax, cell) in enumerate(zip(axes[row], cells)):
            ax.imshow(cell, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0 and col > 0:
                ax.set_title(list(maps)[col - 1], fontsize=9, fontweight="bold")
        if row_titles is not None:
            axes[row, 0].set_title(row_titles[row], fontsize=8)
    fig.tight_layout()
    return fig


def plot_faithfulness_curves(
    deletion: Mapping[str, np.ndarray],
    insertion: Mapping[str, np.ndarray],
    *,
    title: str | None = None,
) -> matplotlib.figure.Figure:
    """Mean deletion and insertion curves, one line per method (random maps dashed).

    Args:
        deletion: method name -> `(n, steps + 1)` deletion curves.
        insertion: method name -> `(n, steps + 1)` insertion curves.
        title: title of the figure. Defaults to `None`.

    Returns:
        A matplotlib Figure with two panels; the legend gives each mean AUC.
    """
    fig = matplotlib.figure.Figure(figsize=(11, 4))
    axes = fig.subplots(1, 2)
    panels = (
        (deletion, "deletion: most important pixels removed first (lower is better)"),
        (insertion, "insertion: most important pixels restored first (higher is better)"),
    )
    for ax, (curves, heading) in zip(axes, panels):
        for name, values in curves.items():
            mean = np.asarray(values, np.float64).mean(axis=0)
            fraction = np.linspace(0.0, 1.0, len(mean))
            area = float(np.sum(mean[1:] + mean[:-1]) / (2.0 * (len(mean) - 1)))
            style = "--" if name.startswith("random") else "-"
            ax.plot(fraction, mean, style, linewidth=1.4, label=f"{name} (AUC {area:.3f})")
        ax.set_title(heading, fontsize=9)
        ax.set_xlabel("fraction of pixels")
        ax.set_ylabel("probability of the explained class")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
