"""TensorBoard for training runs: hyper-parameters and validation pictures.

Scalars come from Keras' own `TensorBoard` callback; this module adds the
HParams entry and, a few times per phase, a confusion matrix and a grid of
validation predictions drawn from one `keras_transfer.evaluation.Evaluation`
(the same object the end-of-run plots draw from). They are kept cheap: a few
per phase by default, drawn at a low resolution, and in a phase that runs the
whole network on images, from a fixed subset of the validation split.
"""

from __future__ import annotations

import math
import time
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from keras_transfer import evaluation as eval_lib

IMAGES_PER_PHASE = 3  # pictures per phase by default (each costs ~1-3 s of matplotlib)
MONITOR_IMAGES = 256  # validation images evaluated for the pictures of a phase that runs on images
TENSORBOARD_DPI = 50


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

    values = {str(k): (v if isinstance(v, (bool, int, float, str)) else str(v)) for k, v in hparams.items()}
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


def evaluation_figures(evaluation: eval_lib.Evaluation, *, title: str = "Validation") -> dict[str, Any]:
    """The confusion matrix and prediction grid Figures of an evaluation."""
    from keras_transfer.plotting import training as plots

    figures = {"confusion_matrix": plots.plot_confusion_matrix(evaluation.confusion, evaluation.class_names,
                                                              title=title)}
    samples = evaluation.samples
    if samples is not None:
        at = samples.indices
        predictions = evaluation.predictions[at]
        figures["predictions"] = plots.plot_prediction_grid(
            samples.images,
            evaluation.labels[at],
            predictions,
            evaluation.class_names,
            probabilities=evaluation.probabilities[at, predictions],
            title=f"{title} predictions",
        )
    return figures


def image_epochs(first_epoch: int, epochs: int, every: int | None) -> frozenset[int]:
    """The epochs (0-based, on the run's axis) of a phase at which pictures are drawn.

    Args:
        first_epoch: the phase's first epoch.
        epochs: the phase's number of epochs.
        every: `N` for every N-th epoch of the run's axis, `0` for none, or
            `None` for about `IMAGES_PER_PHASE` per phase whatever its length
            (its last epoch included), so that a 100-epoch cached head draws
            as few pictures as a 10-epoch fine-tuning.
    """
    end = first_epoch + epochs
    if every == 0 or epochs <= 0:
        return frozenset()
    if every is not None:
        return frozenset(e for e in range(first_epoch, end) if (e + 1) % every == 0)
    step = math.ceil(epochs / IMAGES_PER_PHASE)
    return frozenset({*range(first_epoch + step - 1, end, step), end - 1})


class ValidationImages(keras.callbacks.Callback):
    """Writes a confusion matrix and a grid of labelled validation images to TensorBoard.

    Args:
        log_dir: the TensorBoard run folder the images go to.
        batches: the batched validation inputs of the model being fitted
            (images, or cached features for a head), in the order of `labels`.
        labels: the validation labels.
        class_names: the class names.
        epochs: the epochs (of the run's axis) to draw at, e.g. from
            `image_epochs`.
        samples: validation images for the grid. Defaults to `None` (no grid).
        title: what the pictures show. Defaults to `"Validation"`.
    """

    def __init__(
        self,
        log_dir: str,
        batches: tf.data.Dataset,
        labels: np.ndarray,
        class_names: Sequence[str],
        *,
        epochs: Collection[int],
        samples: eval_lib.Samples | None = None,
        title: str = "Validation",
    ):
        super().__init__()
        self.log_dir = log_dir
        self.batches = batches
        self.labels = np.asarray(labels)
        self.class_names = tuple(class_names)
        self.epochs = frozenset(int(e) for e in epochs)
        self.samples = samples
        self.title = title
        self.seconds = 0.0  # spent drawing and writing, to report what monitoring costs
        self._writer = None

    def on_epoch_end(self, epoch, logs=None):
        if epoch not in self.epochs:
            return
        start = time.perf_counter()
        self._draw(epoch)
        self.seconds += time.perf_counter() - start

    def _draw(self, epoch: int) -> None:
        from keras_transfer.plotting import training as plots

        evaluation = eval_lib.evaluate(self.model, self.batches, self.labels, self.class_names, samples=self.samples)
        figures = evaluation_figures(evaluation, title=f"{self.title}, epoch {epoch + 1}")
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.log_dir)
        with self._writer.as_default():
            for tag, fig in figures.items():
                # A lower resolution than the run's PNG files: TensorBoard shows them small.
                png = tf.image.decode_png(plots.figure_to_png(fig, dpi=TENSORBOARD_DPI), channels=3)
                tf.summary.image(tag, png[None], step=epoch)
        self._writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None
