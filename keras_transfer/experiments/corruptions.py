"""Accuracy of a classifier under common corruptions (ImageNet-C), on a trained run's validation split.

Classifies the images of `--data` clean and under Gaussian noise, Gaussian
blur, JPEG compression, brightness, contrast and pixelation at severities 1
to 5 (`keras_transfer.corruptions`: ImageNet-C's definitions and
parameters), the corrupted copies made on the fly in `tf.data`, and writes,
in `--output-dir`, atomically:

- `result.json`: the accuracy table (`corruption_accuracy.accuracy[name][severity]`),
  the clean accuracy, the mean per corruption, per severity and overall (the
  mean corruption accuracy) and the drop relative to clean; the parameters
  of every corruption; the data, split and class mapping, the files that
  could not be decoded (skipped) or were not images (ignored); the
  configuration and timing;
- `corruption_accuracy.png`: accuracy against severity, one line per
  corruption;
- `corruption_examples.png` (unless `--no-examples`): the first image of the
  split under every corruption at every severity.

The data. `--data DIR` is a class-per-folder tree (`DIR/<class>/<image>`,
folders named as the model's classes), or an Oxford-IIIT Pet folder
(`images/` and optionally `annotations/`, read as
`keras_transfer.load_oxford_pets` reads it; `--layout auto` recognizes it).
`--split val` draws the held-out split exactly as training did
(`keras_transfer.load_folder` / `load_oxford_pets` with `--val-split` and
`--split-seed`; a training command's `--seed` is its split seed, and both
are in the run's `metrics.json`), so a run's validation images are
evaluated; `train` its training images; `all` every image. Images are
resized as the run was trained (`--resize`, from its `metrics.json`).

Bad input (a missing `--data` folder or `--model`, an unknown corruption or
a severity outside 1-5, class folders that name no class of the model, an
output folder that is a file, read-only or in use) ends in one line on
stderr and exit status 2, before anything runs.

Examples::

    python -m keras_transfer.experiments.corruptions --model runs/cats_vs_dogs/model.keras \\
        --data ../shared/data/cats_vs_dogs/train --output-dir runs/corruptions/cats_vs_dogs
    python -m keras_transfer.experiments.corruptions --model runs/pets/model.keras \\
        --data ../shared/data/oxford_pets --corruptions gaussian_noise,contrast --severities 1,3,5 \\
        --output-dir runs/corruptions/pets
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Sequence

from keras_transfer import files, run_folder
from keras_transfer import settings as settings_lib
from keras_transfer.experiments import _cli
from keras_transfer.experiments._classifier_source import ClassifierSource, load_classifier, run_command
from keras_transfer.settings import Choice, Flag, Int, Many, Optional, Path, Real, setting

PROG = "python -m keras_transfer.experiments.corruptions"
# The names of keras_transfer.corruptions.CORRUPTIONS, without importing TensorFlow for --help.
CORRUPTION_NAMES = ("gaussian_noise", "gaussian_blur", "jpeg_compression", "brightness", "contrast", "pixelate")
SEVERITY_RANGE = (1, 5)
SPLITS = ("val", "train", "all")
LAYOUTS = ("auto", "folder", "oxford_pets")
RESIZE_CHOICES = ("stretch", "crop", "pad")
MAX_BATCH_SIZE = 4096
MAX_LISTED = 1000
RESULT_FILE = "result.json"
ACCURACY_FIGURE = "corruption_accuracy.png"
EXAMPLES_FIGURE = "corruption_examples.png"

_DATA = "data"
_SWEEP = "corruptions"
_OUTPUT = "output"


@dataclasses.dataclass(frozen=True)
class CorruptionConfig(ClassifierSource):
    """Which images, which corruptions and severities, and where to write.

    Every field is a `keras_transfer.settings.setting` (default, valid
    values and help declared with it, and a flag of the command); the
    classifier is `backbone`, `alpha` or `model` (see `ClassifierSource`).
    """

    output_dir: str = setting(
        kind=Path(), group=_OUTPUT, metavar="DIR", help="folder for the results (created if needed)."
    )
    data: str = setting(
        kind=Path(), group=_DATA, metavar="DIR",
        help="class-per-folder images (DIR/<class>/<image>, classes named as the model's), or an Oxford-IIIT "
        "Pet folder (images/, annotations/).",
    )
    layout: str = setting(
        "auto", kind=Choice(LAYOUTS), group=_DATA,
        help="how --data is read: folder (load_folder), oxford_pets (load_oxford_pets), or auto: oxford_pets "
        "when DIR holds images/ and no subfolder but images/ and annotations/, else folder.",
    )
    target: str = setting(
        "breed", kind=Choice(("breed", "species")), group=_DATA,
        help="labels of an Oxford-IIIT Pet folder: breed (37 classes) or species (cat, dog), as the run was "
        "trained.",
    )
    split: str = setting(
        "val", kind=Choice(SPLITS), group=_DATA,
        help="val: the held-out split the loader draws with --val-split and --split-seed (a run's validation "
        "images, with its settings); train; or all images.",
    )
    val_split: float = setting(
        0.2, kind=Real(min=0, max=1, max_open=True), group=_DATA, help="held-out fraction per class."
    )
    split_seed: int = setting(
        0, kind=Int(min=0), group=_DATA, help="seed of the held-out split (a training command's --seed)."
    )
    resize: str | None = setting(
        None, kind=Optional(Choice(RESIZE_CHOICES)), group=_DATA,
        help="how photos become the model's squares (None: as the --model run was trained, from its "
        "metrics.json; else stretch).",
    )
    corruptions: tuple[str, ...] = setting(
        CORRUPTION_NAMES, kind=Many(Choice(CORRUPTION_NAMES)), group=_SWEEP, metavar="NAME,...",
        help="comma-separated corruptions (ImageNet-C's definitions).",
    )
    severities: tuple[int, ...] = setting(
        (1, 2, 3, 4, 5), kind=Many(Int(min=SEVERITY_RANGE[0], max=SEVERITY_RANGE[1])), group=_SWEEP,
        metavar="S1,S2,...", help="comma-separated severities from 1 to 5.",
    )
    batch_size: int = setting(
        32, kind=Int(min=1, max=MAX_BATCH_SIZE), group=_SWEEP, help="images classified at once."
    )
    seed: int = setting(0, kind=Int(min=0), group=_SWEEP, help="seed of the Gaussian noise.")
    examples: bool = setting(
        True, kind=Flag(), group=_OUTPUT,
        help=f"write {EXAMPLES_FIGURE}: the split's first image under every corruption and severity.",
    )
    progress: bool = setting(True, kind=Flag(), group=_OUTPUT, help="print a line per corruption.")

    def __post_init__(self):
        settings_lib.validate(self)
        self.check_source()
        if self.split == "val" and self.val_split == 0:
            raise ValueError("The 'val' split needs val_split > 0. Received: split='val', val_split=0")


# --------------------------------------------------------------------------
# The data: a split drawn as training drew it.
# --------------------------------------------------------------------------


def data_layout(data_dir: str) -> str:
    """`"oxford_pets"` for a folder with `images/` and no other subfolder but `annotations/`, else `"folder"`."""
    folders = {n for n in os.listdir(data_dir) if not n.startswith(".") and os.path.isdir(os.path.join(data_dir, n))}
    return "oxford_pets" if "images" in folders and folders <= {"images", "annotations"} else "folder"


@dataclasses.dataclass
class _Split:
    """The labelled images to corrupt and what was read to get them."""

    dataset: object  # unbatched tf.data.Dataset of (uint8 image, model class)
    num_images: int
    layout: str
    class_mapping: dict[str, str]
    report: object  # keras_transfer.data.DataReport


def _load_split(config: CorruptionConfig, model, names: Sequence[str], resize: str) -> _Split:
    """The `--split` of `--data`, labelled with the model's classes (matched by name)."""
    import tensorflow as tf

    from keras_transfer import classes as classes_lib
    from keras_transfer import data as data_lib
    from keras_transfer import models as models_lib

    layout = data_layout(config.data) if config.layout == "auto" else config.layout
    options = dict(
        image_size=models_lib.image_size_of(model),
        val_split=config.val_split if config.split != "all" else 0.0,
        seed=config.split_seed,
        resize=resize,
    )
    if layout == "oxford_pets":
        data = data_lib.load_oxford_pets(config.data, target=config.target, **options)
    else:
        data = data_lib.load_folder(config.data, **options)
    split = {"val": data.val, "train": data.train, "all": data.train}[config.split]
    mapping = classes_lib.class_mapping(data.class_names, names,
                                        labels=[f"{name} (in {config.data})" for name in data.class_names])
    table = tf.constant(mapping, tf.int64)
    dataset = split.map(lambda image, label: (image, tf.gather(table, label)))
    return _Split(
        dataset=dataset,
        num_images=int(split.cardinality()),
        layout=layout,
        class_mapping={name: names[k] for name, k in zip(data.class_names, mapping)},
        report=data.report,
    )


