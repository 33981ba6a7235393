"""TensorBoard for training runs: hyper-parameters and validation pictures.

Scalars come from Keras' own `TensorBoard` callback; this module adds the
HParams entry and, every few epochs, a confusion matrix and a grid of
validation predictions drawn from one `keras_transfer.evaluation.Evaluation`
(the same object the end-of-run plots draw from).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from keras_transfer import evaluation as eval_lib


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


class ValidationImages(keras.callbacks.Callback):
    """Writes a confusion matrix and a grid of labelled validation images to TensorBoard.

    Args:
        log_dir: the TensorBoard run folder the images go to.
        batches: the batched validation inputs of the model being fitted
            (images, or cached features for a head), in the order of `labels`.
        labels: the validation labels.
        class_names: the class names.
        samples: validation images for the grid. Defaults to `None` (no grid).
        every: write every this many epochs. Defaults to `1`.
    """

    def __init__(
        self,
        log_dir: str,
        batches: tf.data.Dataset,
        labels: np.ndarray,
        class_names: Sequence[str],
        *,
        samples: eval_lib.Samples | None = None,
        every: int = 1,
    ):
        super().__init__()
        self.log_dir = log_dir
        self.batches = batches
        self.labels = np.asarray(labels)
        self.class_names = tuple(class_names)
        self.samples = samples
        self.every = every
        self._writer = None

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every:
            return
        from keras_transfer.plotting import training as plots

        evaluation = eval_lib.evaluate(self.model, self.batches, self.labels, self.class_names, samples=self.samples)
        figures = evaluation_figures(evaluation, title=f"Validation, epoch {epoch + 1}")
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.log_dir)
        with self._writer.as_default():
            for tag, fig in figures.items():
                png = tf.image.decode_png(plots.figure_to_png(fig), channels=3)
                tf.summary.image(tag, png[None], step=epoch)
        self._writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None
