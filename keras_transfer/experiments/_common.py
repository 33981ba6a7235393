"""What the training command lines share: configs, flags, the run, its pictures.

Each training command (`pets`, `cats_vs_dogs`, `folder`) is a
`TrainingCommand`: its name, its help, and how it loads its data. Its flags
are generated from the settings of `DataOptions`, `keras_transfer.TrainConfig`
and `RunOptions` (each declared once); `run_experiment` validates everything
that needs no image, loads the data, calls `keras_transfer.training.train` and
draws the plots from the result.

    command line -> ExperimentConfig -> data -> train() -> TrainResult -> plots
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from keras_transfer import backbones as backbones_lib
from keras_transfer import data as data_lib
from keras_transfer import engine, files, training
from keras_transfer import models as models_lib
from keras_transfer import settings as settings_lib
from keras_transfer.experiments import _cli
from keras_transfer.run_folder import RUN_OUTPUTS as _RUN_FILES
from keras_transfer.run_folder import RunFolder, folder_lock
from keras_transfer.settings import Choice, Flag, Int, Optional, Path, Real, Text, setting

PLOT_FILES = {
    "curves": "training_curves.png",
    "confusion": "confusion_matrix.png",
    "reliability": "reliability.png",
    "predictions": "predictions.png",
    "feature_maps": "feature_maps.png",
}
# What --overwrite removes from an output folder: only what a run writes.
RUN_OUTPUTS = (*_RUN_FILES, *PLOT_FILES.values())
RESUME_HINT = "Run the same command again to continue from the last completed epoch."


@dataclasses.dataclass
class DataOptions:
    """How a training command loads its images."""

    data_dir: str | None = setting(None, kind=Optional(Path()), group="data",
                                   help="a local copy of the data (default: tensorflow-datasets, where the "
                                        "command has it)")
    tfds_data_dir: str | None = setting(None, kind=Optional(Path()), group="data",
                                        help="tensorflow-datasets data folder (default: $TFDS_DATA_DIR or "
                                             "~/tensorflow_datasets)")
    image_size: int | None = setting(None, kind=Optional(Int(min=1)), group="data",
                                     help="side of the square input images in pixels (default: the backbone's "
                                          "default size, 224 for most)")
    val_split: float = setting(0.2, kind=Real(min=0, max=1, max_open=True), group="data",
                               help="fraction of each class held out for validation (0: no validation)")
    resize: str = setting("stretch", kind=Choice(data_lib.RESIZE_MODES), group="data",
                          help="stretch (ignore the aspect ratio), crop (centre crop) or pad to a square")
    cache: str = setting("auto", kind=Text(), flag="--data-cache", group="data",
                         metavar="{auto,memory,none,PATH}",
                         help="keep the decoded images in memory, decode them every epoch (none), cache them in "
                              "files at PATH, or (auto) in memory when they fit in half the available memory "
                              f"(${data_lib.MEMORY_LIMIT_ENV} sets the budget, e.g. 8G), else in files under "
                              f"${data_lib.CACHE_DIR_ENV} (default ~/.cache/keras_transfer/images)")
    target: str = setting("breed", kind=Choice(("breed", "species")), group="data",
                          help="Oxford-IIIT Pet: classify the 37 breeds, or cat vs dog (species needs --data-dir)")

    def __post_init__(self):
        settings_lib.validate(self)


@dataclasses.dataclass
class RunOptions:
    """Where a training command writes, and what it draws."""

    output_dir: str = setting("runs/run", kind=Path(), group="output",
                              help="folder of the run's files; re-running with the same folder resumes")
    overwrite: bool = setting(False, kind=Flag(), group="output",
                              help="delete an earlier run's files in --output-dir and start over instead of resuming")
    feature_map_layer: str | None = setting(None, kind=Optional(Text()), group="output",
                                            help="backbone layer shown in feature_maps.png (default: the first "
                                                 "convolution)")

    def __post_init__(self):
        settings_lib.validate(self)


@dataclasses.dataclass
class ExperimentConfig:
    """One training command's run: its dataset name, data options, training and output settings."""

    dataset: str
    data: DataOptions
    train: training.TrainConfig
    run: RunOptions

    @property
    def output_dir(self) -> str:
        return self.run.output_dir

    @property
    def image_size(self) -> int:
        if self.data.image_size is not None:
            return self.data.image_size
        return backbones_lib.get_backbone_spec(self.train.backbone).default_size

    def run_info(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "data": dataclasses.asdict(self.data), "output_dir": self.output_dir}