# --------------------------------------------------------------------------
# The run.
# --------------------------------------------------------------------------


def _check_data(path: str) -> None:
    if not os.path.exists(path):
        raise FileNotFoundError(f"No folder at {path!r} (--data).")
    if not os.path.isdir(path):
        raise NotADirectoryError(f"--data {path!r} is a file, not a folder of images.")


def _label(path: str) -> str:
    """The last two parts of a path (`runs/pets/model.keras` -> `pets/model.keras`)."""
    return os.path.join(*os.path.normpath(os.path.abspath(path)).split(os.sep)[-2:])


def _save_figures(config: CorruptionConfig, result, split: _Split) -> list[str]:
    from keras_transfer.plotting.corruptions import plot_corruption_accuracy, plot_corruption_examples

    source = _label(config.model) if config.model else config.backbone
    title = f"{source} on {_label(config.data)} ({config.split} split, n={result.num_images})"
    written = [files.save_figure(plot_corruption_accuracy(result, title=title),
                                 os.path.join(config.output_dir, ACCURACY_FIGURE), dpi=100)]
    if config.examples:
        image = next(iter(split.dataset.take(1)))[0].numpy()
        figure = plot_corruption_examples(
            image, corruptions=result.corruptions, severities=result.severities, seed=config.seed,
            title=f"the first {config.split} image of {_label(config.data)}",
        )
        written.append(files.save_figure(figure, os.path.join(config.output_dir, EXAMPLES_FIGURE), dpi=80))
    return [os.path.basename(path) for path in written]


