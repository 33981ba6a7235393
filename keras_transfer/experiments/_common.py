"""What the experiment command lines share: flags, configuration, the run, its files.

Each experiment module (`pets`, `cats_vs_dogs`, `folder`) only says how to
load its data; `argparse` flags become an `ExperimentConfig` (a `TrainConfig`
plus data options), and `run_experiment` loads the data, calls
`keras_transfer.training.train` and saves the plots.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from keras_transfer import _downloads
from keras_transfer import backbones as backbones_lib
from keras_transfer import data as data_lib
from keras_transfer import training

PLOT_FILES = {
    "curves": "training_curves.png",
    "confusion": "confusion_matrix.png",
    "predictions": "predictions.png",
    "feature_maps": "feature_maps.png",
}
# What --overwrite removes from an output folder: only what a run writes.
RUN_OUTPUTS = (
    training.MODEL_FILE,
    training.CLASSES_FILE,
    training.METRICS_FILE,
    training.TENSORBOARD_DIR,
    training.STATE_DIR,
    ".workers",
    *PLOT_FILES.values(),
)


@dataclasses.dataclass
class DataOptions:
    """How an experiment loads its images.

    Attributes:
        data_dir: a local copy of the data; `None` uses tensorflow-datasets
            (pets, cats_vs_dogs). Defaults to `None`.
        tfds_data_dir: the tensorflow-datasets data folder. Defaults to `None`
            (tfds' default).
        image_size: side of the square images. Defaults to `None` (the
            backbone's default size).
        val_split: fraction of each class held out for validation. Defaults
            to `0.2`.
        resize: `"stretch"`, `"crop"` or `"pad"`. Defaults to `"stretch"`.
        cache: `"memory"`, `"none"`, or a file path prefix for a tf.data file
            cache of the decoded images. Defaults to `"memory"`.
        target: Oxford-IIIT Pet only: `"breed"` (37 classes) or `"species"`
            (cat/dog; needs `data_dir`). Defaults to `"breed"`.
    """

    data_dir: str | None = None
    tfds_data_dir: str | None = None
    image_size: int | None = None
    val_split: float = 0.2
    resize: str = "stretch"
    cache: str = "memory"
    target: str = "breed"

    def loader_cache(self) -> bool | str:
        return {"memory": True, "none": False}.get(self.cache, self.cache)


@dataclasses.dataclass
class ExperimentConfig:
    """One experiment run.

    Attributes:
        dataset: `"pets"`, `"cats_vs_dogs"` or `"folder"`.
        data: the data options.
        train: the training hyper-parameters.
        output_dir: where the run writes its files.
        overwrite: delete an earlier run's files in `output_dir` first,
            instead of resuming it. Defaults to `False`.
        feature_map_layer: backbone layer of `feature_maps.png`. Defaults to
            `None` (the first convolution).
    """

    dataset: str
    data: DataOptions
    train: training.TrainConfig
    output_dir: str
    overwrite: bool = False
    feature_map_layer: str | None = None

    @property
    def image_size(self) -> int:
        if self.data.image_size is not None:
            return self.data.image_size
        return backbones_lib.get_backbone_spec(self.train.backbone).default_size

    def run_info(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "data": dataclasses.asdict(self.data), "output_dir": self.output_dir}


# ---------------------------------------------------------------------------
# Command line.


def _weights(value: str) -> str | None:
    if value.lower() == "none":
        return None
    if value == "imagenet" or os.path.isfile(value):
        return value
    raise argparse.ArgumentTypeError(
        f"expected 'imagenet', 'none' or the path of an existing weights file. Received: {value!r}"
    )


def _fine_tune_at(value: str) -> int | str:
    try:
        return int(value)
    except ValueError:
        return value


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1. Received: {value!r}")
    return number


def _non_negative_int(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0. Received: {value!r}")
    return number


def _fraction(value: str) -> float:
    number = float(value)
    if not 0.0 <= number < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1). Received: {value!r}")
    return number


def _non_negative_float(value: str) -> float:
    number = float(value)
    if not number >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0. Received: {value!r}")
    return number


def _positive_float(value: str) -> float:
    number = float(value)
    if not number > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0. Received: {value!r}")
    return number


class _HelpFormatter(argparse.HelpFormatter):
    """Adds "(default: X)" to a flag's help unless the help already says it or there is no default."""

    def _get_help_string(self, action):
        text = action.help or ""
        no_default = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        if "(default" in text or no_default or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def build_parser(
    *, prog: str, description: str, dataset: str, data_dir_help: str, data_dir_required: bool,
    tfds: bool, pets_target: bool = False,
) -> argparse.ArgumentParser:
    """The argument parser of one experiment (every flag documented in `--help`)."""
    defaults = training.TrainConfig()
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        formatter_class=_HelpFormatter,
        epilog=(
            "Outputs in --output-dir: model.keras (RGB 0-255 images of --image-size -> logits), classes.json, "
            "metrics.json, tensorboard/ (tensorboard --logdir OUTPUT_DIR/tensorboard), training_curves.png, "
            "confusion_matrix.png, predictions.png, feature_maps.png, and state/ for resuming. "
            "An interrupted run continues from its last completed epoch when the same command is run again. "
            "Set KERAS_TRANSFER_TRACEBACK=1 to see the traceback of an error."
        ),
    )
    data = parser.add_argument_group("data")
    data.add_argument("--data-dir", required=data_dir_required, default=None, help=data_dir_help)
    if tfds:
        data.add_argument(
            "--tfds-data-dir", default=None,
            help="tensorflow-datasets data folder (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)",
        )
    if pets_target:
        data.add_argument(
            "--target", choices=("breed", "species"), default="breed",
            help="classify the 37 breeds, or cat vs dog (species needs --data-dir)",
        )
    data.add_argument(
        "--image-size", type=_positive_int, default=None,
        help="side of the square input images in pixels (default: the backbone's default size, 224 for most)",
    )
    data.add_argument("--resize", choices=data_lib.RESIZE_MODES, default="stretch",
                      help="stretch (ignore the aspect ratio), crop (centre crop) or pad to a square")
    data.add_argument("--val-split", type=_fraction, default=0.2,
                      help="fraction of each class held out for validation (0: no validation)")
    data.add_argument(
        "--data-cache", default="memory", metavar="{memory,none,PATH}",
        help="keep the decoded images in memory, decode them every epoch (none), or cache them in files at PATH",
    )

    model = parser.add_argument_group("model")
    model.add_argument(
        "--backbone", default=defaults.backbone,
        help=f"Keras Applications backbone; one of: {', '.join(backbones_lib.available_backbones())}",
    )
    model.add_argument("--alpha", type=_positive_float, default=None,
                       help="width multiplier of the MobileNet families (default: 1.0)")
    model.add_argument("--weights", type=_weights, default="imagenet",
                       help="'imagenet', 'none' (random initialization) or the path of a backbone weights file")
    model.add_argument("--pooling", choices=("avg", "max"), default=defaults.pooling, help="global pooling")
    model.add_argument("--dropout", type=_fraction, default=defaults.dropout, help="dropout rate before the logits")
    model.add_argument("--standardize-features", action=argparse.BooleanOptionalAction,
                       default=defaults.standardize_features,
                       help="standardize pooled features with training-set statistics (a layer of the model)")
    model.add_argument("--head-l2", type=_non_negative_float, default=defaults.head_l2,
                       help="L2 penalty of the logits kernel, on the scale of scikit-learn's 1/C "
                            "(0: none)")
    model.add_argument("--augment", action=argparse.BooleanOptionalAction, default=defaults.augment,
                       help="random flip, rotation, zoom and contrast while training")
    model.add_argument("--flip-features", action=argparse.BooleanOptionalAction, default=defaults.flip_features,
                       help="with --cache-features and --augment: phase 1 also trains on the features of the "
                            "mirrored training images (one more extraction pass)")

    train = parser.add_argument_group("training")
    train.add_argument("--batch-size", type=_positive_int, default=defaults.batch_size,
                       help="global batch size (split across replicas)")
    train.add_argument("--epochs", type=_non_negative_int, default=None,
                       help="epochs of phase 1: the head on the frozen backbone (default: "
                            f"{training.DEFAULT_CACHED_HEAD_EPOCHS} on cached features, where an epoch takes "
                            f"milliseconds; {training.DEFAULT_HEAD_EPOCHS} with --no-cache-features)")
    train.add_argument("--fine-tune-epochs", type=_non_negative_int, default=defaults.fine_tune_epochs,
                       help="epochs of phase 2: fine-tuning the top of the backbone (0: skip)")
    train.add_argument(
        "--fine-tune-at", type=_fine_tune_at, default=None, metavar="{INDEX,-N,LAYER,all}",
        help="first trainable backbone layer in phase 2: a layer index, -N for the top N layers, a layer name, "
             "or all (default: the top third of the backbone's layers)",
    )
    train.add_argument("--learning-rate", type=_positive_float, default=defaults.learning_rate,
                       help="Adam learning rate of phase 1")
    train.add_argument("--fine-tune-learning-rate", type=_positive_float, default=None,
                       help="Adam learning rate of phase 2 (default: --learning-rate / 100)")
    train.add_argument("--train-batchnorm", action="store_true",
                       help="also train BatchNormalization scale and offset in phase 2 "
                            "(their moving statistics never change)")
    train.add_argument("--cache-features", action=argparse.BooleanOptionalAction, default=defaults.cache_features,
                       help="phase 1 on backbone features computed once (fast; phase 1's only augmentation "
                            "is then --flip-features)")
    train.add_argument("--linear-probe", action="store_true",
                       help="also fit a scikit-learn logistic regression on the same frozen features and split "
                            "(a reference accuracy, in metrics.json; needs scikit-learn)")
    train.add_argument("--early-stopping", type=_positive_int, default=None, metavar="PATIENCE",
                       help="stop a phase after PATIENCE epochs without a lower validation loss (default: off)")
    train.add_argument("--seed", type=int, default=defaults.seed,
                       help="seed of the validation split, initialization, shuffling and augmentation")

    engine = parser.add_argument_group("engine")
    engine.add_argument("--mixed-precision", choices=training.MIXED_PRECISION_CHOICES, default=defaults.mixed_precision,
                        help="auto: mixed_float16 on GPU, mixed_bfloat16 on CPU; logits stay float32")
    engine.add_argument("--jit-compile", action="store_true", help="compile the training step with XLA")
    engine.add_argument(
        "--strategy", choices=training.STRATEGY_CHOICES, default=defaults.strategy,
        help="default: one device; mirrored: all local GPUs (or logical CPUs); multi_worker: "
             "MultiWorkerMirroredStrategy configured by TF_CONFIG (run the same command on every worker)",
    )

    output = parser.add_argument_group("output")
    output.add_argument("--output-dir", default=os.path.join("runs", dataset),
                        help="folder of the run's files; re-running with the same folder resumes")
    output.add_argument("--overwrite", action="store_true",
                        help="delete an earlier run's files in --output-dir and start over instead of resuming")
    output.add_argument("--tensorboard-images-every", type=_non_negative_int, default=defaults.tensorboard_images_every,
                        metavar="N", help="TensorBoard confusion matrix and prediction grid every N epochs (0: never)")
    output.add_argument("--feature-map-layer", default=None,
                        help="backbone layer shown in feature_maps.png (default: the first convolution)")
    output.add_argument("--verbose", type=int, choices=(0, 1, 2), default=defaults.verbose,
                        help="0: quiet, 1: progress bar, 2: one line per epoch")
    return parser


def config_from_args(args: argparse.Namespace, *, dataset: str) -> ExperimentConfig:
    """Turns parsed flags into an `ExperimentConfig` (raises ValueError on bad values)."""
    data = DataOptions(
        data_dir=args.data_dir,
        tfds_data_dir=getattr(args, "tfds_data_dir", None),
        image_size=args.image_size,
        val_split=args.val_split,
        resize=args.resize,
        cache=args.data_cache,
        target=getattr(args, "target", "breed"),
    )
    train = training.TrainConfig(
        backbone=args.backbone,
        alpha=args.alpha,
        weights=args.weights,
        pooling=args.pooling,
        dropout=args.dropout,
        standardize_features=args.standardize_features,
        head_l2=args.head_l2,
        augment=args.augment,
        flip_features=args.flip_features,
        batch_size=args.batch_size,
        epochs=args.epochs,
        fine_tune_epochs=args.fine_tune_epochs,
        fine_tune_at=args.fine_tune_at,
        learning_rate=args.learning_rate,
        fine_tune_learning_rate=args.fine_tune_learning_rate,
        train_batchnorm=args.train_batchnorm,
        cache_features=args.cache_features,
        linear_probe=args.linear_probe,
        mixed_precision=args.mixed_precision,
        jit_compile=args.jit_compile,
        strategy=args.strategy,
        early_stopping_patience=args.early_stopping,
        tensorboard_images_every=args.tensorboard_images_every,
        seed=args.seed,
        verbose=args.verbose,
    )
    config = ExperimentConfig(
        dataset=dataset, data=data, train=train, output_dir=args.output_dir, overwrite=args.overwrite,
        feature_map_layer=args.feature_map_layer,
    )
    backbones_lib.check_image_size(backbones_lib.get_backbone_spec(train.backbone), config.image_size)
    return config


# ---------------------------------------------------------------------------
# The run.


def clear_outputs(output_dir: str) -> None:
    """Removes the files a run writes (and only those) from `output_dir`."""
    for name in RUN_OUTPUTS:
        path = os.path.join(output_dir, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)


def save_plots(
    result: training.TrainResult, data, *, output_dir: str, feature_map_layer: str | None = None
) -> list[str]:
    """Writes the run's PNG plots; returns their paths."""
    import numpy as np

    from keras_transfer.plotting import training as plots

    written = []

    def save(fig, key):
        path = os.path.join(output_dir, PLOT_FILES[key])
        fig.savefig(path, dpi=100)
        written.append(path)

    if result.history:
        title = f"{result.model.name}: {len(result.class_names)} classes"
        save(plots.plot_training_curves(result.history, fine_tune_start=result.fine_tune_start, title=title), "curves")
    split = data.val if data.val is not None else data.train
    if result.confusion is not None:
        save(plots.plot_confusion_matrix(result.confusion, result.class_names, title="Validation"), "confusion")
        indices = training.grid_indices(len(result.val_labels))
        images = training.images_at(split, indices)
        # A direct call, not predict(): only the chief draws, so nothing here
        # may wait for the other workers of a multi-worker strategy.
        logits = np.asarray(result.model(images.astype("float32"), training=False), dtype=np.float64)
        probabilities = np.exp(logits - logits.max(-1, keepdims=True))
        probabilities /= probabilities.sum(-1, keepdims=True)
        predictions = probabilities.argmax(-1)
        save(
            plots.plot_prediction_grid(
                images, result.val_labels[indices], predictions, result.class_names,
                probabilities=probabilities[np.arange(len(indices)), predictions], title="Validation predictions",
            ),
            "predictions",
        )
    first_image = next(split.take(1).as_numpy_iterator())[0]
    save(plots.plot_feature_maps(result.model, first_image, layer=feature_map_layer), "feature_maps")
    return written


def run_experiment(config: ExperimentConfig, load: Callable[[ExperimentConfig], Any]) -> training.TrainResult:
    """Loads the data, trains both phases and writes every output of the run.

    Args:
        config: the experiment.
        load: returns the `ImageData` of `config` (one of `keras_transfer.data`'s loaders).
    """
    # MultiWorkerMirroredStrategy must exist before any other TensorFlow work.
    strategy = training.make_strategy(config.train.strategy)
    if config.overwrite:
        clear_outputs(config.output_dir)
    os.makedirs(config.output_dir, exist_ok=True)
    data = load(config)
    report = data.report
    print(
        f"Data ({report.source}): {len(data.class_names)} classes, "
        + ", ".join(f"{split} {n}" for split, n in report.used.items() if n)
        + f" images; {report.skipped} skipped, {report.ignored} ignored.",
        flush=True,
    )
    result = training.train(data, config.train, output_dir=config.output_dir, strategy=strategy,
                            run_info=config.run_info())
    if training.is_chief(strategy):
        save_plots(result, data, output_dir=result.output_dir, feature_map_layer=config.feature_map_layer)
    final = result.metrics["final"]
    summary = ", ".join(
        f"{split} accuracy {values['accuracy']:.3f} (loss {values['loss']:.3f})" for split, values in final.items()
    )
    print(f"Done in {result.metrics['wall_time_s']:.0f} s: {summary}.\nOutputs in {result.output_dir}", flush=True)
    return result


# Errors a user can fix from the command line: a message, no traceback.
USER_ERRORS = (
    _downloads.WeightsUnavailableError,
    _downloads.DatasetUnavailableError,
    training.ResumeMismatchError,
    FloatingPointError,
    FileNotFoundError,
    NotADirectoryError,
    ValueError,
)


def main(
    argv: Sequence[str] | None,
    *,
    parser: argparse.ArgumentParser,
    dataset: str,
    run: Callable[[ExperimentConfig], Any],
) -> int:
    """Parses `argv`, runs the experiment and returns the exit status."""
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args, dataset=dataset)
    except ValueError as error:
        parser.error(str(error))
    try:
        run(config)
    except USER_ERRORS as error:
        if os.environ.get("KERAS_TRANSFER_TRACEBACK"):
            traceback.print_exc()
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            f"\n{parser.prog}: interrupted. Run the same command again to continue from the last completed epoch.",
            file=sys.stderr,
        )
        return 130
    return 0
