"""How a run uses the machine: dtype policy, `tf.distribute` strategy, who writes.

Everything here is TensorFlow's and Keras' own machinery, chosen by name from
a `TrainConfig`: mixed-precision policies, `MirroredStrategy`,
`MultiWorkerMirroredStrategy` (with the workaround of
`keras_transfer._multi_worker` for Keras 3's `fit`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import keras
import tensorflow as tf

from keras_transfer import _multi_worker

MIXED_PRECISION_CHOICES = ("off", "auto", "mixed_float16", "mixed_bfloat16")
STRATEGY_CHOICES = ("default", "mirrored", "multi_worker")


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
    TensorFlow work, and run the same command on every worker (it waits
    for all of them to connect).

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
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        _multi_worker.install()  # Keras 3's fit fails there without it (keras-team/keras#20585)
        return strategy
    raise ValueError(f"Expected strategy in {STRATEGY_CHOICES}. Received: strategy={name!r}")


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run's outputs (always, except non-chief workers)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    task_type = getattr(resolver, "task_type", None)
    if resolver is None or task_type is None or task_type == "chief":
        return True
    cluster = resolver.cluster_spec().as_dict()
    return task_type == "worker" and resolver.task_id == 0 and "chief" not in cluster


def worker_dir(output_dir: str, strategy: tf.distribute.Strategy) -> str:
    """Where this process keeps its run folder: `output_dir` for the chief."""
    if is_chief(strategy):
        return output_dir
    # Non-chief workers keep their own resume state so that every worker
    # restores the same epoch after a restart; the chief writes the outputs.
    resolver = strategy.cluster_resolver
    return os.path.join(output_dir, ".workers", f"{resolver.task_type}_{resolver.task_id}")
