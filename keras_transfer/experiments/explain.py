"""Explain predictions: which pixels made the classifier say its class, and how far to trust each map.

Explains every input photo with `keras_transfer.explain` (each `--method`,
all by default; the predicted class, or `--class` for every image) and
writes, in `--output-dir`:

- `<name>_<method>.png`: the heat map over the model-size photo, lossless;
- `panel.png`: the first `--panel-images` photos (rows) by method (columns);
- `curves_patch<P>.png`: mean deletion and insertion curves per method and
  for two random maps (`random`: independent pixels; `random_blocks`:
  blobs as coarse as the Grad-CAM layer), for every `--patches` size P;
- `result.json`: per image the class, its probability and, per method and
  random map, the deletion AUC (lower is better) and insertion AUC (higher
  is better); their means; the undecodable files skipped; the layer, the
  configuration and the timing;
- `logs/`: the overlays as TensorBoard images.

Every setting is declared once (`ExplainCommandConfig`,
`keras_transfer.explain.ExplainConfig`, `FaithfulnessConfig`) and becomes a
flag. Bad input (a missing image or empty `--images` folder, no decodable
image, a missing or corrupt `--model`, an unknown backbone, class or
`--layer`, an occlusion window larger than the image, an output folder that is
a file, read-only or in use by another run) ends in one line on stderr and exit
status 2, before anything is computed.

Examples::

    python -m keras_transfer.experiments.explain --backbone mobilenet --alpha 0.25 \\
        --images ../shared/data/cats_vs_dogs/train/cats --output-dir runs/explain_cats
    python -m keras_transfer.experiments.explain --model runs/pets/model.keras --image pug_1.jpg \\
        --method gradcam --method integrated_gradients --class pug --output-dir runs/explain_pug
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Sequence

from keras_transfer import explain as ex
from keras_transfer import files, naming, run_folder
from keras_transfer import settings as settings_lib
from keras_transfer.experiments import _cli
from keras_transfer.experiments._classifier_source import (
    ClassifierSource,
    load_classifier,
    run_command,
)
from keras_transfer.settings import Choice, Either, Flag, Int, Many, Optional, Path, Text, setting

PROG = "python -m keras_transfer.experiments.explain"
RESIZE_CHOICES = ("stretch", "crop", "pad")
MAX_PANEL_IMAGES = 32
RANDOM_MAPS = ("random", "random_blocks")
_INPUT = "images to explain"
_OUTPUT = "output"
_WHAT = "what to explain"


@dataclasses.dataclass(frozen=True)
class ExplainCommandConfig(ClassifierSource):
    """What to explain, with which model (`backbone`, `alpha` or `model`), and where to write it.

    Every field but `explanation` and `faithfulness` is a
    `keras_transfer.settings.setting`; those two hold the methods' and the
    curves' hyper-parameters. Defaults to `ExplainConfig()` and
    `FaithfulnessConfig()`.
    """

    output_dir: str = setting(
        kind=Path(), group=_OUTPUT, metavar="DIR",
        help="folder for the overlays, panel.png, the curves, result.json and TensorBoard logs (created if needed).",
    )
    images: tuple[str, ...] = setting(
        (), kind=Many(Path(), min_items=0), flag=None, group=_INPUT,
        help="an image file to explain; repeat for several.",
    )
    images_dir: str | None = setting(
        None, kind=Optional(Path()), flag="--images", group=_INPUT, metavar="DIR",
        help="a folder whose image files (.jpg .jpeg .png .gif .bmp .webp, any case; not recursive) are explained.",
    )
    resize: str = setting(
        "stretch", kind=Choice(RESIZE_CHOICES), group=_INPUT,
        help="how photos become model-size squares: stretch (as training does by default), the central square "
        "(crop) or pad.",
    )
    methods: tuple[str, ...] = setting(
        (), kind=Many(Choice(ex.METHODS), min_items=0), flag=None, group=_WHAT,
        help=f"an explanation method ({', '.join(ex.METHODS)}); repeat for several. Default: all of them.",
    )
    target_class: int | str | None = setting(
        None, kind=Optional(Either((Int(min=0), Text()))), flag="--class", group=_WHAT, metavar="CLASS",
        help="explain this class (index or name) for every image; None: each image's predicted class. "
        "Unknown names list close matches.",
    )
    explanation: ex.ExplainConfig = dataclasses.field(default_factory=ex.ExplainConfig)
    faithfulness: ex.FaithfulnessConfig = dataclasses.field(default_factory=ex.FaithfulnessConfig)
    measure: bool = setting(
        True, kind=Flag(), group=_WHAT,
        help="measure faithfulness (deletion and insertion curves, against random maps); --no-measure skips it.",
    )
    patches: tuple[int, ...] = setting(
        (1, 16), kind=Many(Int(min=1)), group=_WHAT, metavar="P1,P2,...",
        help="sizes of the squares the curves move together: 1 = single pixels (Petsiuk et al.), 16 = regions.",
    )
    random_seed: int = setting(0, kind=Int(min=0), group=_WHAT, help="seed of the random maps.")
    panel_images: int = setting(
        6, kind=Int(min=0, max=MAX_PANEL_IMAGES), group=_OUTPUT, help="photos (rows) in panel.png; 0 = no panel."
    )
    progress: bool = setting(True, kind=Flag(), group=_OUTPUT, help="print each step as it finishes.")

    def __post_init__(self):
        settings_lib.validate(self)
        self.check_source()
        if not self.images and self.images_dir is None:
            raise ValueError("Expected --image files or an --images folder to explain. Received neither.")
        for name, kind in (("explanation", ex.ExplainConfig), ("faithfulness", ex.FaithfulnessConfig)):
            if not isinstance(getattr(self, name), kind):
                raise TypeError(f"Expected {name} to be a {kind.__name__}. Received: {name}={getattr(self, name)!r}")

    @property
    def effective_methods(self) -> tuple[str, ...]:
        """`methods` without repeats, or all methods when none is given."""
        return tuple(dict.fromkeys(self.methods)) or ex.METHODS


# --------------------------------------------------------------------------
# Running.
# --------------------------------------------------------------------------


@dataclasses.dataclass
class _Job:
    """The decoded images and everything resolved before any computation."""

    model: object
    names: list
    description: str
    images: object
    kept: list
    skipped: list
    stems: list
    target: int | None


def _prepare(config: ExplainCommandConfig):
    """Loads the model and the images and checks the class, layer and window: every check before the work."""
    from keras_transfer import classes as classes_lib
    from keras_transfer import models as models_lib
    from keras_transfer.data import load_image_files
    from keras_transfer.experiments._classifier_source import image_paths

    model, names, description = load_classifier(config.model, config.backbone, config.alpha)
    target = classes_lib.resolve_class(config.target_class, names) if config.target_class is not None else None
    explainer = ex.Explainer(model, config=config.explanation)  # checks the occlusion window against the size
    if any(m in ex.CAM_METHODS for m in config.effective_methods) or config.measure:
        _ = explainer.layer  # an unknown --layer fails here, with close names
    paths = image_paths(config.images, config.images_dir)
    images, kept, skipped = load_image_files(paths, image_size=models_lib.image_size_of(model), resize=config.resize)
    if not kept:
        raise ValueError(f"None of the {len(paths)} image files could be decoded: {skipped[:5]}")
    stems = naming.unique_stems([os.path.splitext(os.path.basename(p))[0] for p in kept], default="image")
    job = _Job(model, names, description, images, kept, skipped, stems, target)
    return job, explainer


def run(config: ExplainCommandConfig) -> dict:
    """Explains the images and writes the files listed in the module docstring.

    Returns:
        The content of `result.json`.
    """
    import keras
    import tensorflow as tf

    with run_folder.folder_lock(config.output_dir, command=config.command or PROG):
        job, explainer = _prepare(config)
        # An earlier run's TensorBoard images in this folder would show beside this one's, at the same step.
        files.remove_outputs(config.output_dir, ["logs"])
        explanations = {}
        for method in config.effective_methods:
            explanations[method] = explainer(job.images, method=method, classes=job.target)
            _say(config, f"{method}: {len(job.images)} images in {explanations[method].seconds:.1f} s")
        first = next(iter(explanations.values()))
        overlays = _save_overlays(config, job, explanations)
        scores = _measure(config, job, explainer, explanations, first.classes) if config.measure else {}
        if config.panel_images:
            _save_panel(config, job, explanations, first)
        summary = {
            "command": config.command,
            "model": job.description,
            "layer": explainer.layer if any(e.layer for e in explanations.values()) or scores else None,
            "methods": list(explanations),
            "num_images": len(job.kept),
            "images": _per_image(job, first, overlays, scores),
            "skipped": {"count": len(job.skipped), "files": [os.path.abspath(p) for p in job.skipped]},
            "faithfulness": _means(scores),
            "timing": {
                m: {"seconds": e.seconds, "images_per_second": len(job.kept) / e.seconds if e.seconds else None}
                for m, e in explanations.items()
            },
            "config": dataclasses.asdict(config),
            "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
        }
        files.write_json(os.path.join(config.output_dir, "result.json"), summary)
    return files.jsonable(summary)


def _say(config: ExplainCommandConfig, text: str) -> None:
    if config.progress:
        print(text, flush=True)


def _save_overlays(config: ExplainCommandConfig, job: _Job, explanations: dict) -> dict[str, list[str]]:
    """Writes `<name>_<method>.png` and the TensorBoard images; returns the file names per method."""
    import tensorflow as tf

    from keras_transfer.plotting.explain import overlay

    names: dict[str, list[str]] = {}
    writer = tf.summary.create_file_writer(os.path.join(config.output_dir, "logs"))
    with writer.as_default(step=0):
        for method, result in explanations.items():
            names[method] = []
            for stem, image, heatmap in zip(job.stems, job.images, result.maps):
                picture = overlay(image, heatmap)
                name = f"{stem}_{method}.png"
                files.write_png(os.path.join(config.output_dir, name), picture)
                tf.summary.image(f"{method}/{stem}", picture[None], step=0)
                names[method].append(name)
    writer.close()
    return names


def _measure(config: ExplainCommandConfig, job: _Job, explainer, explanations: dict, classes) -> dict:
    """`{patch: {name: FaithfulnessScores}}` of every method's maps and of the two random maps."""
    from keras_transfer import models as models_lib
    from keras_transfer.plotting.explain import plot_faithfulness_curves

    cells = int(models_lib.find_layer(explainer.model, explainer.layer).output.shape[1])
    size, count = explainer.size, len(job.images)
    maps = {m: e.maps for m, e in explanations.items()}
    maps["random"] = ex.random_maps(count, size, seed=config.random_seed)
    maps["random_blocks"] = ex.random_maps(count, size, cells=cells, seed=config.random_seed)
    base = ex.Faithfulness(
        explainer.model, config=config.faithfulness, batch_size=config.explanation.batch_size,
        jit_compile=config.explanation.jit_compile,
    )
    scores: dict[int, dict] = {}
    for patch in dict.fromkeys(config.patches):
        scorer = base.with_config(dataclasses.replace(config.faithfulness, patch=patch))
        scores[patch] = {name: scorer(job.images, value, classes=classes) for name, value in maps.items()}
        best = min(scores[patch], key=lambda name: scores[patch][name].deletion_auc.mean())
        _say(config, f"faithfulness (patch {patch}): lowest deletion AUC: {best}")
        figure = plot_faithfulness_curves(
            {name: s.deletion for name, s in scores[patch].items()},
            {name: s.insertion for name, s in scores[patch].items()},
            title=f"{job.description}: {count} images, squares of {patch} px",
        )
        files.save_figure(figure, os.path.join(config.output_dir, f"curves_patch{patch}.png"))
    return scores


