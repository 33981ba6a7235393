"""Keras 3 `Model.fit` under `MultiWorkerMirroredStrategy` with several workers.

Keras 3's TensorFlow trainer fails there twice (keras-team/keras#20585, still
so in Keras 3.15 with TensorFlow 2.21), before the first step and after it:

- `_maybe_symbolic_build` all-reduces the whole first batch, a tuple of
  `PerReplica` values, to learn its shapes; the collective strategy cannot
  reduce a tuple ("Attempt to convert a value (PerReplica...)").
- `reduce_per_replica` averages the scalar metric results with
  `reduce("MEAN", v, axis=0)`: "Invalid reduction dimension 0 for input with
  0 dimensions".

`install()` wraps both so that only these failing cases change: the shapes are
read from this worker's first replica (every worker gets batches of the same
structure), and scalars are averaged across replicas with `axis=None`, what the
single-worker path computes. Every other strategy and value goes to Keras's
own code.
"""

from __future__ import annotations

import functools

import tensorflow as tf

_installed = False


def install() -> bool:
    """Patches Keras's TensorFlow trainer once; returns False when its
    internals are not the ones this works around (nothing is changed then)."""
    global _installed
    if _installed:
        return True
    from keras.src import tree
    from keras.src.backend.tensorflow import trainer as tf_trainer

    trainer_cls = getattr(tf_trainer, "TensorFlowTrainer", None)
    original_build = getattr(trainer_cls, "_maybe_symbolic_build", None)
    original_reduce = getattr(tf_trainer, "reduce_per_replica", None)
    # Keras's own test for the branch that fails, so the wrappers change exactly that branch.
    in_multi_worker_mode = getattr(tf_trainer, "_collective_all_reduce_multi_worker", None)
    if None in (original_build, original_reduce, in_multi_worker_mode) or not hasattr(trainer_cls, "_symbolic_build"):
        return False

    def first_replica(strategy, value):
        if isinstance(value, tf.distribute.DistributedValues):
            return strategy.experimental_local_results(value)[0]
        return value

    @functools.wraps(original_build)
    def maybe_symbolic_build(self, iterator=None, data_batch=None):
        strategy = self._distribute_strategy
        if strategy is None or iterator is None or not in_multi_worker_mode(strategy):
            return original_build(self, iterator=iterator, data_batch=data_batch)
        for _, _, it in iterator:
            data_batch = tree.map_structure(functools.partial(first_replica, strategy), next(it))
            break
        with strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    @functools.wraps(original_reduce)
    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and in_multi_worker_mode(strategy):

            def reduce(value):
                scalar = first_replica(strategy, value).shape.rank == 0
                return strategy.reduce("MEAN", value, axis=None if scalar else 0)

            return tree.map_structure(reduce, values)
        return original_reduce(values, strategy, reduction)

    trainer_cls._maybe_symbolic_build = maybe_symbolic_build
    tf_trainer.reduce_per_replica = reduce_per_replica
    _installed = True
    return True