def run(config: CorruptionConfig) -> dict:
    """Measures the accuracy under every corruption and severity; writes the files of the module docstring.

    Returns:
        The content of `result.json`.
    """
    import keras
    import tensorflow as tf

    from keras_transfer import inference
    from keras_transfer.corruptions import corruption_accuracy

    start = time.perf_counter()
    _check_data(config.data)
    with run_folder.folder_lock(config.output_dir, command=config.command or PROG):
        model, names, description = load_classifier(config.model, config.backbone, config.alpha)
        resize = config.resize or (inference.resize_of_run(config.model) if config.model else None) or "stretch"
        split = _load_split(config, model, names, resize)
        if not split.num_images:
            raise ValueError(f"No images in the {config.split!r} split of {config.data!r}.")
        loaded = time.perf_counter()
        result = corruption_accuracy(
            model, split.dataset, corruptions=config.corruptions, severities=config.severities,
            batch_size=config.batch_size, seed=config.seed, verbose=int(config.progress),
        )
        figures = _save_figures(config, result, split)
        report = split.report
        summary = {
            "command": config.command,
            "model": description,
            "data": os.path.abspath(config.data),
            "layout": split.layout,
            "split": config.split,
            "val_split": config.val_split,
            "split_seed": config.split_seed,
            "resize": resize,
            "image_size": int(model.input_shape[1]),
            "class_mapping": split.class_mapping,
            "corruption_accuracy": result.to_dict(),
            "data_report": {k: v for k, v in report.to_dict().items() if k not in ("skipped_files", "ignored_files")},
            "skipped_files": list(report.skipped_files[:MAX_LISTED]),
            "ignored_files": list(report.ignored_files[:MAX_LISTED]),
            "figures": figures,
            "seconds": {"loading": loaded - start, "sweep": result.seconds, "total": time.perf_counter() - start},
            "config": dataclasses.asdict(config),
            "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
        }
        files.write_json(os.path.join(config.output_dir, RESULT_FILE), summary)
    return files.jsonable(summary)


# --------------------------------------------------------------------------
# Command line.
# --------------------------------------------------------------------------


def format_table(table: dict) -> list[str]:
    """The lines of a `CorruptionResult.to_dict()` as a text table: a row per corruption, a column per severity."""
    severities = [str(s) for s in table["severities"]]
    width = max(len("mean of corruptions"), *(len(n) for n in table["accuracy"]))
    lines = [f"{'':{width}}  " + " ".join(f"{'s' + s:>6}" for s in severities) + f" {'mean':>6}"]
    for name, row in table["accuracy"].items():
        cells = " ".join(f"{row[s]:6.3f}" for s in severities)
        lines.append(f"{name:{width}}  {cells} {table['mean_by_corruption'][name]:6.3f}")
    cells = " ".join(f"{table['mean_by_severity'][s]:6.3f}" for s in severities)
    lines.append(f"{'mean of corruptions':{width}}  {cells} {table['mean_accuracy']:6.3f}")
    return lines


def _report(summary: dict, config: CorruptionConfig, seconds: float) -> None:
    table = summary["corruption_accuracy"]
    print("\n".join(format_table(table)))
    relative = table["relative_drop"]
    relative = f", {relative:.1%} below clean" if relative is not None else ""
    skipped = len(summary["skipped_files"])
    print(
        f"clean accuracy {table['clean_accuracy']:.4f} on {table['num_images']} {summary['split']} images "
        f"({skipped} undecodable skipped); mean corruption accuracy {table['mean_accuracy']:.4f}{relative}"
    )
    print(f"results in {os.path.abspath(config.output_dir)} ({seconds:.0f} s)")


def build_parser() -> _cli.Parser:
    parser = _cli.Parser(
        prog=PROG,
        description=(
            "Accuracy of a classifier under Gaussian noise, blur, JPEG compression, brightness, contrast and "
            "pixelation at ImageNet-C's 5 severities, on a trained run's validation split (or any split of a "
            "class-per-folder tree). Writes result.json, corruption_accuracy.png and corruption_examples.png."
        ),
    )
    _cli.add_flags(parser, CorruptionConfig, required=("output_dir", "data"), groups={})
    return parser


def config_from_args(args, *, command: str | None = None) -> CorruptionConfig:
    return _cli.from_args(CorruptionConfig, args, command=command)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command; returns the exit status (2 for any bad input, with one line on stderr)."""
    return run_command(build_parser(), argv, make_config=config_from_args, run=run, report=_report)


if __name__ == "__main__":
    sys.exit(main())