def _per_image(job: _Job, first, overlays: dict, scores: dict) -> list[dict]:
    items = []
    for i, (stem, path) in enumerate(zip(job.stems, job.kept)):
        item = {
            "name": stem,
            "path": os.path.abspath(path),
            "class_index": int(first.classes[i]),
            "class_name": job.names[int(first.classes[i])],
            "probability": float(first.probabilities[i]),
            "overlays": {method: names[i] for method, names in overlays.items()},
        }
        if scores:
            item["faithfulness"] = {
                f"patch_{patch}": {
                    name: {"deletion_auc": float(s.deletion_auc[i]), "insertion_auc": float(s.insertion_auc[i])}
                    for name, s in by_name.items()
                }
                for patch, by_name in scores.items()
            }
        items.append(item)
    return items


def _means(scores: dict) -> dict:
    """Per patch size: mean and standard error of each AUC per method, and the most faithful method."""
    import numpy as np

    out = {}
    for patch, by_name in scores.items():
        table = {}
        for name, s in by_name.items():
            row = {}
            for key in ("deletion_auc", "insertion_auc"):
                values = np.asarray(getattr(s, key), np.float64)
                row[key] = float(values.mean())
                row[f"{key}_sem"] = float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else None
            table[name] = row
        methods = [name for name in table if name not in RANDOM_MAPS]
        out[f"patch_{patch}"] = {
            "auc": table,
            "lowest_deletion": min(methods, key=lambda m: table[m]["deletion_auc"]),
            "highest_insertion": max(methods, key=lambda m: table[m]["insertion_auc"]),
        }
    return out