@dataclasses.dataclass(frozen=True)
class TrainingCommand:
    """A training command line: its name, help and data loader; flags come from the configs.

    Attributes:
        dataset: the command's name (`pets`, `cats_vs_dogs`, `folder`).
        description: `--help`'s first paragraph.
        data_dir_help: what `--data-dir` is for this command.
        load: `(ExperimentConfig) -> ImageData`.
        tfds: the command can load from tensorflow-datasets (else
            `--data-dir` is required).
        data_flags_skipped: `DataOptions` fields without a flag here.
    """

    dataset: str
    description: str
    data_dir_help: str
    load: Callable[[ExperimentConfig], data_lib.ImageData]
    tfds: bool = True
    data_flags_skipped: tuple[str, ...] = ("target",)

    @property
    def prog(self) -> str:
        return f"python -m keras_transfer.experiments.{self.dataset}"

    def build_parser(self) -> _cli.Parser:
        parser = _cli.Parser(prog=self.prog, description=self.description, epilog=_EPILOG)
        groups: dict[str, Any] = {}
        skip = self.data_flags_skipped + (() if self.tfds else ("tfds_data_dir",))
        required = () if self.tfds else ("data_dir",)
        _cli.add_flags(parser, DataOptions, skip=skip, required=required, groups=groups)
        parser._option_string_actions["--data-dir"].help = self.data_dir_help
        _cli.add_flags(parser, training.TrainConfig, groups=groups)
        _cli.add_flags(parser, RunOptions, defaults={"output_dir": os.path.join("runs", self.dataset)}, groups=groups)
        return parser

    def config_from_args(self, args) -> ExperimentConfig:
        return ExperimentConfig(
            dataset=self.dataset,
            data=_cli.from_args(DataOptions, args),
            train=_cli.from_args(training.TrainConfig, args),
            run=_cli.from_args(RunOptions, args),
        )

    def main(self, argv: Sequence[str] | None = None) -> int:
        """Parses `argv`, runs the experiment and returns the exit status."""
        parser = self.build_parser()

        def body():
            config = self.config_from_args(parser.parse_args(argv))
            run_experiment(config, self.load)

        return _cli.run_main(self.prog, argv, body, resume_hint=RESUME_HINT)


_EPILOG = (
    "Outputs in --output-dir: model.keras (RGB 0-255 images of --image-size -> logits), classes.json, "
    "metrics.json, tensorboard/ (tensorboard --logdir OUTPUT_DIR/tensorboard), training_curves.png, "
    "confusion_matrix.png, predictions.png, feature_maps.png, and state/ for resuming. "
    "An interrupted run continues from its last completed epoch when the same command is run again."
)


# ---------------------------------------------------------------------------
# The run.


def clear_outputs(output_dir: str) -> None:
    """Removes the files a run writes (and only those) from `output_dir`."""
    files.remove_outputs(output_dir, RUN_OUTPUTS)


def check_before_data(config: ExperimentConfig) -> None:
    """Everything that can be checked before the first image is decoded.

    Builds the classifier once with the configured weights (so a missing or
    corrupt weights file is reported now) and checks the layer names of
    `--fine-tune-at` and `--feature-map-layer` on it.
    """
    training.check_config(config.train, image_size=config.image_size)
    if config.train.calibrate and config.data.val_split == 0:
        raise ValueError("--calibrate fits the temperature on the validation split, so it needs --val-split > 0. "
                         "Received: val_split=0")
    if config.run.feature_map_layer is not None:
        models_lib.check_layer_name(config.train.backbone, config.run.feature_map_layer, alpha=config.train.alpha,
                                    image_size=config.image_size)


