"""Adversarial fine-tuning: phase 2 on images perturbed by a bounded attack (Madry et al. 2018).

Every training batch is attacked before the weights are updated: a few
projected gradient steps (the norms of `keras_transfer.adversarial`: their
step direction and projection) inside the epsilon ball around each image,
computed in the same compiled `train_step` as the update. The update then
descends a mix of the clean and the adversarial loss,
`(1 - weight) * loss(clean) + weight * loss(adversarial)` (Goodfellow et al.
2015 mix the two equally; `weight=1` is Madry et al.'s pure adversarial
training). One step from a random start with a step of `1.25 * eps` is the
"fast" adversarial training of Wong, Rice and Kolter (2020); each step costs
one more forward and backward pass of the whole network per batch. On the
cats-vs-dogs photos (experiments/robustness/) one step at eps 2 reached 0.64
validation accuracy under its own one-step attack after 9 epochs, but 0.02
under PGD-10 and 0.00 under restarts and APGD: the model learned to defeat
the single step, not the ball (the "catastrophic overfitting" of Wong et
al.), so the default is 3 steps.

The attack sees what the network sees. The classifier's random augmentation
(a layer inside the model) is applied first, and the attack perturbs the
augmented view through the rest of the model in inference mode (no dropout;
the backbone's BatchNormalization is always in inference mode in this
package), so the perturbation is not blurred by a rotation drawn after it.
Its random starts are stateless, drawn from the run's seed and the
optimizer's step, so a resumed run perturbs every batch as an uninterrupted
run would.

Validation is attacked too: the epoch logs hold `adversarial_accuracy` and
`adversarial_loss` for the training batches (under the attack they were
trained on) and `val_adversarial_*` for the validation split under the same
attack, so TensorBoard shows clean and adversarial accuracy per epoch. This
training-time attack is cheap by design; judge the final model's robustness
with stronger attacks (`keras_transfer.adversarial.robust_accuracy`).

Units: pixels in [0, 255] (every model of this package takes raw RGB
pixels), `eps` and `step_size` in the same units; the perturbed images are
float32 in [0, 255] (not rounded to integers while training).
"""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

from keras_transfer import adversarial
from keras_transfer import settings
from keras_transfer.settings import Choice, Flag, Int, Optional, Real, setting
from keras_transfer.training_wrapper import ClassifierTrainer

# Validation batches draw their random starts from a stream of their own (the
# optimizer's step does not move while validating); `step_seed` reduces
# streams modulo `training_wrapper.MAX_SEED`.
_VALIDATION_STREAM = 506952112


@dataclasses.dataclass(frozen=True, kw_only=True)
class AdversarialTraining:
    """The attack that perturbs the training images, and how its loss is mixed in.

    Attributes:
        eps: radius of the ball in pixel units of the [0, 255] input.
        norm: `"inf"` or `"2"`. Defaults to `"inf"`.
        steps: projected gradient steps per batch. Defaults to `3`.
        step_size: length of a step in pixel units. Defaults to `None`:
            `1.25 * eps` for one step (Wong et al. 2020), else
            `2.5 * eps / steps` (Madry et al. 2018).
        random_start: start from a uniform random point of the ball.
            Defaults to `True`.
        weight: share of the adversarial loss in the training loss, in
            (0, 1]. Defaults to `0.5`.
        seed: seed of the random starts. Defaults to `0`.
    """

    eps: float = setting(kind=Real(min=0, min_open=True), help="radius of the ball in pixel units.")
    norm: str = setting("inf", kind=Choice(adversarial.NORMS), help="norm of the attack's ball: 'inf' or '2'.")
    steps: int = setting(3, kind=Int(min=1),
                         help="projected gradient steps of the attack per training batch; each costs one more "
                              "forward and backward pass of the whole network (1: the fast adversarial training "
                              "of Wong et al. 2020, measured to buy no robustness against PGD-10 on cats vs dogs "
                              "at eps 2: see experiments/robustness)")
    step_size: float | None = setting(None, kind=Optional(Real(min=0, min_open=True)),
                                      help="step length; None: 1.25 * eps for one step, else 2.5 * eps / steps.")
    random_start: bool = setting(True, kind=Flag(), help="start from a uniform random point of the ball.")
    weight: float = setting(0.5, kind=Real(min=0, max=1, min_open=True),
                            help="share of the adversarial loss in the training loss (the rest is the clean "
                                 "loss; 1: adversarial images only)")
    seed: int = setting(0, kind=Int(), help="seed of the random starts.")

    def __post_init__(self):
        object.__setattr__(self, "norm", adversarial.norm_name(self.norm))
        settings.validate(self)
        adversarial.check_radius("eps", self.eps, self.norm)

    @property
    def effective_step_size(self) -> float:
        if self.step_size is not None:
            return float(self.step_size)
        return 1.25 * float(self.eps) if self.steps == 1 else 2.5 * float(self.eps) / self.steps

    def describe(self) -> str:
        norm = "L-inf" if self.norm == "inf" else "L2"
        start = " from a random start" if self.random_start else ""
        return (f"{norm} eps={self.eps:g}, {self.steps} step{'s' * (self.steps != 1)} of "
                f"{self.effective_step_size:g}{start}, adversarial loss weight {self.weight:g}")

    def random_start_point(self, x: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        """A uniform random point of the ball around each image of `x` (stateless: a function of `seed`)."""
        noise = adversarial.norm_ops(self.norm).random_noise(tf.shape(x), seed, tf.constant(self.eps, tf.float32))
        return tf.clip_by_value(x + noise, adversarial.PIXEL_MIN, adversarial.PIXEL_MAX)

    def perturb(self, logits_fn, x: tf.Tensor, labels: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        """The attacked images: `steps` ascents of the cross-entropy of `logits_fn`, projected into the ball.

        Args:
            logits_fn: images -> logits, in inference mode.
            x: float32 images in [0, 255].
            labels: int32 true classes.
            seed: int32 `(2,)` seed of the random start.
        """
        norm = adversarial.norm_ops(self.norm)
        eps = tf.constant(self.eps, tf.float32)
        x_adv = self.random_start_point(x, seed) if self.random_start else x
        for _ in range(self.steps):  # few steps: unrolled into the compiled train step
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(x_adv)
                logits = tf.cast(logits_fn(x_adv), tf.float32)
                loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))
            grad = tape.gradient(loss, x_adv)
            x_adv = x_adv + self.effective_step_size * norm.direction(grad)
            x_adv = tf.clip_by_value(x + norm.project(x_adv - x, eps), adversarial.PIXEL_MIN, adversarial.PIXEL_MAX)
        return tf.stop_gradient(x_adv)