def _save_panel(config: ExplainCommandConfig, job: _Job, explanations: dict, first) -> None:
    from keras_transfer.plotting.explain import plot_explanations

    n = min(config.panel_images, len(job.images))
    titles = [
        f"{job.stems[i]}\n{job.names[int(first.classes[i])]} p={first.probabilities[i]:.2f}" for i in range(n)
    ]
    figure = plot_explanations(job.images[:n], {m: e.maps[:n] for m, e in explanations.items()}, row_titles=titles)
    files.save_figure(figure, os.path.join(config.output_dir, "panel.png"), dpi=80)


# --------------------------------------------------------------------------
# Command line.
# --------------------------------------------------------------------------


def build_parser() -> _cli.Parser:
    parser = _cli.Parser(
        prog=PROG,
        description=(
            "Explain a classifier's predictions on photos with Grad-CAM, Grad-CAM++, gradients, SmoothGrad, "
            "integrated gradients and occlusion, and measure each map's faithfulness with deletion and insertion "
            "curves against random maps. Writes <name>_<method>.png overlays, panel.png, curves_patch<P>.png, "
            "result.json and TensorBoard logs."
        ),
    )
    groups: dict = {}
    _cli.add_repeated_flag(parser, ExplainCommandConfig, "images", "--image", metavar="FILE", groups=groups)
    _cli.add_repeated_flag(parser, ExplainCommandConfig, "methods", "--method", metavar="METHOD", groups=groups)
    _cli.add_flags(parser, ExplainCommandConfig, required=("output_dir",), groups=groups)
    _cli.add_flags(parser, ex.ExplainConfig, groups=groups)
    _cli.add_flags(parser, ex.FaithfulnessConfig, skip=("patch",), groups=groups)
    return parser


