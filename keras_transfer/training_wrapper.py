"""A `keras.Model` that trains a classifier with a train step of its own.

Phase 2's variants (adversarial fine-tuning, mixup and CutMix) change what
one training batch does, not the model: `ClassifierTrainer` wraps the
classifier of `keras_transfer.models.build_classifier` so that `fit` runs a
custom `train_step` while every weight stays the classifier's. It holds what
those steps share:

- the classifier's random augmentation layer split from the rest of it (the
  "body"), so that a step can work on the augmented view the network sees;
- calling it is calling the classifier, and its `outputs` are the
  classifier's, so `compile` sees the classifier's number of classes;
- stateless random seeds from a stream and the optimizer's step: a resumed
  run (whose optimizer state is restored) draws every batch's randomness as
  an uninterrupted run would.

The body shares the classifier's layers and is kept out of Keras' attribute
tracking, so the weights are saved once, under the classifier. Save and
export the classifier, not the wrapper.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from keras_transfer import models as models_lib

# Stateless random ops take int32 seeds: streams are reduced modulo this.
MAX_SEED = 2**31 - 1


class ClassifierTrainer(keras.Model):
    """Base of the models that fit `classifier` with a train step of their own.

    Its trainable variables are the classifier's, so what `fit` changes is
    the classifier itself. Subclasses override `train_step` (and
    `test_step` if validation changes too) using `augment`, `forward`,
    `step_seed`, `minimize` and `update_loss`.

    Args:
        classifier: a classifier of `keras_transfer.models.build_classifier`
            (pixels in [0, 255] in, logits out).
        name: the model's name. Defaults to `None`:
            `"<classifier name>_trainer"`.
    """

    def __init__(self, classifier: keras.Model, *, name: str | None = None, **kwargs):
        super().__init__(name=name or f"{classifier.name}_trainer", **kwargs)
        self.classifier = classifier
        self.augmentation, body = split_augmentation(classifier)
        # Not a tracked attribute: the body shares the classifier's layers,
        # which must be saved once, under the classifier.
        self._body = (body,)
        self.built = True

    @property
    def outputs(self):
        """The classifier's outputs (what compiling for its number of classes looks at)."""
        return self.classifier.outputs

    def call(self, inputs, training=False):
        return self.classifier(inputs, training=training)

    def augment(self, x, *, training: bool) -> tf.Tensor:
        """`x` as float32, through the classifier's augmentation layer (if any) when `training`."""
        x = tf.cast(x, tf.float32)
        if training and self.augmentation is not None:
            x = self.augmentation(x, training=True)
        return x

    def forward(self, images, *, training: bool) -> tf.Tensor:
        """The classifier's logits of already augmented `images` (its layers after the augmentation)."""
        return self._body[0](images, training=training)

    def step_seed(self, stream: int) -> tf.Tensor:
        """The int32 `(2,)` seed `(stream mod MAX_SEED, optimizer step)` of this batch's random draws.

        The optimizer's step is restored with the optimizer, so a resumed
        run gets the seeds of an uninterrupted one; it does not move while
        validating, so validation draws from a stream of its own. Under a
        strategy with several replicas, each replica folds its index into
        the seed: their parts of the batch get draws of their own, not
        copies of one another's.
        """
        step = tf.cast(self.optimizer.iterations, tf.int32)
        seed = tf.stack([tf.constant(stream % MAX_SEED, tf.int32), step])
        if tf.distribute.get_strategy().num_replicas_in_sync == 1:
            return seed
        replica = tf.distribute.get_replica_context().replica_id_in_sync_group
        return tf.random.experimental.stateless_fold_in(seed, tf.cast(replica, tf.int32))

    def update_loss(self, metric: keras.metrics.Metric, loss: tf.Tensor, images: tf.Tensor) -> None:
        """Adds a batch's `compute_loss` value to the mean `metric` as Keras' own steps do.

        Under a distribution strategy `compute_loss` divides each replica's
        loss by the number of replicas (so that summing the replicas'
        gradients averages them); the logs must show the loss itself, each
        batch weighted by its size.
        """
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        metric.update_state(loss * replicas, sample_weight=tf.shape(images)[0])

    def minimize(self, tape: tf.GradientTape, scaled_loss: tf.Tensor) -> None:
        """One optimizer step on the gradient of `scaled_loss` (`optimizer.scale_loss` of the loss, in `tape`)."""
        variables = self.trainable_variables
        self.optimizer.apply_gradients(zip(tape.gradient(scaled_loss, variables), variables))


def split_augmentation(classifier: keras.Model):
    """(the classifier's augmentation layer or None, the classifier from the augmented pixels on)."""
    try:
        augmentation = classifier.get_layer(models_lib.AUGMENTATION_NAME)
    except ValueError:
        return None, classifier
    body = keras.Model(augmentation.output, classifier.output, name=f"{classifier.name}_after_augmentation")
    return augmentation, body