def save_plots(result: training.TrainResult, *, output_dir: str, feature_map_layer: str | None = None,
               first_image=None, only_missing: bool = False) -> list[str]:
    """Writes the run's PNG plots from its result (nothing is recomputed); returns their paths.

    Args:
        result: what `train` returned.
        output_dir: the run folder.
        feature_map_layer: backbone layer of `feature_maps.png`. Defaults to
            `None` (the first convolution).
        first_image: the image of `feature_maps.png` when the result holds
            no validation samples. Defaults to `None`.
        only_missing: keep the plots that exist (a finished run loaded again).
    """
    from keras_transfer import monitoring
    from keras_transfer.plotting import training as plots

    figures: dict[str, Callable[[], Any]] = {}
    if result.history:
        title = f"{result.model.name}: {len(result.class_names)} classes"
        logged = {key for phase in result.history.values() for key in phase}
        # Top-k accuracy gets its own panel where the run logged it.
        shown = ("loss", "accuracy", *sorted(k for k in logged if k.startswith("top") and k.endswith("_accuracy")))
        figures["curves"] = lambda: plots.plot_training_curves(result.history, metrics=shown,
                                                               fine_tune_start=result.fine_tune_start, title=title)
    if result.evaluation is not None:
        drawn = monitoring.evaluation_figures(result.evaluation, title="Validation")
        figures["confusion"] = lambda: drawn["confusion_matrix"]
        if "predictions" in drawn:
            figures["predictions"] = lambda: drawn["predictions"]
        first_image = result.evaluation.samples.images[0] if result.evaluation.samples else first_image
    reliabilities = _reliabilities((result.metrics or {}).get("calibration") or {})
    if reliabilities:
        figures["reliability"] = lambda: plots.plot_reliability(reliabilities, title="Validation calibration")
    if first_image is not None:
        figures["feature_maps"] = lambda: plots.plot_feature_maps(result.model, first_image, layer=feature_map_layer)
    written = []
    for key, draw in figures.items():
        path = os.path.join(output_dir, PLOT_FILES[key])
        if not (only_missing and os.path.isfile(path)):
            written.append(files.save_figure(draw(), path))
    return written


def _reliabilities(info: Mapping[str, Any]) -> dict[str, Any]:
    """The validation reliability bins `metrics.json` holds, before and after any temperature."""
    from keras_transfer.calibration import Reliability

    if "val_reliability" not in info:
        return {}
    if info.get("temperature") is None:
        return {"validation": Reliability.from_dict(info["val_reliability"])}
    return {
        "before": Reliability.from_dict(info["val_reliability_before"]),
        f"after (T = {info['temperature']:.2f})": Reliability.from_dict(info["val_reliability"]),
    }


def run_experiment(config: ExperimentConfig, load: Callable[[ExperimentConfig], Any]) -> training.TrainResult:
    """Checks, loads the data, trains both phases and writes every output of the run."""
    # MultiWorkerMirroredStrategy must exist before any other TensorFlow work.
    strategy = engine.make_strategy(config.train.strategy)
    root = RunFolder(engine.worker_dir(config.output_dir, strategy)).root
    with folder_lock(root, command=f"{config.dataset} run"):
        check_before_data(config)
        if config.run.overwrite:
            clear_outputs(config.output_dir)
        data = load(config)
        _print_data(data.report, len(data.class_names))
        result = training.train(data, config.train, output_dir=config.output_dir, strategy=strategy,
                                run_info=config.run_info())
        if engine.is_chief(strategy):
            first = next(data.train.take(1).as_numpy_iterator())[0]
            save_plots(result, output_dir=result.output_dir, feature_map_layer=config.run.feature_map_layer,
                       first_image=first, only_missing=result.loaded_finished_run)
    final = result.metrics["final"]
    summary = ", ".join(f"{split} accuracy {v['accuracy']:.3f} (loss {v['loss']:.3f})" for split, v in final.items())
    print(f"Done in {result.metrics['wall_time_s']:.0f} s: {summary}.\nOutputs in {result.output_dir}", flush=True)
    return result


def _print_data(report: data_lib.DataReport, num_classes: int) -> None:
    print(
        f"Data ({report.source}): {num_classes} classes, "
        + ", ".join(f"{split} {n}" for split, n in report.used.items() if n)
        + f" images; {report.skipped} skipped, {report.ignored} ignored.",
        flush=True,
    )
