"""Two-phase transfer learning on Keras' own engine.

Phase 1 ("head") trains the classifier's head on a frozen backbone. By
default it takes the fast path of keras.io's transfer-learning guide: the
backbone's pooled features are computed once and the head (the classifier's
own `dropout` and `logits` layers, see `keras_transfer.models.head`) is fitted
on them, so nothing has to be copied back. Phase 2 ("fine_tune") unfreezes the
top of the backbone and fits the whole classifier at a lower learning rate.
Both phases share one epoch axis: phase 2 is `fit(initial_epoch=<epochs done>)`.

Everything else is Keras and TensorFlow: `model.fit` (with `jit_compile`),
`keras.mixed_precision` policies, `tf.distribute` strategies, and the
`TensorBoard`, `BackupAndRestore`, `EarlyStopping` and `TerminateOnNaN`
callbacks. With an `output_dir`, `train` writes TensorBoard logs, resume state,
`model.keras`, `classes.json` and `metrics.json`, and running it again with
the same `output_dir` continues from the last completed epoch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from keras_transfer import _multi_worker
from keras_transfer import backbones as backbones_lib
from keras_transfer import data as data_lib
from keras_transfer import models as models_lib
from keras_transfer import probe as probe_lib
from keras_transfer.layers import build_augmentation

MIXED_PRECISION_CHOICES = ("off", "auto", "mixed_float16", "mixed_bfloat16")
STRATEGY_CHOICES = ("default", "mirrored", "multi_worker")
PHASES = ("head", "fine_tune")

MODEL_FILE = "model.keras"
CLASSES_FILE = "classes.json"
METRICS_FILE = "metrics.json"
TENSORBOARD_DIR = "tensorboard"
STATE_DIR = "state"

_RUN_STATE = "run.json"
_FEATURES = "features.npz"
_INITIAL_WEIGHTS = "initial.weights.h5"
_HEAD_WEIGHTS = "head.weights.h5"
# Fields that may change between an interrupted run and its resumption.
DEFAULT_CACHED_HEAD_EPOCHS = 100
DEFAULT_HEAD_EPOCHS = 10
_NOT_FINGERPRINTED = ("verbose", "strategy", "jit_compile", "tensorboard_images_every")


@dataclasses.dataclass
class TrainConfig:
    """Hyper-parameters of a two-phase training run.

    Attributes:
        backbone: registry name of the backbone. Defaults to `"mobilenet_v2"`.
        alpha: width multiplier of MobileNet families. Defaults to `None`
            (the family default).
        weights: `"imagenet"`, a path to backbone weights, or `None` (random
            initialization). Defaults to `"imagenet"`.
        pooling: `"avg"` or `"max"`. Defaults to `"avg"`.
        dropout: dropout rate before the logits. Defaults to `0.0` (the
            head is regularized by `head_l2`).
        standardize_features: standardize the pooled features with their
            training-set mean and standard deviation (a layer of the model,
            set before phase 1). Defaults to `True`.
        head_l2: L2 penalty of the logits kernel on the scale of
            scikit-learn's `1 / C`: the loss gets
            `head_l2 * ||W||^2 / (2 * n_train)`, so with standardized
            features the head minimizes the linear probe's objective.
            0 disables it. Defaults to `1.0`.
        augment: random flip/rotation/zoom/contrast while training. It acts
            in fine-tuning and in an uncached head phase; a head on cached
            features (computed once) gets only its flip, see
            `flip_features`. Defaults to `True`.
        flip_features: with `cache_features` and `augment`, phase 1 also
            trains on the features of the mirrored training images, computed
            once with the others: the random flip's share of augmentation, at
            the cost of a second extraction pass over the training set. The
            standardization statistics cover both views; `head_l2` stays per
            training image. Defaults to `True`.
        batch_size: global batch size (split across replicas). Defaults to
            `32`.
        epochs: epochs of phase 1 (head on the frozen backbone). `None`
            means 100 with `cache_features` (an epoch on cached features
            takes milliseconds, and the head needs about that many to reach
            the linear probe's accuracy) and 10 without. Defaults to `None`.
        fine_tune_epochs: epochs of phase 2; 0 skips it. Defaults to `10`.
        fine_tune_at: where fine-tuning starts in the backbone: an int `>= 0`
            is the index of the first trainable backbone layer (the TensorFlow
            tutorial's `fine_tune_at`), a negative int `-n` the top `n`
            layers, a string a layer name or `"all"`; `None` means the top
            third of the backbone's layers. Defaults to `None`.
        learning_rate: Adam learning rate of phase 1. Defaults to `1e-3`.
        fine_tune_learning_rate: Adam learning rate of phase 2. Defaults to
            `None` (`learning_rate / 100`, as in keras.io's guide).
        train_batchnorm: also train the BatchNormalization scale and offset
            of the unfrozen layers (their moving statistics never change).
            Defaults to `False`.
        cache_features: train phase 1 on backbone features computed once.
            Defaults to `True`.
        linear_probe: also fit a scikit-learn logistic regression on the
            frozen features of the same split (`keras_transfer.probe`), the
            reference a transfer-learning run should match; reported under
            `metrics["linear_probe"]`. Needs scikit-learn. Defaults to
            `False`.
        mixed_precision: `"off"`, `"auto"` (`mixed_float16` on GPU,
            `mixed_bfloat16` on CPU), `"mixed_float16"` or `"mixed_bfloat16"`.
            Logits stay float32. Defaults to `"off"`.
        jit_compile: compile the train step with XLA. Defaults to `False`.
        strategy: `"default"` (one device), `"mirrored"` (all local GPUs, or
            all logical CPUs when there is no GPU) or `"multi_worker"`
            (`MultiWorkerMirroredStrategy`, configured by `TF_CONFIG`).
            Defaults to `"default"`.
        early_stopping_patience: stop a phase when the validation loss has
            not improved for this many epochs, keeping the best weights;
            `None` disables it. Defaults to `None`.
        tensorboard_images_every: write the confusion matrix and prediction
            grid every this many epochs; 0 disables them. Defaults to `1`.
        seed: seed of initialization, shuffling, dropout and augmentation.
            Defaults to `0`.
        verbose: Keras `fit` verbosity: 0 silent, 1 progress bar, 2 one line
            per epoch. Defaults to `1`.
    """

    backbone: str = "mobilenet_v2"
    alpha: float | None = None
    weights: str | None = "imagenet"
    pooling: str = "avg"
    dropout: float = 0.0
    standardize_features: bool = True
    head_l2: float = 1.0
    augment: bool = True
    flip_features: bool = True
    batch_size: int = 32
    epochs: int | None = None
    fine_tune_epochs: int = 10
    fine_tune_at: int | str | None = None
    learning_rate: float = 1e-3
    fine_tune_learning_rate: float | None = None
    train_batchnorm: bool = False
    cache_features: bool = True
    linear_probe: bool = False
    mixed_precision: str = "off"
    jit_compile: bool = False
    strategy: str = "default"
    early_stopping_patience: int | None = None
    tensorboard_images_every: int = 1
    seed: int = 0
    verbose: int = 1

    def __post_init__(self):
        backbones_lib.get_backbone_spec(self.backbone)
        if self.epochs is None:
            self.epochs = DEFAULT_CACHED_HEAD_EPOCHS if self.cache_features else DEFAULT_HEAD_EPOCHS
        if self.weights is not None and not isinstance(self.weights, str):
            self.weights = os.fspath(self.weights)
        for name in ("batch_size",):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Expected {name} to be an int >= 1. Received: {name}={value!r}")
        for name in ("epochs", "fine_tune_epochs", "tensorboard_images_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"Expected {name} to be an int >= 0. Received: {name}={value!r}")
        if self.epochs + self.fine_tune_epochs == 0:
            raise ValueError("Expected epochs + fine_tune_epochs > 0. Received: epochs=0, fine_tune_epochs=0")
        for name in ("learning_rate", "fine_tune_learning_rate"):
            value = getattr(self, name)
            if value is None and name == "fine_tune_learning_rate":
                continue
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                raise ValueError(f"Expected {name} > 0. Received: {name}={value!r}")
        if self.mixed_precision not in MIXED_PRECISION_CHOICES:
            raise ValueError(
                f"Expected mixed_precision in {MIXED_PRECISION_CHOICES}. "
                f"Received: mixed_precision={self.mixed_precision!r}"
            )
        if self.strategy not in STRATEGY_CHOICES:
            raise ValueError(f"Expected strategy in {STRATEGY_CHOICES}. Received: strategy={self.strategy!r}")
        if self.early_stopping_patience is not None and (
            isinstance(self.early_stopping_patience, bool)
            or not isinstance(self.early_stopping_patience, int)
            or self.early_stopping_patience < 1
        ):
            raise ValueError(
                "Expected early_stopping_patience to be None or an int >= 1. "
                f"Received: early_stopping_patience={self.early_stopping_patience!r}"
            )
        if isinstance(self.fine_tune_at, bool) or not isinstance(self.fine_tune_at, (int, str, type(None))):
            raise ValueError(
                "Expected fine_tune_at to be an int, a layer name or None. "
                f"Received: fine_tune_at={self.fine_tune_at!r}"
            )
        if self.pooling not in ("avg", "max"):
            raise ValueError(f"Expected pooling in ('avg', 'max'). Received: pooling={self.pooling!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"Expected 0 <= dropout < 1. Received: dropout={self.dropout!r}")
        if isinstance(self.head_l2, bool) or not isinstance(self.head_l2, (int, float)) or not self.head_l2 >= 0:
            raise ValueError(f"Expected head_l2 >= 0. Received: head_l2={self.head_l2!r}")
        if self.verbose not in (0, 1, 2):
            raise ValueError(f"Expected verbose in (0, 1, 2). Received: verbose={self.verbose!r}")

    @property
    def resolved_fine_tune_learning_rate(self) -> float:
        if self.fine_tune_learning_rate is not None:
            return float(self.fine_tune_learning_rate)
        return float(self.learning_rate) / 100.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class TrainResult:
    """What `train` returns.

    Attributes:
        model: the trained classifier (RGB [0, 255] -> float32 logits).
        class_names: the class names, in label order.
        history: `{phase: {"epoch": [...], "loss": [...], "accuracy": [...],
            "val_loss": [...], "val_accuracy": [...], "learning_rate": [...]}}`
            with 0-based epochs on one axis for both phases.
        fine_tune_start: the first epoch of phase 2, or `None` without it.
        metrics: the content of `metrics.json`.
        val_labels: validation labels, or `None` without a validation split.
        val_predictions: predicted validation classes, or `None`.
        confusion: validation confusion matrix (rows: true, columns:
            predicted), or `None`.
        output_dir: the folder written, or `None`.
    """

    model: keras.Model
    class_names: tuple[str, ...]
    history: dict[str, dict[str, list[float]]]
    fine_tune_start: int | None
    metrics: dict[str, Any]
    val_labels: np.ndarray | None = None
    val_predictions: np.ndarray | None = None
    confusion: np.ndarray | None = None
    output_dir: str | None = None


class ResumeMismatchError(ValueError):
    """The output folder holds an unfinished run with a different configuration."""


# ---------------------------------------------------------------------------
# Mixed precision and distribution.


def resolve_mixed_precision(mode: str) -> str | None:
    """The dtype policy name for a `TrainConfig.mixed_precision` value (None: float32)."""
    if mode not in MIXED_PRECISION_CHOICES:
        raise ValueError(f"Expected mixed_precision in {MIXED_PRECISION_CHOICES}. Received: mixed_precision={mode!r}")
    if mode == "off":
        return None
    if mode == "auto":
        # float16 needs loss scaling but is what GPUs accelerate; CPUs only
        # gain (if at all) from bfloat16, which has float32's range.
        return "mixed_float16" if tf.config.list_logical_devices("GPU") else "mixed_bfloat16"
    return mode


@contextlib.contextmanager
def dtype_policy(name: str | None) -> Iterator[None]:
    """Sets Keras' global dtype policy inside the block and restores it after."""
    previous = keras.mixed_precision.global_policy()
    if name is not None:
        keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def make_strategy(name: str = "default") -> tf.distribute.Strategy:
    """A `tf.distribute` strategy by name.

    `"mirrored"` replicates on every local GPU, or on every logical CPU device
    when there is no GPU (configure several with
    `tf.config.set_logical_device_configuration` before TensorFlow starts).
    `"multi_worker"` reads the cluster from the `TF_CONFIG` environment
    variable; create it at the start of the program, before other
    TensorFlow work, and run the same command on every worker.

    Args:
        name: `"default"`, `"mirrored"` or `"multi_worker"`. Defaults to
            `"default"`.
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
        return tf.distribute.MirroredStrategy(devices=devices)
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"Expected strategy in {STRATEGY_CHOICES}. Received: strategy={name!r}")


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run's outputs (always, except non-chief workers)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    task_type = getattr(resolver, "task_type", None)
    if resolver is None or task_type is None or task_type == "chief":
        return True
    cluster = resolver.cluster_spec().as_dict()
    return task_type == "worker" and resolver.task_id == 0 and "chief" not in cluster


def _worker_dir(output_dir: str, strategy: tf.distribute.Strategy) -> str:
    if is_chief(strategy):
        return output_dir
    # Non-chief workers keep their own resume state so that every worker
    # restores the same epoch after a restart; the chief writes the outputs.
    resolver = strategy.cluster_resolver
    return os.path.join(output_dir, ".workers", f"{resolver.task_type}_{resolver.task_id}")


# ---------------------------------------------------------------------------
# Small helpers.


def confusion_matrix(labels: Sequence[int], predictions: Sequence[int], num_classes: int) -> np.ndarray:
    """Counts `[num_classes, num_classes]`: rows are true classes, columns predictions."""
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    predictions = np.asarray(predictions, dtype=np.int64).reshape(-1)
    if labels.shape != predictions.shape:
        raise ValueError(f"Expected as many labels as predictions. Received: {labels.shape} and {predictions.shape}")
    for name, values in (("labels", labels), ("predictions", predictions)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(
                f"Expected {name} in [0, {num_classes}). Received values from {values.min()} to {values.max()}"
            )
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(counts, (labels, predictions), 1)
    return counts


def per_class_accuracy(confusion: np.ndarray, class_names: Sequence[str]) -> dict[str, float | None]:
    """Recall of every class (`None` for a class absent from the labels)."""
    totals = confusion.sum(axis=1)
    return {
        name: (float(confusion[i, i] / totals[i]) if totals[i] else None) for i, name in enumerate(class_names)
    }


def labels_of(ds: tf.data.Dataset) -> np.ndarray:
    """The labels of an unbatched `(image, label)` dataset, in order."""
    parts = [np.asarray(y) for y in ds.map(lambda x, y: y).batch(8192).as_numpy_iterator()]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros((0,), np.int64)


def grid_indices(size: int, count: int = 16) -> np.ndarray:
    """`count` positions spread evenly over a split of `size` examples.

    Splits are ordered by class, so the first images would all be of one class.
    """
    if size == 0:
        return np.zeros(0, np.int64)
    return np.unique(np.linspace(0, size - 1, min(count, size)).round().astype(np.int64))


def images_at(ds: tf.data.Dataset, indices: Sequence[int]) -> np.ndarray:
    """The images at `indices` of an unbatched `(image, label)` dataset."""
    wanted = {int(i): None for i in indices}
    last = max(wanted) if wanted else -1
    for position, (image, _) in enumerate(ds.take(last + 1).as_numpy_iterator()):
        if position in wanted:
            wanted[position] = image
    return np.stack([wanted[int(i)] for i in indices])


def _distribution_options(ds: tf.data.Dataset) -> tf.data.Dataset:
    # Our datasets come from memory, not files: shard by element across workers.
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options)


def _image_batches(ds: tf.data.Dataset, *, batch_size: int, shuffle: bool = False, seed: int | None = None):
    batches = data_lib.batch_dataset(ds, batch_size=batch_size, shuffle=shuffle, seed=seed)
    # The model casts too, but uint8 batches on the host stay 4x smaller.
    batches = batches.map(lambda x, y: (tf.cast(x, tf.float32), y), num_parallel_calls=tf.data.AUTOTUNE)
    return _distribution_options(batches)


def _feature_batches(features: np.ndarray, labels: np.ndarray, *, batch_size: int, shuffle: bool, seed: int):
    ds = tf.data.Dataset.from_tensor_slices((features, labels.astype(np.int32)))
    if shuffle:
        ds = ds.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
    return _distribution_options(ds.batch(batch_size).prefetch(tf.data.AUTOTUNE))


def _compile(model: keras.Model, *, learning_rate: float, jit_compile: bool) -> None:
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        jit_compile=jit_compile,
    )


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _write_json(path: str, value: Any) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=1, default=str)
    os.replace(tmp, path)  # atomic: an interruption never leaves half a file


def _read_json(path: str) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _say(config: TrainConfig, message: str) -> None:
    if config.verbose:
        print(message, flush=True)


def _unfreeze(model: keras.Model, fine_tune_at: int | str | None, *, train_batchnorm: bool) -> int:
    backbone = models_lib.get_backbone(model)
    layers = backbone.layers
    if fine_tune_at is None:
        count = models_lib.unfreeze_backbone(model, top_n=max(1, len(layers) // 3), train_batchnorm=train_batchnorm)
    elif fine_tune_at == "all":
        count = models_lib.unfreeze_backbone(model, train_batchnorm=train_batchnorm)
    elif isinstance(fine_tune_at, str):
        count = models_lib.unfreeze_backbone(model, from_layer=fine_tune_at, train_batchnorm=train_batchnorm)
    elif fine_tune_at < 0:
        count = models_lib.unfreeze_backbone(model, top_n=-fine_tune_at, train_batchnorm=train_batchnorm)
    else:
        if fine_tune_at >= len(layers):
            raise ValueError(
                f"fine_tune_at is a layer index; backbone {backbone.name!r} has {len(layers)} layers. "
                f"Received: fine_tune_at={fine_tune_at}"
            )
        count = models_lib.unfreeze_backbone(
            model, from_layer=layers[fine_tune_at].name, train_batchnorm=train_batchnorm
        )
    if count == 0:
        raise ValueError(
            f"fine_tune_at={fine_tune_at!r} leaves no trainable backbone layer with weights "
            f"(BatchNormalization stays frozen unless train_batchnorm=True); choose an earlier layer."
        )
    return count


# ---------------------------------------------------------------------------
# Callbacks.


class EpochRecorder(keras.callbacks.Callback):
    """Records every epoch's logs and learning rate, keyed by epoch.

    A repeated epoch (after a resumption) overwrites its earlier record, so
    the history holds each epoch once. With a `path` the records are saved
    after every epoch.
    """

    def __init__(self, records: dict[int, dict[str, float]] | None = None, *, path: str | None = None):
        super().__init__()
        self.records = records if records is not None else {}
        self.path = path

    def on_epoch_end(self, epoch, logs=None):
        entry = {}
        for key, value in (logs or {}).items():
            try:
                entry[key] = float(np.asarray(value))
            except (TypeError, ValueError):
                continue
        entry["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        self.records[int(epoch)] = entry
        if self.path:
            _write_json(self.path, {str(k): v for k, v in sorted(self.records.items())})


class ValidationImages(keras.callbacks.Callback):
    """Writes a confusion matrix and a grid of labelled validation images to TensorBoard.

    Args:
        log_dir: the TensorBoard run folder the images go to.
        predict: returns the validation logits, in the order of `labels`.
        labels: the validation labels.
        grid_indices: positions in the validation split of the grid's images.
        images: those images.
        class_names: the class names.
        every: write every this many epochs. Defaults to `1`.
    """

    def __init__(
        self,
        log_dir: str,
        *,
        predict: Callable[[], np.ndarray],
        labels: np.ndarray,
        grid_indices: Sequence[int],
        images: np.ndarray,
        class_names: Sequence[str],
        every: int = 1,
    ):
        super().__init__()
        self.log_dir = log_dir
        self.predict = predict
        self.labels = np.asarray(labels)
        self.grid_indices = np.asarray(grid_indices, dtype=np.int64)
        self.images = np.asarray(images)
        if len(self.images) != len(self.grid_indices):
            raise ValueError(
                f"Expected one image per grid index. Received: {len(self.images)} images, "
                f"{len(self.grid_indices)} indices"
            )
        self.class_names = list(class_names)
        self.every = every
        self._writer = None

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every:
            return
        from keras_transfer.plotting import training as plots

        logits = np.asarray(self.predict(), dtype=np.float32)
        predictions = logits.argmax(axis=-1)
        probabilities = _softmax(logits)
        confusion = confusion_matrix(self.labels, predictions, len(self.class_names))
        at = self.grid_indices
        cm_fig = plots.plot_confusion_matrix(confusion, self.class_names, title=f"Validation, epoch {epoch + 1}")
        grid_fig = plots.plot_prediction_grid(
            self.images,
            self.labels[at],
            predictions[at],
            self.class_names,
            probabilities=probabilities[at, predictions[at]],
            title=f"Validation predictions, epoch {epoch + 1}",
        )
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.log_dir)
        with self._writer.as_default():
            for tag, fig in (("confusion_matrix", cm_fig), ("predictions", grid_fig)):
                png = tf.image.decode_png(plots.figure_to_png(fig), channels=3)
                tf.summary.image(tag, png[None], step=epoch)
        self._writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=-1, keepdims=True)


def write_hparams(log_dir: str, hparams: Mapping[str, Any], *, trial_id: str | None = None) -> None:
    """Writes a run's hyper-parameters for TensorBoard's HParams dashboard.

    The dashboard's metrics are the Keras TensorBoard callback's epoch
    scalars of the `train` and `validation` runs.
    """
    try:
        from tensorboard.plugins.hparams import api as hp
    except ImportError as error:
        raise ImportError(
            "Logging hyper-parameters to TensorBoard needs the `tensorboard` package (pip install tensorboard)."
        ) from error

    values = {
        str(k): (v if isinstance(v, (bool, int, float, str)) else str(v)) for k, v in hparams.items()
    }
    metrics = [
        hp.Metric(f"epoch_{name}", group=group, display_name=f"{group} {name}")
        for group in ("validation", "train")
        for name in ("accuracy", "loss")
    ]
    writer = tf.summary.create_file_writer(log_dir)
    with writer.as_default():
        hp.hparams_config(hparams=[hp.HParam(k) for k in values], metrics=metrics)
        hp.hparams(values, trial_id=trial_id)
    writer.close()


# ---------------------------------------------------------------------------
# The run.


@dataclasses.dataclass
class _Paths:
    root: str

    def __post_init__(self):
        self.state = os.path.join(self.root, STATE_DIR)
        self.tensorboard = os.path.join(self.root, TENSORBOARD_DIR)
        os.makedirs(self.state, exist_ok=True)

    def state_file(self, name: str) -> str:
        return os.path.join(self.state, name)

    def history(self, phase: str) -> str:
        return self.state_file(f"history_{phase}.json")

    def backup(self, phase: str) -> str:
        return self.state_file(f"backup_{phase}")


def _fingerprint(config: TrainConfig, data) -> dict[str, Any]:
    train_config = {k: v for k, v in config.to_dict().items() if k not in _NOT_FINGERPRINTED}
    data_info = {
        "class_names": list(data.class_names),
        "image_size": int(data.image_size),
        "source": data.report.source,
        "used": dict(data.report.used),
    }
    return _jsonable({"train": train_config, "data": data_info})


def _check_fingerprint(saved: Mapping[str, Any], current: Mapping[str, Any], root: str, *, complete: bool) -> None:
    if saved == current:
        return
    differences = []
    for section in ("train", "data"):
        a, b = saved.get(section, {}), current.get(section, {})
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                differences.append(f"{section}.{key}: saved {a.get(key)!r}, now {b.get(key)!r}")
    what = "a finished run" if complete else "an unfinished run"
    raise ResumeMismatchError(
        f"{root!r} holds {what} with a different configuration, so it cannot be resumed:\n  "
        + "\n  ".join(differences)
        + "\nUse another output folder, or start over in this one (command line: --overwrite)."
    )


def _history_from_records(records: Mapping[int, Mapping[str, float]]) -> dict[str, list[float]]:
    epochs = sorted(records)
    keys: list[str] = []
    for epoch in epochs:
        keys.extend(k for k in records[epoch] if k not in keys)
    history: dict[str, list[float]] = {"epoch": [int(e) for e in epochs]}
    for key in keys:
        history[key] = [float(records[e].get(key, math.nan)) for e in epochs]
    return history


def _load_records(path: str | None) -> dict[int, dict[str, float]]:
    if path and os.path.isfile(path):
        return {int(k): v for k, v in _read_json(path).items()}
    return {}


def _check_not_nan(phase: str, records: Mapping[int, Mapping[str, float]], learning_rate: float) -> None:
    for epoch in sorted(records):
        loss = records[epoch].get("loss")
        if loss is not None and not math.isfinite(loss):
            raise FloatingPointError(
                f"The training loss became {loss} in epoch {epoch + 1} (phase {phase!r}); training stopped. "
                f"Try a lower learning rate (it was {learning_rate:g}) or mixed_precision='off'."
            )


def _evaluate(model: keras.Model, splits: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    results = {}
    for name, dataset in splits.items():
        if dataset is None:
            continue
        values = model.evaluate(dataset, verbose=0, return_dict=True)
        results[name] = {"loss": float(values["loss"]), "accuracy": float(values["accuracy"])}
    return results


def _extract_features(extractor: keras.Model, ds: tf.data.Dataset, batch_size: int) -> np.ndarray:
    features = extractor.predict(_image_batches(ds, batch_size=batch_size), verbose=0)
    return np.asarray(features, dtype=np.float32)


def _mirrored(ds: tf.data.Dataset) -> tf.data.Dataset:
    return ds.map(lambda image, label: (tf.image.flip_left_right(image), label))


def _linear_probe(cached: Mapping[str, np.ndarray], config: TrainConfig) -> dict[str, Any] | None:
    """Logistic regression on the frozen features of the run's own split."""
    if "val_x" not in cached:
        return None
    _say(config, "Linear probe: scikit-learn logistic regression on the same frozen features.")
    result = probe_lib.linear_probe(cached["train_x"], cached["train_y"], cached["val_x"], cached["val_y"])
    _say(config, f"Linear probe: validation accuracy {result.val_accuracy:.4f}.")
    return result.to_dict()


def _fit_callbacks(
    *,
    config: TrainConfig,
    phase: str,
    paths: _Paths | None,
    recorder: EpochRecorder,
    image_callback: ValidationImages | None,
    has_val: bool,
    extra: Sequence[keras.callbacks.Callback],
) -> list[keras.callbacks.Callback]:
    # Order matters at the end of an epoch: the records, TensorBoard and
    # images are written before BackupAndRestore marks the epoch as done.
    callbacks: list[keras.callbacks.Callback] = [recorder, keras.callbacks.TerminateOnNaN()]
    if paths is not None:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=paths.tensorboard, write_graph=False))
        if image_callback is not None:
            callbacks.append(image_callback)
    if config.early_stopping_patience:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor="val_loss" if has_val else "loss",
                patience=config.early_stopping_patience,
                restore_best_weights=True,
            )
        )
    if paths is not None:
        callbacks.append(keras.callbacks.BackupAndRestore(paths.backup(phase), delete_checkpoint=False))
    callbacks.extend(extra)
    return callbacks