def config_from_args(args, *, command: str | None = None) -> ExplainCommandConfig:
    explanation = _cli.from_args(ex.ExplainConfig, args)
    faithfulness = _cli.from_args(ex.FaithfulnessConfig, args)
    return _cli.from_args(
        ExplainCommandConfig, args, explanation=explanation, faithfulness=faithfulness, command=command
    )


def _report(summary: dict, config: ExplainCommandConfig, seconds: float) -> None:
    for item in summary["images"][:10]:
        print(f"{item['name']}: {item['class_name']} ({item['class_index']}) p={item['probability']:.3f}")
    if len(summary["images"]) > 10:
        print(f"... and {len(summary['images']) - 10} more images")
    for key, table in summary["faithfulness"].items():
        print(f"{key}: deletion AUC (lower is better) / insertion AUC (higher is better)")
        for name, row in table["auc"].items():
            print(f"  {name:<22}{row['deletion_auc']:.4f} / {row['insertion_auc']:.4f}")
    skipped = summary["skipped"]["count"]
    print(f"{skipped} undecodable files skipped; " if skipped else "", end="")
    print(f"results in {os.path.abspath(config.output_dir)} ({seconds:.0f} s)")


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command; returns the exit status (2 for any bad input, with one line on stderr)."""
    return run_command(build_parser(), argv, make_config=config_from_args, run=run, report=_report)


if __name__ == "__main__":
    sys.exit(main())
