"""Figures of corruption robustness: accuracy versus severity, and what each severity looks like.

Every function returns a `matplotlib.figure.Figure` built without pyplot (no
global state, no display needed); save it with
`keras_transfer.files.save_figure(fig, path)` (atomic).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

# How each corruption's parameter reads under an example image.
_PARAMETER_LABELS = {
    "gaussian_noise": "σ = {:g}",
    "gaussian_blur": "σ = {:g} px",
    "jpeg_compression": "quality {:g}",
    "brightness": "V + {:g}",
    "contrast": "contrast × {:g}",
    "pixelate": "size × {:g}",
}


def _title(name: str) -> str:
    return name.replace("_", " ")


def plot_corruption_accuracy(result, *, title: str | None = None) -> Figure:
    """Accuracy against severity: one line per corruption, their mean thicker, clean accuracy for reference.

    Severity 0 is the clean accuracy, so every line starts from it.

    Args:
        result: a `keras_transfer.corruptions.CorruptionResult`.
        title: figure title. Defaults to `None` (none).
    """
    if not result.accuracy:
        raise ValueError("Expected a result with at least one corruption. Received: an empty table")
    severities = [0, *result.severities]
    fig = Figure(figsize=(7.0, 4.6), layout="constrained")
    ax = fig.subplots()
    ax.axhline(result.clean_accuracy, color="grey", linestyle="--", linewidth=1,
               label=f"clean {result.clean_accuracy:.1%}")
    for name in result.corruptions:
        mean = result.mean_by_corruption[name]
        ax.plot(severities, result.curve(name), marker="o", markersize=4, linewidth=1.3,
                label=f"{_title(name)} (mean {mean:.1%})")
    by_severity = [result.clean_accuracy, *result.mean_by_severity.values()]
    ax.plot(severities, by_severity, color="black", linewidth=3.0, marker="s",
            label=f"mean of corruptions ({result.mean_accuracy:.1%})")
    ax.set_xticks(severities)
    ax.set_xticklabels(["clean", *map(str, result.severities)])
    ax.set_xlabel("severity (ImageNet-C)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_title(title or f"accuracy under corruption (n={result.num_images})", fontsize="medium")
    return fig


def plot_corruption_examples(
    image,
    *,
    corruptions: Sequence[str] | None = None,
    severities: Sequence[int] = (1, 2, 3, 4, 5),
    seed: int = 0,
    title: str | None = None,
) -> Figure:
    """One photo under every corruption at each severity: rows are corruptions, columns severities.

    Shows what, say, "severity 3 blur" means at the image's size (the
    parameters are ImageNet-C's, in pixels for blur, whatever the size).

    Args:
        image: uint8 (or [0, 255] float) `(h, w, 3)`, e.g. at a model's
            input size.
        corruptions: names of `keras_transfer.corruptions.CORRUPTIONS`, or
            one name. Defaults to `None` (all).
        severities: severities from 1 to 5 (columns after the clean image).
            Defaults to `(1, 2, 3, 4, 5)`.
        seed: seed of the noise. Defaults to `0`.
        title: figure title. Defaults to `None` (none).
    """
    from keras_transfer import corruptions as corruptions_lib

    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"Expected one RGB image (h, w, 3). Received: an array of shape {image.shape}")
    names, severities = corruptions_lib.check_names(corruptions), corruptions_lib.check_severities(severities)
    clean = np.clip(np.round(image.astype(np.float64)), 0, 255).astype(np.uint8)
    fig = Figure(figsize=(1.7 * (len(severities) + 1), 1.8 * len(names) + 0.4), layout="constrained")
    axes = fig.subplots(len(names), len(severities) + 1, squeeze=False)
    for row, name in enumerate(names):
        panels = [(clean, "clean")]
        for severity in severities:
            corrupted = np.asarray(corruptions_lib.corrupt(clean, name, severity, seed=seed))
            label = _PARAMETER_LABELS[name].format(corruptions_lib.parameter(name, severity))
            panels.append((corrupted, f"severity {severity}\n{label}"))
        for ax, (shown, caption) in zip(axes[row], panels):
            ax.imshow(shown)
            ax.set_title(caption, fontsize="x-small")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[row][0].set_ylabel(_title(name), fontsize="small")
    if title:
        fig.suptitle(title, fontsize="medium")
    return fig
