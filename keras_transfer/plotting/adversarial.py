"""Figures of adversarial examples and of robust accuracy.

Every function returns a `matplotlib.figure.Figure` built without pyplot (no
global state, no display needed); save it with
`keras_transfer.files.save_figure(fig, path)` (atomic: a kill never leaves
half a PNG).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure


def _top_k(probabilities: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-probabilities)[:k]


def _short(name: str, width: int = 22) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def _bars(ax, probabilities: np.ndarray, class_names: Sequence[str], k: int, highlight: int | None, title: str):
    top = _top_k(probabilities, k)[::-1]
    colors = ["tab:red" if highlight is not None and c == highlight else "tab:blue" for c in top]
    ax.barh(range(len(top)), probabilities[top], color=colors)
    ax.set_yticks(range(len(top)))
    ax.set_yticklabels([_short(class_names[c]) for c in top], fontsize="small")
    ax.set_xlim(0, 1)
    ax.set_title(title, fontsize="small")
    ax.tick_params(axis="x", labelsize="x-small")


def plot_adversarial_examples(
    originals: np.ndarray,
    adversarials: np.ndarray,
    *,
    probabilities_before: np.ndarray,
    probabilities_after: np.ndarray,
    class_names: Sequence[str],
    target_classes: Sequence[int] | None = None,
    top_k: int = 5,
    magnify: float | None = None,
    titles: Sequence[str] | None = None,
    max_images: int | None = 6,
) -> Figure:
    """One row per image: original | adversarial | perturbation magnified | top-k before | top-k after.

    Args:
        originals: `(batch, h, w, 3)` images in [0, 255].
        adversarials: the adversarial images, same shape.
        probabilities_before: `(batch, num_classes)` class probabilities of
            the originals.
        probabilities_after: the same for the adversarial images.
        class_names: names of the classes.
        target_classes: a class per image to draw in red in the bar charts
            (the target, or the original class). Defaults to `None`.
        top_k: bars per chart. Defaults to `5`.
        magnify: factor applied to the perturbation around mid-grey.
            Defaults to `None`: per image, the factor that makes its largest
            change reach black or white.
        titles: a label per image (e.g. the file name). Defaults to `None`.
        max_images: rows drawn at most. Defaults to `6`; `None` draws all.
    """
    originals = np.asarray(originals)
    adversarials = np.asarray(adversarials)
    if originals.shape != adversarials.shape or originals.ndim != 4:
        raise ValueError(
            "Expected originals and adversarials of the same shape (batch, h, w, 3). "
            f"Received {originals.shape} and {adversarials.shape}"
        )
    n = len(originals) if max_images is None else min(len(originals), max_images)
    if n == 0:
        raise ValueError("Expected at least one image to plot. Received: 0 images")
    fig = Figure(figsize=(16.0, 3.2 * n), layout="constrained")
    axes = fig.subplots(n, 5, squeeze=False, gridspec_kw={"width_ratios": [1, 1, 1, 1.15, 1.15]})
    for i in range(n):
        before = np.asarray(probabilities_before[i], np.float64)
        after = np.asarray(probabilities_after[i], np.float64)
        b, a = int(np.argmax(before)), int(np.argmax(after))
        delta = adversarials[i].astype(np.float64) - originals[i].astype(np.float64)
        largest = float(np.abs(delta).max())
        l2 = float(np.sqrt(np.square(delta).sum()))
        factor = magnify if magnify is not None else (127.5 / largest if largest > 0 else 1.0)
        shown = np.clip(127.5 + delta * factor, 0, 255).astype(np.uint8)
        label = f"{titles[i]}\n" if titles is not None else ""
        panels = (
            (originals[i], f"{label}original: {_short(class_names[b])} ({before[b]:.0%})"),
            (adversarials[i], f"adversarial: {_short(class_names[a])} ({after[a]:.0%})"),
            (shown, f"perturbation ×{factor:.0f}\nL∞ {largest:.1f}, L2 {l2:.0f} (of 255)"),
        )
        for ax, (image, title) in zip(axes[i][:3], panels):
            ax.imshow(np.clip(image, 0, 255).astype(np.uint8))
            ax.set_title(title, fontsize="small")
            ax.set_xticks([])
            ax.set_yticks([])
        highlight = int(target_classes[i]) if target_classes is not None else None
        _bars(axes[i][3], before, class_names, top_k, highlight, f"top {top_k} before")
        _bars(axes[i][4], after, class_names, top_k, highlight, f"top {top_k} after")
    return fig


def plot_robust_accuracy(
    curves,
    *,
    labels: Sequence[str] | None = None,
    title: str | None = None,
    per_attack: bool = True,
) -> Figure:
    """Accuracy under attack against the budget epsilon.

    Args:
        curves: a `keras_transfer.adversarial.RobustAccuracy` or a sequence
            of them (one line each: the worst case over its attacks).
        labels: legend entry per curve. Defaults to `None`: the attacks'
            descriptions.
        title: figure title. Defaults to `None`.
        per_attack: for a curve of several attacks, also draw (dashed) each
            attack's own accuracy where it was measured (see
            `RobustAccuracy.attack_accuracy`). Defaults to `True`.
    """
    if not isinstance(curves, (list, tuple)):
        curves = [curves]
    if not curves:
        raise ValueError("Expected at least one RobustAccuracy curve. Received: []")
    if labels is not None and len(labels) != len(curves):
        raise ValueError(f"Expected one label per curve ({len(curves)}). Received {len(labels)} labels")
    extra = [_attack_lines(curve) if per_attack else [] for curve in curves]
    fig = Figure(figsize=(6.0, 4.2 + 0.25 * (len(curves) + sum(map(len, extra)))), layout="constrained")
    ax = fig.subplots()
    for i, curve in enumerate(curves):
        label = labels[i] if labels is not None else curve.attack
        line = ax.plot(curve.epsilons, curve.accuracy, marker="o", label=f"{label} (n={curve.num_images})")[0]
        for eps, acc in zip(curve.epsilons, curve.accuracy):
            ax.annotate(f"{acc:.0%}", (eps, acc), textcoords="offset points", xytext=(0, 6),
                        ha="center", fontsize="x-small")
        for j, (name, xs, ys) in enumerate(extra[i]):
            ax.plot(xs, ys, linestyle=("--", ":", "-.")[j % 3], marker=".", color=line.get_color(),
                    alpha=0.6, label=f"{_short(name, 60)} alone")
    ax.set_xlabel("epsilon (pixel levels of 255)")
    ax.set_ylabel("accuracy under attack")
    ax.set_ylim(-0.02, 1.05)
    ax.grid(alpha=0.3)
    # Below the axes: a falling curve leaves no corner free at every scale.
    fig.legend(loc="outside lower center", fontsize="small")
    if title:
        ax.set_title(title, fontsize="medium")
    return fig


def _attack_lines(curve) -> list[tuple[str, list[float], list[float]]]:
    """`(attack, epsilons, accuracies)` of each attack of a several-attack curve, where measured."""
    attacks = getattr(curve, "attacks", ())
    if len(attacks) < 2:
        return []
    lines = []
    for name, accuracies in zip(attacks, curve.attack_accuracy):
        points = [(e, a) for e, a in zip(curve.epsilons, accuracies) if a is not None]
        if points:
            lines.append((name, [e for e, _ in points], [a for _, a in points]))
    return lines