class AdversarialFineTuning(ClassifierTrainer):
    """Fits `classifier` on a mix of clean and attacked batches (see the module docstring).

    Calling it is calling the classifier; its weights are the classifier's,
    so what `fit` changes is the classifier itself. It exists only for the
    phase that trains adversarially: save and export the classifier.

    Args:
        classifier: a classifier of `keras_transfer.models.build_classifier`
            (pixels in [0, 255] in, logits out).
        attack: the training attack.
    """

    def __init__(self, classifier: keras.Model, *, attack: AdversarialTraining, **kwargs):
        super().__init__(classifier, name=kwargs.pop("name", f"{classifier.name}_adversarial"), **kwargs)
        self.attack = attack
        self.adversarial_loss = keras.metrics.Mean(name="adversarial_loss")
        self.adversarial_accuracy = keras.metrics.SparseCategoricalAccuracy(name="adversarial_accuracy")

    def _attacked(self, x, y, *, training: bool):
        x = self.augment(x, training=training)
        seed = self.step_seed(self.attack.seed + (0 if training else _VALIDATION_STREAM))
        labels = tf.cast(tf.reshape(y, [-1]), tf.int32)
        return x, self.attack.perturb(lambda images: self.forward(images, training=False), x, labels, seed)

    def train_step(self, data):
        x, y = data[0], data[1]
        x, x_adv = self._attacked(x, y, training=True)
        weight = self.attack.weight
        with tf.GradientTape() as tape:
            clean = self.forward(x, training=True)
            attacked = self.forward(x_adv, training=True)
            # Each loss holds the regularization once; their weights sum to 1.
            clean_loss = self.compute_loss(x=x, y=y, y_pred=clean, training=True)
            adversarial_loss = self.compute_loss(x=x_adv, y=y, y_pred=attacked, training=True)
            loss = (1.0 - weight) * clean_loss + weight * adversarial_loss
            scaled = self.optimizer.scale_loss(loss)
        self.minimize(tape, scaled)
        return self._update_metrics(x, y, loss, clean, adversarial_loss, attacked)

    def test_step(self, data):
        x, y = data[0], data[1]
        x, x_adv = self._attacked(x, y, training=False)
        clean = self.forward(x, training=False)
        attacked = self.forward(x_adv, training=False)
        loss = self.compute_loss(x=x, y=y, y_pred=clean, training=False)
        adversarial_loss = self.compute_loss(x=x_adv, y=y, y_pred=attacked, training=False)
        return self._update_metrics(x, y, loss, clean, adversarial_loss, attacked)

    def _update_metrics(self, x, y, loss, clean, adversarial_loss, attacked):
        for metric in self.metrics:
            if metric is self.adversarial_loss:
                self.update_loss(metric, adversarial_loss, x)
            elif metric is self.adversarial_accuracy:
                metric.update_state(y, attacked)
            elif metric.name == "loss":
                self.update_loss(metric, loss, x)
            else:
                metric.update_state(y, clean)
        return {metric.name: metric.result() for metric in self.metrics}


def config_setting(name: str, *, group: str | None = None):
    """`AdversarialTraining`'s setting `name` (default, kind, help), declared for another config's field."""
    return settings.declared(AdversarialTraining, name, group=group)
