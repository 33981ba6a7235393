"""The phase loop both training phases share, and the head-on-features building blocks.

- `run_phase(plan, ...)`: one `Model.fit` on Keras' engine with the run's
  callbacks, resuming from the last completed epoch that the run folder
  holds (records and weights are committed together after every epoch).
- `extract_features` / `feature_batches` / `fit_head_on_features`: phase 1's
  fast path (keras.io's transfer-learning guide): the backbone's pooled
  features are computed once and the classifier's own head is fitted on
  them. Public, so that studies and later capabilities reuse them.
"""

from __future__ import annotations

import dataclasses
import math
import weakref
from collections.abc import Callable, Mapping, Sequence

import keras
import numpy as np
import tensorflow as tf

from keras_transfer import data as data_lib
from keras_transfer import models as models_lib
from keras_transfer.row_files import RowFile, read_rows, write_rows
from keras_transfer.run_folder import NoRunFolder, RunFolder


@dataclasses.dataclass(frozen=True)
class FitOptions:
    """How a phase runs (the same for both phases of a run)."""

    jit_compile: bool = False
    verbose: int = 1
    tensorboard_dir: str | None = None
    top_k: int | None = None  # also log top-k accuracy where there are more than k classes


SCHEDULES = ("constant", "cosine")


@keras.saving.register_keras_serializable(package="keras_transfer")
class SmoothedSparseCrossentropy(keras.losses.Loss):
    """Cross-entropy of logits against integer labels smoothed by `label_smoothing`.

    The target of class `k` is `(1 - s) * [k == y] + s / num_classes`, as
    `keras.losses.CategoricalCrossentropy(label_smoothing=s)` has it for
    one-hot labels; the labels stay integers, so the sparse accuracy metrics
    keep working. `s = 0` is the plain sparse cross-entropy.

    Args:
        label_smoothing: `s` in [0, 1). Defaults to `0.0`.
    """

    def __init__(self, label_smoothing: float = 0.0, name: str = "smoothed_sparse_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true, y_pred):
        log_p = keras.ops.log_softmax(keras.ops.cast(y_pred, "float32"), axis=-1)
        labels = keras.ops.cast(keras.ops.reshape(y_true, (-1, 1)), "int32")
        nll = -keras.ops.squeeze(keras.ops.take_along_axis(log_p, labels, axis=-1), axis=-1)
        return (1.0 - self.label_smoothing) * nll - self.label_smoothing * keras.ops.mean(log_p, axis=-1)

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


@dataclasses.dataclass(frozen=True)
class Optimization:
    """How a phase updates its weights: Adam (AdamW with weight decay), a schedule, the loss.

    Attributes:
        learning_rate: the (peak) learning rate.
        schedule: `"constant"`, or `"cosine"`: linear warmup from 0 over
            `warmup_epochs`, then cosine decay to 0 at the phase's last
            step. Defaults to `"constant"`.
        warmup_epochs: epochs of linear warmup (any schedule). Defaults to `0`.
        weight_decay: decoupled weight decay (AdamW, Loshchilov & Hutter
            2019); 0 is plain Adam. Defaults to `0.0`.
        label_smoothing: see `SmoothedSparseCrossentropy`. Defaults to `0.0`.
        ema_momentum: keep an exponential moving average of the weights with
            this momentum per step (Polyak averaging, Keras' `use_ema`); the
            phase validates and ends on the averaged weights. 0 is off.
            Defaults to `0.0`.
        rate_factors: a factor of the learning rate per variable path (see
            `LayerwiseAdam`); variables not named keep factor 1. Defaults to
            `None` (one rate).
    """

    learning_rate: float
    schedule: str = "constant"
    warmup_epochs: int = 0
    weight_decay: float = 0.0
    label_smoothing: float = 0.0
    ema_momentum: float = 0.0
    rate_factors: Mapping[str, float] | None = None

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ValueError(f"Expected schedule to be one of {SCHEDULES}. Received: schedule={self.schedule!r}")
        if not 0.0 <= self.ema_momentum < 1.0:
            raise ValueError(f"Expected ema_momentum to be in [0, 1). Received: ema_momentum={self.ema_momentum}")

    @property
    def scheduled(self) -> bool:
        """Whether the rate changes with the step (a schedule or a warmup)."""
        return self.schedule != "constant" or self.warmup_epochs > 0

    def rate(self, *, steps_per_epoch: int, epochs: int):
        """The learning rate: a number, or a schedule of the optimizer's step within the phase."""
        if not self.scheduled:
            return self.learning_rate
        warmup = min(self.warmup_epochs * steps_per_epoch, epochs * steps_per_epoch)
        total = epochs * steps_per_epoch
        if self.schedule == "constant":
            return WarmupThenConstant(self.learning_rate, warmup)
        return keras.optimizers.schedules.CosineDecay(
            0.0, decay_steps=max(total - warmup, 1), warmup_target=self.learning_rate, warmup_steps=warmup
        )

    def optimizer(self, *, steps_per_epoch: int, epochs: int) -> keras.optimizers.Optimizer:
        rate = self.rate(steps_per_epoch=steps_per_epoch, epochs=epochs)
        ema = {"use_ema": True, "ema_momentum": self.ema_momentum} if self.ema_momentum else {}
        if self.rate_factors:
            return LayerwiseAdam(rate, rate_factors=self.rate_factors, weight_decay=self.weight_decay or None, **ema)
        if self.weight_decay:
            return keras.optimizers.AdamW(rate, weight_decay=self.weight_decay, **ema)
        return keras.optimizers.Adam(rate, **ema)

    def loss(self) -> keras.losses.Loss:
        if self.label_smoothing:
            return SmoothedSparseCrossentropy(self.label_smoothing)
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


@keras.saving.register_keras_serializable(package="keras_transfer")
class LayerwiseAdam(keras.optimizers.Adam):
    """Adam (AdamW with `weight_decay`) whose learning rate has a factor per variable.

    Discriminative fine-tuning (Howard & Ruder 2018; "layer-wise learning
    rate decay" in BEiT and timm): lower layers of a pre-trained network
    hold more general features and move less. A factor scales the step of
    its variable; the decoupled weight decay keeps the phase's rate.

    Args:
        learning_rate: the rate (or schedule) of factor 1.
        rate_factors: `{variable.path: factor}`; other variables get 1.
        **kwargs: `keras.optimizers.Adam`'s (e.g. `weight_decay`, `use_ema`).
    """

    def __init__(self, learning_rate=0.001, *, rate_factors: Mapping[str, float] | None = None, **kwargs):
        super().__init__(learning_rate, **kwargs)
        self.rate_factors = {str(k): float(v) for k, v in (rate_factors or {}).items()}
        self._factors: list[float] = []

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._factors = [self.rate_factors.get(v.path, 1.0) for v in var_list]

    def update_step(self, gradient, variable, learning_rate):
        factor = self._factors[self._get_variable_index(variable)]  # a Python number: folded into the step
        super().update_step(gradient, variable, learning_rate if factor == 1.0 else learning_rate * factor)

    def get_config(self):
        return {**super().get_config(), "rate_factors": dict(self.rate_factors)}


@keras.saving.register_keras_serializable(package="keras_transfer")
class WarmupThenConstant(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup from 0 to `learning_rate` over `warmup_steps`, then constant."""

    def __init__(self, learning_rate: float, warmup_steps: int):
        self.learning_rate = float(learning_rate)
        self.warmup_steps = int(warmup_steps)

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        return self.learning_rate * keras.ops.minimum(1.0, step / float(max(self.warmup_steps, 1)))

    def get_config(self):
        return {"learning_rate": self.learning_rate, "warmup_steps": self.warmup_steps}


@dataclasses.dataclass(frozen=True)
class EarlyStop:
    """Stop a phase when `monitor` has not improved for `patience` epochs; end on its best epoch.

    Unlike `keras.callbacks.EarlyStopping`, the decision is a function of the
    committed epoch records, so it survives a resumption, and the phase's
    starting point competes too: with `baseline` (the monitored value of the
    weights the phase starts from), a phase that never beats it ends on the
    weights it started from.

    Attributes:
        patience: epochs without a lower `monitor` before stopping.
        monitor: the record to minimize. Defaults to `"val_loss"`.
        baseline: `monitor` of the starting weights, or `None`. Defaults to `None`.
    """

    patience: int
    monitor: str = "val_loss"
    baseline: float | None = None

    def best(self, records: Mapping[int, Mapping[str, float]]) -> int | None:
        """The best epoch so far; `None` for the starting weights (or no epoch yet)."""
        candidates = [(self.baseline, None)] if self.baseline is not None else []
        candidates += [(r[self.monitor], e) for e, r in sorted(records.items()) if self.monitor in r]
        finite = [c for c in candidates if math.isfinite(c[0])]
        return min(finite, key=lambda c: c[0])[1] if finite else None  # ties: the earlier

    def should_stop(self, records: Mapping[int, Mapping[str, float]], first_epoch: int) -> bool:
        if not records:
            return False
        best = self.best(records)
        since = max(records) - (first_epoch - 1 if best is None else best)
        return since >= self.patience


@dataclasses.dataclass(frozen=True, eq=False)
class EpochBatches:
    """Training batches shuffled again every epoch, each epoch's draw a function of the seed and the epoch.

    A phase fits on `epochs(first, end)`, its epochs in a row, so a run
    resumed at epoch k draws for epochs k, k+1, ... what an uninterrupted run
    drew: a dataset that reshuffles itself draws every new iterator's order
    from a generator that starts again with the process, and Keras makes one
    or two iterators an epoch.

    Attributes:
        of_epoch: an epoch's batches, for the epoch as an int64 scalar tensor.
        steps: batches an epoch.
    """

    of_epoch: Callable[[tf.Tensor], tf.data.Dataset]
    steps: int

    def epochs(self, first: int, end: int) -> tf.data.Dataset:
        """The batches of epochs `first` to `end - 1` of the run, in a row."""
        ds = tf.data.Dataset.range(first, end).flat_map(self.of_epoch)
        ds = ds.apply(tf.data.experimental.assert_cardinality(max(end - first, 0) * self.steps))
        return distribution_options(ds.prefetch(tf.data.AUTOTUNE))


def _epoch_seeds(seed: int | None) -> Callable[[tf.Tensor], tf.Tensor]:
    """The shuffle seed of each epoch (an int64 tensor); `seed=None` draws the run's base seed now."""
    base = int(np.random.default_rng().integers(2**31)) if seed is None else int(seed)
    return lambda epoch: tf.constant(base, tf.int64) * 1_000_003 + epoch


def _shuffled(ds: tf.data.Dataset, buffer: int, seed: tf.Tensor) -> tf.data.Dataset:
    """`ds.shuffle(buffer, seed=seed)` for a seed tensor, inside a dataset function.

    TensorFlow pairs the op seed with the global one, then compares the pair
    with (0, 0) in Python, which fails on a tensor when the global seed is 0
    (`keras.utils.set_random_seed(0)`): the function's graph leaves the global
    seed out, so the order depends on `seed` alone.
    """
    graph = tf.compat.v1.get_default_graph()
    global_seed, graph.seed = graph.seed, None
    try:
        return ds.shuffle(buffer, seed=seed)
    finally:
        graph.seed = global_seed


def _count(ds: tf.data.Dataset) -> int:
    n = int(ds.cardinality())
    return n if n >= 0 else int(ds.reduce(0, lambda count, _: count + 1))


@dataclasses.dataclass(frozen=True, eq=False)
class PhasePlan:
    """One phase: what to fit, on what, for which epochs of the run's epoch axis.

    Attributes:
        name: `"head"` or `"fine_tune"` (names its files in the run folder).
        model: the model `fit` trains (the classifier, or its head).
        train: the training batches: `EpochBatches`, or a batched dataset
            (which shuffles itself, if at all).
        val: batched validation dataset, or `None`.
        first_epoch: the phase's first epoch on the run's axis.
        epochs: epochs of the phase.
        optimization: optimizer, schedule and loss.
        early_stop: when to stop before `epochs`, ending on the best epoch;
            `None` runs every epoch and ends on the last.
    """

    name: str
    model: keras.Model
    train: EpochBatches | tf.data.Dataset
    val: tf.data.Dataset | None
    first_epoch: int
    epochs: int
    optimization: Optimization
    early_stop: EarlyStop | None = None

    @property
    def end_epoch(self) -> int:
        return self.first_epoch + self.epochs

    def compile(self, *, jit_compile: bool = False, top_k: int | None = None) -> None:
        """Compiles `model` with the phase's optimizer (its schedule spans the phase's steps) and loss."""
        steps = self.train.steps if isinstance(self.train, EpochBatches) else int(self.train.cardinality())
        if steps < 0 and self.optimization.scheduled:
            raise ValueError("A learning-rate schedule needs a training dataset of known length. "
                             f"Received: cardinality {steps}")
        optimizer = self.optimization.optimizer(steps_per_epoch=max(steps, 1), epochs=self.epochs)
        compile_classifier(self.model, optimizer=optimizer, loss=self.optimization.loss(), jit_compile=jit_compile,
                           top_k=top_k)


def compile_classifier(
    model: keras.Model,
    *,
    optimizer: keras.optimizers.Optimizer | None = None,
    loss: keras.losses.Loss | None = None,
    jit_compile: bool = False,
    top_k: int | None = None,
) -> None:
    """Compiles for logits and integer labels: accuracy, and top-k accuracy where there are more than k classes.

    Args:
        model: the classifier (or its head).
        optimizer: the optimizer. Defaults to `Adam(1e-3)`.
        loss: the loss. Defaults to sparse cross-entropy on logits.
        jit_compile: compile the step with XLA. Defaults to `False`.
        top_k: also report top-k accuracy. Defaults to `None`.
    """
    metrics = [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
    if top_k is not None and top_k < int(model.outputs[0].shape[-1]):
        metrics.append(keras.metrics.SparseTopKCategoricalAccuracy(k=top_k, name=f"top{top_k}_accuracy"))
    model.compile(
        optimizer=optimizer or keras.optimizers.Adam(1e-3),
        loss=loss or keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=metrics,
        jit_compile=jit_compile,
    )


class EpochCommit(keras.callbacks.Callback):
    """Records every epoch's logs and learning rate; commits them with the weights.

    After each epoch the run folder saves the weights (with the optimizer
    state) and then the records that name them, atomically: a kill at any
    instant leaves the last completed epoch restorable. A repeated epoch
    (after a resumption) overwrites its earlier record.
    """

    def __init__(self, phase: str, records: dict[int, dict[str, float]], run: RunFolder, *, on_commit=None,
                 early_stop: EarlyStop | None = None):
        super().__init__()
        self.phase = phase
        self.records = records
        self.run = run
        self.on_commit = on_commit
        self.early_stop = early_stop

    def on_epoch_end(self, epoch, logs=None):
        entry = {}
        for key, value in (logs or {}).items():
            try:
                entry[key] = float(np.asarray(value))
            except (TypeError, ValueError):
                continue
        entry["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        self.records[int(epoch)] = entry
        keep = self.early_stop.best(self.records) if self.early_stop else None
        self.run.save_epoch(self.phase, self.records, self.model, int(epoch), keep=keep)
        if self.on_commit is not None:
            self.on_commit()


class StepLearningRate(keras.callbacks.Callback):
    """Writes the learning rate of every step (a schedule's shape) to TensorBoard as `step_learning_rate`.

    The step axis continues across phases: a phase starting at epoch `e`
    of the run counts its steps from `e * steps_per_epoch`.

    Args:
        log_dir: the TensorBoard run folder (e.g. `tensorboard/train`).
        first_epoch: the phase's first epoch on the run's axis. Defaults to `0`.
    """

    def __init__(self, log_dir: str, *, first_epoch: int = 0):
        super().__init__()
        self.log_dir = log_dir
        self.first_epoch = first_epoch
        self._writer = None
        self._offset = 0

    def on_train_begin(self, logs=None):
        self._writer = tf.summary.create_file_writer(self.log_dir)
        self._offset = self.first_epoch * int(self.params.get("steps") or 0)

    def on_train_batch_end(self, batch, logs=None):
        optimizer = self.model.optimizer
        step = self._offset + int(optimizer.iterations.numpy())
        with self._writer.as_default():
            tf.summary.scalar("step_learning_rate", float(keras.ops.convert_to_numpy(optimizer.learning_rate)),
                              step=step)

    def on_train_end(self, logs=None):
        self._writer.close()


class _StopWhenNoBetter(keras.callbacks.Callback):
    """Ends `fit` once the committed records say so (`EarlyStop.should_stop`)."""

    def __init__(self, stop: EarlyStop, records: Mapping[int, Mapping[str, float]], first_epoch: int):
        super().__init__()
        self.stop, self.records, self.first_epoch = stop, records, first_epoch

    def on_epoch_end(self, epoch, logs=None):
        if self.stop.should_stop(self.records, self.first_epoch):
            self.model.stop_training = True


def run_phase(
    plan: PhasePlan,
    *,
    options: FitOptions,
    run: RunFolder | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    on_commit: Callable[[], None] | None = None,
) -> dict[int, dict[str, float]]:
    """Fits `plan.model` for the phase's epochs, resuming from `run`'s last committed epoch.

    Args:
        plan: the phase.
        options: how it runs.
        run: the run folder (resume state and epoch backups). Defaults to
            `None` (nothing written).
        callbacks: more Keras callbacks (e.g. TensorBoard images), called
            before the epoch is committed.
        on_commit: called after every committed epoch. Defaults to `None`.

    Returns:
        The records of the phase's epochs, by epoch of the run's axis. With
        `plan.early_stop` the model ends on the best epoch (see
        `EarlyStop.best(records)`), which may be its starting weights.

    Raises:
        FloatingPointError: the loss became NaN or infinite.
    """
    run = run or NoRunFolder()
    plan.compile(jit_compile=options.jit_compile, top_k=options.top_k)
    records, backup = run.load_history(plan.name)
    start = plan.first_epoch
    stop = plan.early_stop
    if backup is not None:
        # The optimizer's variables are in the backup: build it before loading.
        plan.model.optimizer.build(plan.model.trainable_variables)
        run.restore_epoch(plan.model, backup)
        start = max(records) + 1
    elif stop is not None and stop.baseline is not None:
        plan.model.optimizer.build(plan.model.trainable_variables)  # so that restoring it loads the same variables
        run.save_start(plan.name, plan.model)
    stopped = stop is not None and stop.should_stop(records, plan.first_epoch)
    if start < plan.end_epoch and not stopped:
        train, steps = plan.train, None
        if isinstance(train, EpochBatches):
            train, steps = train.epochs(start, plan.end_epoch), train.steps
        plan.model.fit(
            train,
            steps_per_epoch=steps,
            validation_data=plan.val,
            initial_epoch=start,
            epochs=plan.end_epoch,
            callbacks=_callbacks(plan, options, run, records, callbacks, on_commit),
            shuffle=False,  # the datasets shuffle themselves, reproducibly
            verbose=options.verbose,
        )
    check_finite(plan.name, records, plan.optimization.learning_rate)
    on_start = False
    if stop is not None and records:
        best = stop.best(records)
        if best != max(records) and (best is not None or stop.baseline is not None):
            run.restore_best(plan.model, plan.name, best)
            on_start = best is None
    if plan.optimization.ema_momentum and records and not on_start:
        # The epoch's averaged weights, whichever way it was reached (Keras'
        # fit ends on the last epoch's; a restored or resumed epoch holds
        # its average in the optimizer's state). Idempotent.
        plan.model.optimizer.finalize_variable_values(plan.model.trainable_variables)
    return records


def _callbacks(plan, options, run, records, extra, on_commit) -> list[keras.callbacks.Callback]:
    # Order matters at the end of an epoch: logs and images are written
    # before the epoch is committed as done.
    callbacks: list[keras.callbacks.Callback] = [keras.callbacks.TerminateOnNaN()]
    swap = None
    if plan.optimization.ema_momentum:
        # Validation (hence early stopping) judges the averaged weights; the
        # epoch backups hold the raw weights and the average (optimizer state).
        swap = keras.callbacks.SwapEMAWeights(swap_on_epoch=False)
        callbacks.append(swap)
    if options.tensorboard_dir:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=options.tensorboard_dir, write_graph=False))
        if plan.optimization.scheduled:
            callbacks.append(StepLearningRate(f"{options.tensorboard_dir}/train", first_epoch=plan.first_epoch))
    if swap is not None and extra:
        # The pictures and the caller's callbacks see, at an epoch's end, the weights validation judged.
        callbacks.extend([_SwapAtEpochEnd(swap), *extra, _SwapAtEpochEnd(swap)])
    else:
        callbacks.extend(extra)
    callbacks.append(EpochCommit(plan.name, records, run, on_commit=on_commit, early_stop=plan.early_stop))
    if plan.early_stop is not None:
        callbacks.append(_StopWhenNoBetter(plan.early_stop, records, plan.first_epoch))
    return callbacks


class _SwapAtEpochEnd(keras.callbacks.Callback):
    """Swaps the averaged and the raw weights at an epoch's end (a pair of these brackets other callbacks)."""

    def __init__(self, swap: keras.callbacks.SwapEMAWeights):
        super().__init__()
        self.swap = swap

    def on_epoch_end(self, epoch, logs=None):
        self.swap._swap_variables()  # Keras' own swap, distribution-aware; its own use is during validation


def check_finite(phase: str, records: Mapping[int, Mapping[str, float]], learning_rate: float) -> None:
    """Raises `FloatingPointError` when a recorded training loss is not finite."""
    for epoch in sorted(records):
        loss = records[epoch].get("loss")
        if loss is not None and not math.isfinite(loss):
            raise FloatingPointError(
                f"The training loss became {loss} in epoch {epoch + 1} (phase {phase!r}); training stopped. "
                f"Try a lower learning rate (it was {learning_rate:g}) or mixed_precision='off'."
            )


def history_from_records(records: Mapping[int, Mapping[str, float]]) -> dict[str, list[float]]:
    """`{"epoch": [...], key: [...]}` from records by epoch."""
    epochs = sorted(records)
    keys: list[str] = []
    for epoch in epochs:
        keys.extend(k for k in records[epoch] if k not in keys)
    history: dict[str, list[float]] = {"epoch": [int(e) for e in epochs]}
    for key in keys:
        history[key] = [float(records[e].get(key, math.nan)) for e in epochs]
    return history


# ---------------------------------------------------------------------------
# Datasets and the head on cached features.


def distribution_options(ds: tf.data.Dataset) -> tf.data.Dataset:
    """Shards by element across workers: our datasets come from memory, not files."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options)


def _as_float(x, y):
    # The model casts too, but uint8 batches on the host stay 4x smaller.
    return tf.cast(x, tf.float32), y


def image_batches(ds: tf.data.Dataset, *, batch_size: int, shuffle: bool = False, seed: int | None = None):
    """Batches of an unbatched uint8 `(image, label)` split, as float32 for the model.

    In order, or with `shuffle` the `EpochBatches` of a training split
    (the shuffle buffer of `data.batch_dataset`).
    """
    if not shuffle:
        batches = data_lib.batch_dataset(ds, batch_size=batch_size)
        return distribution_options(batches.map(_as_float, num_parallel_calls=tf.data.AUTOTUNE))
    buffer, seed_of = data_lib.shuffle_buffer_size(ds), _epoch_seeds(seed)

    def of_epoch(epoch):
        batches = _shuffled(ds, buffer, seed_of(epoch)).batch(batch_size)
        return batches.map(_as_float, num_parallel_calls=tf.data.AUTOTUNE)

    return EpochBatches(of_epoch, steps=math.ceil(_count(ds) / batch_size))


def feature_batches(features: np.ndarray, labels: np.ndarray, *, batch_size: int, shuffle: bool = False, seed: int = 0):
    """Batches of `(features, labels)` held in memory: in order, or with `shuffle` as `EpochBatches`."""
    ds = tf.data.Dataset.from_tensor_slices((features, np.asarray(labels).astype(np.int32)))
    if not shuffle:
        return distribution_options(ds.batch(batch_size).prefetch(tf.data.AUTOTUNE))
    seed_of = _epoch_seeds(seed)
    return EpochBatches(lambda epoch: _shuffled(ds, len(labels), seed_of(epoch)).batch(batch_size),
                        steps=math.ceil(len(labels) / batch_size))


def view_batches(views: Sequence[np.ndarray | RowFile], labels: np.ndarray, *, batch_size: int,
                 seed: int = 0) -> EpochBatches:
    """Shuffled batches of one randomly drawn view of each example (another draw every epoch).

    With `views = (features of the images, features of their mirror
    images)` an epoch is what an epoch on images with a random flip is. The
    views are arrays in memory or `RowFile`s, read a batch at a time.
    """
    labels = np.asarray(labels).astype(np.int32)
    n = len(labels)
    seed_of = _epoch_seeds(seed)

    def of_epoch(epoch):
        seed = seed_of(epoch)
        # Shuffling the indices draws the same order a shuffle of the examples themselves would.
        indices = _shuffled(tf.data.Dataset.range(n), n, seed)
        if len(views) > 1:
            draws = tf.random.stateless_uniform([n], [seed, 1], maxval=len(views), dtype=tf.int64)
            picks = tf.data.Dataset.zip((indices, tf.data.Dataset.from_tensor_slices(draws)))
        else:
            picks = indices.map(lambda i: (i, tf.zeros_like(i)))
        return _rows_of(views, labels, picks.batch(batch_size))

    return EpochBatches(of_epoch, steps=math.ceil(n / batch_size))


def row_batches(rows: np.ndarray | RowFile, labels: np.ndarray, *, batch_size: int):
    """Batches of `(rows, labels)` in order, from an array in memory or a `RowFile`."""
    labels = np.asarray(labels).astype(np.int32)
    picks = tf.data.Dataset.range(len(labels)).map(lambda i: (i, tf.zeros_like(i)))
    return distribution_options(_rows_of([rows], labels, picks.batch(batch_size)).prefetch(tf.data.AUTOTUNE))


def _rows_of(views: Sequence[np.ndarray | RowFile], labels: np.ndarray, picks: tf.data.Dataset):
    """`(rows, labels)` batches for batches of `(index, view)` picks."""
    shape = (None,) + tuple(views[0].shape[1:])

    def read(indices: np.ndarray, which: np.ndarray) -> np.ndarray:
        out = np.empty((len(indices),) + shape[1:], np.float32)
        for view in np.unique(which):
            at = which == view
            out[at] = read_rows(views[int(view)], indices[at])
        return out

    def batch(indices, which):
        x = tf.numpy_function(read, [indices, which], tf.float32, stateful=False)
        return tf.ensure_shape(x, shape), tf.gather(labels, indices)

    return picks.map(batch, num_parallel_calls=tf.data.AUTOTUNE)


def mirrored(ds: tf.data.Dataset) -> tf.data.Dataset:
    """The split's images flipped left-right."""
    return ds.map(lambda image, label: (tf.image.flip_left_right(image), label))


def extract_features(model: keras.Model, ds: tf.data.Dataset, *, batch_size: int = 32) -> np.ndarray:
    """The pooled backbone features of a classifier for an unbatched `(image, label)` split.

    Args:
        model: a classifier from `keras_transfer.models.build_classifier`.
        ds: unbatched uint8 `(image, label)` dataset.
        batch_size: inference batch size. Defaults to `32`.
    """
    return predict_images(models_lib.feature_extractor(model), ds, batch_size=batch_size)


def predict_images(model: keras.Model, ds: tf.data.Dataset, *, batch_size: int = 32) -> np.ndarray:
    """`model`'s float32 outputs for an unbatched uint8 `(image, label)` split, in order.

    Args:
        model: any model of images in [0, 255] (a classifier, its feature
            extractor, the bottom of `models.split_below_trainable`).
        ds: unbatched uint8 `(image, label)` dataset.
        batch_size: inference batch size. Defaults to `32`.
    """
    return np.asarray(model.predict(image_batches(ds, batch_size=batch_size), verbose=0), dtype=np.float32)


_INFERENCE_STEPS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _inference_step(model: keras.Model):
    """`model` in inference mode as one compiled function per model (traced once for all its calls)."""
    if model not in _INFERENCE_STEPS:
        ref = weakref.ref(model)  # the step must not keep its own key alive
        _INFERENCE_STEPS[model] = tf.function(lambda x: ref()(x, training=False), reduce_retracing=True)
    return _INFERENCE_STEPS[model]


def predict_to_file(model: keras.Model, ds: tf.data.Dataset, path: str, *, rows: int,
                    batch_size: int = 32) -> RowFile:
    """`predict_images`, written a batch at a time to the `.npy` file `path` (memory does not grow with `ds`).

    Args:
        model: any model of images in [0, 255].
        ds: unbatched uint8 `(image, label)` dataset of `rows` examples.
        path: the file to write (complete or absent, whenever the process stops).
        rows: the number of examples in `ds`.
        batch_size: inference batch size. Defaults to `32`.
    """
    step = _inference_step(model)
    with write_rows(path, rows=rows, row_shape=model.output.shape[1:]) as append:
        for images, _ in image_batches(ds, batch_size=batch_size):
            append(np.asarray(step(images), np.float32))
    return RowFile(path)


def fit_head_on_features(
    model: keras.Model,
    train_features: np.ndarray,
    train_labels: np.ndarray,
    *,
    val_features: np.ndarray | None = None,
    val_labels: np.ndarray | None = None,
    epochs: int = 100,
    learning_rate: float = 1e-3,
    label_smoothing: float = 0.0,
    batch_size: int = 32,
    seed: int = 0,
    options: FitOptions | None = None,
    run: RunFolder | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    first_epoch: int = 0,
    on_commit: Callable[[], None] | None = None,
) -> dict[int, dict[str, float]]:
    """Trains the classifier's head (`models.head(model)`) on precomputed features.

    The classifier's feature standardization (if any) is set to the
    training features' statistics first, as phase 1 does.

    Args:
        model: the classifier whose head is trained (in place).
        train_features: `(n, d)` pooled backbone features.
        train_labels: `(n,)` labels.
        val_features: validation features. Defaults to `None`.
        val_labels: validation labels. Defaults to `None`.
        epochs: epochs. Defaults to `100`.
        learning_rate: Adam learning rate. Defaults to `1e-3`.
        label_smoothing: see `SmoothedSparseCrossentropy`. Defaults to `0.0`.
        batch_size: batch size. Defaults to `32`.
        seed: shuffling seed. Defaults to `0`.
        options: how the phase runs. Defaults to `FitOptions(verbose=0)`.
        run: run folder for resumption. Defaults to `None`.
        callbacks: more Keras callbacks. Defaults to `()`.
        first_epoch: the phase's first epoch on the run's axis. Defaults to `0`.
        on_commit: called after every committed epoch. Defaults to `None`.

    Returns:
        The per-epoch records.
    """
    models_lib.set_feature_statistics(model, train_features)
    val = None
    if val_features is not None:
        val = feature_batches(val_features, val_labels, batch_size=batch_size)
    plan = PhasePlan(
        name="head",
        model=models_lib.head(model),
        train=feature_batches(train_features, train_labels, batch_size=batch_size, shuffle=True, seed=seed),
        val=val,
        first_epoch=first_epoch,
        epochs=epochs,
        optimization=Optimization(learning_rate, label_smoothing=label_smoothing),
    )
    return run_phase(plan, options=options or FitOptions(verbose=0), run=run, callbacks=callbacks,
                     on_commit=on_commit)