def train(
    data: data_lib.ImageData,
    config: TrainConfig | None = None,
    *,
    output_dir: str | os.PathLike | None = None,
    strategy: tf.distribute.Strategy | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    run_info: Mapping[str, Any] | None = None,
) -> TrainResult:
    """Trains a classifier in two phases: the head, then the top of the backbone.

    With `output_dir`, writes `tensorboard/` (loss, accuracy and learning rate
    of both phases on one epoch axis, a validation confusion matrix and
    prediction grid per epoch, the hyper-parameters), `state/` (what a
    resumption needs), and at the end `model.keras`, `classes.json` and
    `metrics.json`. Calling `train` again with the same `output_dir` and
    configuration continues from the last completed epoch; a completed run
    is loaded and evaluated again, not retrained.

    Args:
        data: the data, e.g. from `keras_transfer.data.load_folder`.
        config: the hyper-parameters. Defaults to `TrainConfig()`.
        output_dir: folder for logs, resume state and results; `None` writes
            nothing. Defaults to `None`.
        strategy: a `tf.distribute` strategy that overrides
            `config.strategy`. Defaults to `None`.
        callbacks: extra Keras callbacks for both phases' `fit`. Defaults to
            `()`.
        run_info: extra JSON-serializable configuration (e.g. the data
            options) stored under `metrics["config"]`. Defaults to `None`.

    Returns:
        A `TrainResult`.

    Raises:
        ResumeMismatchError: `output_dir` holds a run with another
            configuration.
        FloatingPointError: the loss became NaN or infinite.
        keras_transfer.WeightsUnavailableError: the ImageNet weights are not
            available offline.
    """
    config = config or TrainConfig()
    started = time.perf_counter()
    strategy = strategy or make_strategy(config.strategy)
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        _multi_worker.install()  # Keras 3's fit fails there without it (keras-team/keras#20585)
    policy = resolve_mixed_precision(config.mixed_precision)
    class_names = tuple(data.class_names)
    num_classes = len(class_names)
    if num_classes < 2:
        raise ValueError(f"Expected at least 2 classes. Received: class_names={list(class_names)}")
    if data.val is not None and len(data.val) == 0:
        data = dataclasses.replace(data, val=None)

    paths = None
    state: dict[str, Any] = {}
    fingerprint = _fingerprint(config, data)
    if output_dir is not None:
        paths = _Paths(_worker_dir(os.fspath(output_dir), strategy))
        state_path = paths.state_file(_RUN_STATE)
        if os.path.isfile(state_path):
            state = _read_json(state_path)
            _check_fingerprint(
                state.get("fingerprint", {}), fingerprint, paths.root, complete=bool(state.get("complete"))
            )
            if state.get("complete") and not os.path.isfile(os.path.join(paths.root, MODEL_FILE)):
                # The finished run's model was deleted: nothing left to resume from.
                _say(config, f"{paths.root} holds a finished run without its {MODEL_FILE}; training again.")
                shutil.rmtree(paths.state)
                paths = _Paths(paths.root)
                state = {}
        if not state:
            state = {"fingerprint": fingerprint, "phases": {}}
    phase_state: dict[str, dict[str, Any]] = state.setdefault("phases", {}) if paths else {}

    def save_state() -> None:
        if paths is not None:
            _write_json(paths.state_file(_RUN_STATE), state)

    already_complete = bool(state.get("complete"))
    resumed_from = {p: len(_load_records(paths.history(p))) for p in PHASES} if paths and not already_complete else {}

    train_batches = _image_batches(data.train, batch_size=config.batch_size, shuffle=True, seed=config.seed)
    eval_splits = {
        name: (_image_batches(ds, batch_size=config.batch_size) if ds is not None else None)
        for name, ds in (("train", data.train), ("val", data.val), ("test", data.test))
    }
    val_labels = labels_of(data.val) if data.val is not None else None
    grid = grid_indices(len(val_labels)) if val_labels is not None else np.zeros(0, np.int64)
    grid_images = images_at(data.val, grid) if len(grid) else None
    timings: dict[str, float] = {}

    keras.utils.set_random_seed(config.seed)
    with dtype_policy(policy), strategy.scope():
        augmentation = build_augmentation(seed=config.seed) if config.augment else False
        model = models_lib.build_classifier(
            config.backbone,
            num_classes=num_classes,
            image_size=int(data.image_size),
            alpha=config.alpha,
            weights=config.weights,
            pooling=config.pooling,
            dropout=config.dropout,
            augmentation=augmentation,
            standardize_features=config.standardize_features,
            # scikit-learn's objective C * sum(CE) + ||W||^2 / 2, divided by C * n.
            head_l2=config.head_l2 / (2.0 * max(len(data.train), 1)),
        )

        if already_complete:
            _say(config, f"The run in {paths.root} is complete; loading its model and evaluating it again.")
            model.load_weights(os.path.join(paths.root, MODEL_FILE))
        elif paths is not None:
            initial = paths.state_file(_INITIAL_WEIGHTS)
            # The same starting weights on resumption, whatever the seed
            # behaviour of the backbone's initializers.
            if os.path.isfile(initial):
                model.load_weights(initial)
            else:
                model.save_weights(initial)
            if not state.get("hparams_written"):
                hparams = {**config.to_dict(), "image_size": int(data.image_size), "num_classes": num_classes}
                for key, value in (run_info or {}).items():
                    hparams.setdefault(key, value)
                write_hparams(paths.tensorboard, hparams, trial_id=os.path.basename(os.path.abspath(paths.root)))
                state["hparams_written"] = True
                save_state()

        # -------------------------------------------------------------- phase 1
        head_state = phase_state.setdefault("head", {})
        head_records = _load_records(paths.history("head") if paths else None)
        if already_complete:
            pass
        elif head_state.get("complete"):
            _say(config, f"Phase 1 (head) already done in {paths.root}: {head_state['epochs_done']} epochs.")
            model.load_weights(paths.state_file(_HEAD_WEIGHTS))
        elif config.epochs > 0:
            phase_started = time.perf_counter()
            recorder = EpochRecorder(head_records, path=paths.history("head") if paths else None)
            flip_views = config.cache_features and config.flip_features and config.augment
            if config.cache_features:
                features_path = paths.state_file(_FEATURES) if paths else None
                if features_path and os.path.isfile(features_path):
                    with np.load(features_path) as saved:
                        cached = {key: saved[key] for key in saved.files}
                    head_state["features_from_disk"] = True
                    _say(config, f"Phase 1: backbone features loaded from {features_path}.")
                else:
                    t0 = time.perf_counter()
                    splits = "train, val" if data.val is not None else "train"
                    views = " and the mirrored training images" if flip_views else ""
                    _say(config, f"Phase 1: computing backbone features once ({splits}{views}).")
                    extractor = models_lib.feature_extractor(model)
                    cached = {"train_x": _extract_features(extractor, data.train, config.batch_size),
                              "train_y": labels_of(data.train)}
                    if flip_views:
                        cached["train_flip_x"] = _extract_features(extractor, _mirrored(data.train), config.batch_size)
                    if data.val is not None:
                        cached["val_x"] = _extract_features(extractor, data.val, config.batch_size)
                        cached["val_y"] = val_labels
                    timings["feature_extraction_s"] = time.perf_counter() - t0
                    head_state["feature_extraction_s"] = timings["feature_extraction_s"]
                    if features_path:
                        np.savez(features_path, **cached)
                fit_x, fit_y = cached["train_x"], cached["train_y"]
                if flip_views:
                    fit_x = np.concatenate([fit_x, cached["train_flip_x"]])
                    fit_y = np.concatenate([fit_y, fit_y])
                models_lib.set_feature_statistics(model, fit_x)
                if config.linear_probe:
                    # The reference stays the plain probe: the images as they are.
                    head_state["linear_probe"] = _linear_probe(cached, config)
                head_model = models_lib.head(model)
                _compile(head_model, learning_rate=config.learning_rate, jit_compile=config.jit_compile)
                fit_train = _feature_batches(
                    fit_x, fit_y, batch_size=config.batch_size, shuffle=True, seed=config.seed
                )
                fit_val = None
                if "val_x" in cached:
                    fit_val = _feature_batches(
                        cached["val_x"], cached["val_y"], batch_size=config.batch_size, shuffle=False, seed=0
                    )
                fit_model = head_model
                predict_val = (lambda: head_model.predict(fit_val, verbose=0)) if fit_val is not None else None
                train_in_order = _feature_batches(
                    cached["train_x"], cached["train_y"], batch_size=config.batch_size, shuffle=False, seed=0
                )
                eval_head = {"train": train_in_order, "val": fit_val}
                what = "head on cached features"
            else:
                if config.standardize_features or (config.linear_probe and data.val is not None):
                    # One inference pass for the statistics (and the probe).
                    extractor = models_lib.feature_extractor(model)
                    probe_features = {
                        "train_x": _extract_features(extractor, data.train, config.batch_size),
                        "train_y": labels_of(data.train),
                    }
                    models_lib.set_feature_statistics(model, probe_features["train_x"])
                    if config.linear_probe and data.val is not None:
                        probe_features["val_x"] = _extract_features(extractor, data.val, config.batch_size)
                        probe_features["val_y"] = val_labels
                        head_state["linear_probe"] = _linear_probe(probe_features, config)
                _compile(model, learning_rate=config.learning_rate, jit_compile=config.jit_compile)
                fit_model, fit_train, fit_val = model, train_batches, eval_splits["val"]
                predict_val = (lambda: model.predict(eval_splits["val"], verbose=0)) if fit_val is not None else None
                eval_head = {"train": eval_splits["train"], "val": eval_splits["val"]}
                what = "head on the frozen backbone"
            image_callback = _image_callback(paths, config, predict_val, val_labels, grid, grid_images, class_names)
            fit_model._initial_epoch = None  # set by a BackupAndRestore of an earlier fit
            start = (max(head_records) + 1) if head_records else 0
            _say(
                config,
                f"Phase 1: {what}, epochs {start + 1}-{config.epochs} (learning rate {config.learning_rate:g}).",
            )
            fit_model.fit(
                fit_train,
                validation_data=fit_val,
                epochs=config.epochs,
                callbacks=_fit_callbacks(
                    config=config, phase="head", paths=paths, recorder=recorder, image_callback=image_callback,
                    has_val=fit_val is not None, extra=callbacks,
                ),
                shuffle=False,  # the datasets shuffle themselves, reproducibly
                verbose=config.verbose,
            )
            _check_not_nan("head", recorder.records, config.learning_rate)
            head_state.update(
                epochs_done=(max(recorder.records) + 1) if recorder.records else 0,
                cached_features=config.cache_features,
                mirrored_features=flip_views,
                final=_evaluate(fit_model, eval_head),
                wall_time_s=head_state.get("wall_time_s", 0.0) + time.perf_counter() - phase_started,
            )
            if paths is not None:
                model.save_weights(paths.state_file(_HEAD_WEIGHTS))
                head_state["complete"] = True
                save_state()
                shutil.rmtree(paths.backup("head"), ignore_errors=True)
                with contextlib.suppress(FileNotFoundError):
                    os.remove(paths.state_file(_FEATURES))
            head_records = recorder.records
        head_epochs = int(head_state.get("epochs_done", 0))

        # -------------------------------------------------------------- phase 2
        tune_state = phase_state.setdefault("fine_tune", {})
        tune_records = _load_records(paths.history("fine_tune") if paths else None)
        fine_tune_start = head_epochs if config.fine_tune_epochs > 0 else None
        if config.fine_tune_epochs > 0 and not already_complete:
            phase_started = time.perf_counter()
            lr = config.resolved_fine_tune_learning_rate
            trainable_layers = _unfreeze(model, config.fine_tune_at, train_batchnorm=config.train_batchnorm)
            _compile(model, learning_rate=lr, jit_compile=config.jit_compile)
            recorder = EpochRecorder(tune_records, path=paths.history("fine_tune") if paths else None)
            predict_val = (lambda: model.predict(eval_splits["val"], verbose=0)) if data.val is not None else None
            image_callback = _image_callback(paths, config, predict_val, val_labels, grid, grid_images, class_names)
            model._initial_epoch = None
            end = head_epochs + config.fine_tune_epochs
            start = (max(tune_records) + 1) if tune_records else head_epochs
            _say(
                config,
                f"Phase 2: fine-tuning {trainable_layers} backbone layers with weights, epochs {start + 1}-{end} "
                f"(learning rate {lr:g}).",
            )
            model.fit(
                train_batches,
                validation_data=eval_splits["val"],
                initial_epoch=head_epochs,
                epochs=end,
                callbacks=_fit_callbacks(
                    config=config, phase="fine_tune", paths=paths, recorder=recorder, image_callback=image_callback,
                    has_val=data.val is not None, extra=callbacks,
                ),
                shuffle=False,
                verbose=config.verbose,
            )
            _check_not_nan("fine_tune", recorder.records, lr)
            tune_state.update(
                epochs_done=len(recorder.records),
                trainable_backbone_layers=trainable_layers,
                learning_rate=lr,
                wall_time_s=tune_state.get("wall_time_s", 0.0) + time.perf_counter() - phase_started,
            )
            tune_records = recorder.records

        # ----------------------------------------------------------- evaluation
        if getattr(model, "optimizer", None) is None:
            _compile(model, learning_rate=config.learning_rate, jit_compile=False)
        t0 = time.perf_counter()
        final = _evaluate(model, eval_splits)
        if config.fine_tune_epochs > 0:
            tune_state["final"] = {k: v for k, v in final.items() if k in ("train", "val")}
        val_predictions = confusion = None
        per_class = None
        if data.val is not None:
            logits = model.predict(eval_splits["val"], verbose=0)
            val_predictions = np.asarray(logits).argmax(axis=-1)
            confusion = confusion_matrix(val_labels, val_predictions, num_classes)
            per_class = per_class_accuracy(confusion, class_names)
        test_per_class = None
        if data.test is not None:
            test_logits = model.predict(eval_splits["test"], verbose=0)
            test_confusion = confusion_matrix(labels_of(data.test), np.asarray(test_logits).argmax(-1), num_classes)
            test_per_class = per_class_accuracy(test_confusion, class_names)
        timings["final_evaluation_s"] = time.perf_counter() - t0

    history = {}
    if head_records:
        history["head"] = _history_from_records(head_records)
    if tune_records:
        history["fine_tune"] = _history_from_records(tune_records)
    phases_out = {}
    for phase, records in (("head", head_records), ("fine_tune", tune_records)):
        if not records and phase not in phase_state:
            continue
        info = {k: v for k, v in phase_state.get(phase, {}).items() if k != "complete"}
        if phase in history:
            info["history"] = history[phase]
        phases_out[phase] = info

    metrics = {
        "class_names": list(class_names),
        "phases": phases_out,
        "fine_tune_start_epoch": fine_tune_start,
        "final": final,
        "linear_probe": phase_state.get("head", {}).get("linear_probe"),
        "per_class_val_accuracy": per_class,
        "val_confusion_matrix": confusion.tolist() if confusion is not None else None,
        "per_class_test_accuracy": test_per_class,
        "data": data.report.to_dict(),
        "timings": timings,
        "wall_time_s": time.perf_counter() - started,
        # Epochs each phase had already completed when this call started.
        "resumed_at": {p: n for p, n in resumed_from.items() if n} or None,
        "re_evaluated_finished_run": already_complete,
        "mixed_precision_policy": policy or "float32",
        "replicas": int(strategy.num_replicas_in_sync),
        "config": {"train": config.to_dict(), **_jsonable(dict(run_info or {}))},
    }
    if paths is not None:
        state["complete"] = True
        state.setdefault("fingerprint", fingerprint)
        # So that load_model(compile=True) restores the optimizer instead of
        # warning about the variables of one that never took a step.
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        model.save(os.path.join(paths.root, MODEL_FILE))
        models_lib.save_class_names(class_names, os.path.join(paths.root, CLASSES_FILE))
        _write_json(os.path.join(paths.root, METRICS_FILE), _jsonable(metrics))
        save_state()
        # Only the small state files are kept; a re-run of a complete run loads model.keras.
        for name in (_INITIAL_WEIGHTS, _HEAD_WEIGHTS):
            with contextlib.suppress(FileNotFoundError):
                os.remove(paths.state_file(name))
        shutil.rmtree(paths.backup("fine_tune"), ignore_errors=True)
    return TrainResult(
        model=model,
        class_names=class_names,
        history=history,
        fine_tune_start=fine_tune_start,
        metrics=_jsonable(metrics),
        val_labels=val_labels,
        val_predictions=val_predictions,
        confusion=confusion,
        output_dir=paths.root if paths else None,
    )


def _image_callback(paths, config, predict_val, val_labels, grid, grid_images, class_names) -> ValidationImages | None:
    if paths is None or predict_val is None or not config.tensorboard_images_every or grid_images is None:
        return None
    return ValidationImages(
        os.path.join(paths.tensorboard, "validation"),
        predict=predict_val,
        labels=val_labels,
        grid_indices=grid,
        images=grid_images,
        class_names=class_names,
        every=config.tensorboard_images_every,
    )
