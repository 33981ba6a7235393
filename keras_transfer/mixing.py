"""Mixup and CutMix: phase 2 on batches whose images and labels are blended in pairs.

Mixup (Zhang, Cisse, Dauphin and Lopez-Paz 2018, "mixup: Beyond Empirical
Risk Minimization") trains on convex combinations of two images,
`lam * x_i + (1 - lam) * x_j`, against the same combination of their labels,
with `lam ~ Beta(alpha, alpha)`. CutMix (Yun et al. 2019, "CutMix:
Regularization Strategy to Train Strong Classifiers with Localizable
Features") instead pastes a rectangle of `x_j` into `x_i`, of area fraction
`1 - lam` at a uniform random centre; the rectangle is clipped to the image
and `lam` is recomputed from the area actually pasted, as the paper's code
and timm do. Both regularize the classifier towards linear behaviour between
the training images; small alphas (0.1 to 0.4 for mixup, 1 for CutMix) are
the usual choices. With both on, each batch uses one of them, CutMix with
probability `switch_prob` (as timm's `Mixup`).

The partner `j` of each image is given by a random permutation of its batch
and one `lam` is drawn per batch (the papers' implementations do the same).

Why in the train step, not in the input pipeline: the labels stay integers.
The loss of a mixed batch is `lam * loss(y) + (1 - lam) * loss(y_partner)`,
which for the cross-entropy equals the loss against the mixed one-hot
targets, so the package's sparse losses, label smoothing (smoothing each
label, then mixing, is smoothing the mixed target) and sparse metrics keep
working unchanged. The training accuracy is counted against each image's
dominant label (`y` where `lam >= 0.5`). Validation is not mixed: it is the
classifier's plain evaluation, so early stopping and the head's baseline
compare like with like.

The classifier's random augmentation is applied before mixing, so each
image is augmented on its own. The random draws are stateless, a function
of the seed and the optimizer's step, so a resumed run mixes every batch as
an uninterrupted run would. Images are float32 in [0, 255] and stay in that
range (their blends and pastes are).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import keras
import tensorflow as tf

from keras_transfer import settings
from keras_transfer.settings import Int, Real, setting
from keras_transfer.training_wrapper import ClassifierTrainer

# The mixing draws come from a stream of their own, apart from other draws
# made from the same run seed (e.g. adversarial random starts).
_MIXING_STREAM = 1733913473
# Candidates of Marsaglia and Tsang's rejection sampler drawn at once: each is
# accepted with probability > 0.95, so all of them fail with probability
# < 0.05 ** 16 (then the sampler falls back to the mode).
_GAMMA_CANDIDATES = 16
_TINY = 1e-30


@dataclasses.dataclass(frozen=True, kw_only=True)
class MixedSamples:
    """How the images of a training batch are mixed in pairs.

    Attributes:
        mixup_alpha: concentration `a` of the `Beta(a, a)` that draws mixup's
            image weight `lam`; 0 turns mixup off. Defaults to `0.0`.
        cutmix_alpha: the same for CutMix's pasted area `1 - lam`; 0 turns
            CutMix off. Defaults to `0.0`. At least one alpha must be > 0.
        switch_prob: with both on, the probability that a batch uses CutMix
            instead of mixup (unused with one). Defaults to `0.5`.
        seed: seed of the draws (with the optimizer's step). Defaults to `0`.
    """

    mixup_alpha: float = setting(0.0, kind=Real(min=0),
                                 help="mixup in phase 2 (Zhang et al. 2018): training images and labels are "
                                      "blended in pairs with a weight drawn from Beta(alpha, alpha) (0: off; "
                                      "0.1 to 0.4 are usual; see keras_transfer.mixing). Off by default: it needs phase 2 on "
                                      "images, about 3.5x the cost of an epoch on the cached bottom, for a gain not "
                                      "measured yet on the shared photos")
    cutmix_alpha: float = setting(0.0, kind=Real(min=0),
                                  help="CutMix in phase 2 (Yun et al. 2019): a rectangle of another training "
                                       "image, of area fraction drawn from Beta(alpha, alpha), is pasted into "
                                       "each and the labels weighted by area (0: off; 1 is usual). Off by default, as "
                                       "--mixup-alpha")
    switch_prob: float = setting(0.5, kind=Real(min=0, max=1),
                                 help="with both mixup and CutMix on, the probability that a batch uses CutMix")
    seed: int = setting(0, kind=Int(), help="seed of the mixing draws.")

    def __post_init__(self):
        settings.validate(self)
        if not (self.mixup_alpha > 0 or self.cutmix_alpha > 0):
            raise ValueError("Expected mixup_alpha > 0 or cutmix_alpha > 0 (0 turns one off). Received: "
                             f"mixup_alpha={self.mixup_alpha!r}, cutmix_alpha={self.cutmix_alpha!r}")

    def describe(self) -> str:
        """One line for logs, e.g. `"mixup alpha=0.2 or CutMix alpha=1 (CutMix on 50% of batches)"`."""
        mixup, cutmix = f"mixup alpha={self.mixup_alpha:g}", f"CutMix alpha={self.cutmix_alpha:g}"
        if self.mixup_alpha and self.cutmix_alpha:
            return f"{mixup} or {cutmix} (CutMix on {self.switch_prob:.0%} of batches)"
        return mixup if self.mixup_alpha else cutmix

    def mix(self, x: tf.Tensor, y: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """The batch `x` mixed with a permutation of itself (stateless: a function of `seed`).

        Works in a compiled step (XLA included) at any batch size, static
        or not.

        Args:
            x: images `(batch, height, width, channels)`, cast to float32.
            y: labels, one row per image (any shape and dtype).
            seed: int32 or int64 `(2,)` seed.

        Returns:
            `(mixed_x, y_other, lam)`: the mixed float32 images, the labels
            of each image's partner (`y` permuted) and the float32 scalar
            share of the original image, so the target is
            `lam * y + (1 - lam) * y_other`.
        """
        x = tf.cast(x, tf.float32)
        lam_seed, perm_seed, box_seed, switch_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 4))
        partners = tf.argsort(tf.random.stateless_uniform(tf.shape(x)[:1], perm_seed))
        x_other, y_other = tf.gather(x, partners), tf.gather(y, partners)

        def mixup():
            lam = beta_sample(self.mixup_alpha, lam_seed)
            return lam * x + (1.0 - lam) * x_other, lam

        def cutmix():
            return cut_and_paste(x, x_other, beta_sample(self.cutmix_alpha, lam_seed), box_seed)

        if self.mixup_alpha and self.cutmix_alpha:
            use_cutmix = tf.random.stateless_uniform([], switch_seed) < self.switch_prob
            mixed, lam = tf.cond(use_cutmix, cutmix, mixup)
        else:
            mixed, lam = mixup() if self.mixup_alpha else cutmix()
        return mixed, y_other, lam


def beta_sample(alpha: float, seed: tf.Tensor, shape: Sequence[int] = ()) -> tf.Tensor:
    """Float32 draws of `Beta(alpha, alpha)`, stateless (a function of `seed`) and XLA-compatible.

    `X / (X + Y)` for `X, Y ~ Gamma(alpha)`, computed as
    `sigmoid(log X - log Y)` from the logs of the gamma draws, so that
    small alphas (whose draws underflow float32) still give 0 or 1 draws
    with the right probabilities rather than NaN.

    Args:
        alpha: the concentration, > 0.
        seed: int32 or int64 `(2,)` seed.
        shape: the shape of the draws. Defaults to `()` (one number).
    """
    log_gamma = _log_gamma_sample(alpha, seed, tf.concat([[2], tf.cast(shape, tf.int32)], 0))
    return tf.sigmoid(log_gamma[0] - log_gamma[1])


def _log_gamma_sample(alpha: float, seed: tf.Tensor, shape: tf.Tensor) -> tf.Tensor:
    """Logs of `Gamma(alpha, 1)` draws of `shape`.

    `tf.random.stateless_gamma` has no XLA kernel, and a run may compile
    its train step with XLA: this draws `Gamma(alpha + 1)` by Marsaglia and
    Tsang's rejection method (2000) from a fixed number of candidates, then
    `Gamma(alpha) = Gamma(alpha + 1) * U ** (1 / alpha)` (their boost for
    shapes below 1), in logs.
    """
    normal_seed, accept_seed, boost_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    d = tf.constant(alpha + 1.0 - 1.0 / 3.0, tf.float32)
    c = 1.0 / tf.sqrt(9.0 * d)
    candidates = tf.concat([shape, [_GAMMA_CANDIDATES]], 0)
    z = tf.random.stateless_normal(candidates, normal_seed)
    u = tf.random.stateless_uniform(candidates, accept_seed, minval=_TINY)
    v = (1.0 + c * z) ** 3
    log_v = tf.math.log(tf.maximum(v, _TINY))
    accepted = (v > 0) & (tf.math.log(u) < 0.5 * z**2 + d - d * v + d * log_v)
    # The first accepted candidate (the mode, log_v = 0, if none was).
    first = tf.one_hot(tf.argmax(tf.cast(accepted, tf.int32), axis=-1), _GAMMA_CANDIDATES)
    log_v = tf.where(tf.reduce_any(accepted, axis=-1), tf.reduce_sum(first * log_v, axis=-1), 0.0)
    boost = tf.random.stateless_uniform(shape, boost_seed, minval=_TINY)
    return tf.math.log(d) + log_v + tf.math.log(boost) / alpha


def cut_and_paste(x: tf.Tensor, x_other: tf.Tensor, lam: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """CutMix of two batches: one rectangle of `x_other` pasted into every image of `x`.

    The rectangle has sides `floor(side * sqrt(1 - lam))`, a uniform random
    centre and is clipped to the image, so the share of `x` that is left,
    returned as the new `lam`, may be larger than `lam`.

    Args:
        x: float32 images `(batch, height, width, channels)`.
        x_other: the images to paste from, of the same shape.
        lam: the float32 scalar share of `x` to keep before clipping.
        seed: int32 or int64 `(2,)` seed of the centre.

    Returns:
        `(mixed, lam)`: the images and the share of their pixels from `x`.
    """
    height, width = tf.shape(x)[1], tf.shape(x)[2]
    ratio = tf.sqrt(1.0 - lam)
    sides = tf.cast(tf.cast(tf.stack([height, width]), tf.float32) * ratio, tf.int32)
    centre = tf.stack([tf.random.stateless_uniform([], part, minval=0, maxval=size, dtype=tf.int32)
                       for part, size in zip(tf.unstack(tf.random.experimental.stateless_split(seed, 2)),
                                             (height, width))])
    start = centre - sides // 2
    low = tf.clip_by_value(start, 0, tf.stack([height, width]))
    high = tf.clip_by_value(start + sides, 0, tf.stack([height, width]))
    rows = (tf.range(height) >= low[0]) & (tf.range(height) < high[0])
    cols = (tf.range(width) >= low[1]) & (tf.range(width) < high[1])
    box = (rows[:, None] & cols[None, :])[None, :, :, None]
    pasted = tf.cast(tf.reduce_prod(high - low), tf.float32) / tf.cast(height * width, tf.float32)
    return tf.where(box, x_other, x), 1.0 - pasted


class MixedSampleFineTuning(ClassifierTrainer):
    """Fits `classifier` on batches mixed by `mixing` (see the module docstring).

    Calling it, predicting and evaluating (`test_step`) are the plain
    classifier's; only `train_step` mixes. Its weights are the classifier's,
    so what `fit` changes is the classifier itself: save and export the
    classifier.

    Args:
        classifier: a classifier of `keras_transfer.models.build_classifier`
            (pixels in [0, 255] in, logits out).
        mixing: how the training batches are mixed.
    """

    def __init__(self, classifier: keras.Model, *, mixing: MixedSamples, **kwargs):
        super().__init__(classifier, name=kwargs.pop("name", f"{classifier.name}_mixed"), **kwargs)
        self.mixing = mixing

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        if sample_weight is not None:
            raise ValueError("MixedSampleFineTuning does not weight samples (a mixed image has two). "
                             f"Received: sample_weight={sample_weight!r}")
        x = self.augment(x, training=True)
        mixed, y_other, lam = self.mixing.mix(x, y, self.step_seed(self.mixing.seed + _MIXING_STREAM))
        with tf.GradientTape() as tape:
            logits = self.forward(mixed, training=True)
            # Each loss holds the regularization once; their weights sum to 1.
            loss = (lam * self.compute_loss(x=mixed, y=y, y_pred=logits, training=True)
                    + (1.0 - lam) * self.compute_loss(x=mixed, y=y_other, y_pred=logits, training=True))
            scaled = self.optimizer.scale_loss(loss)
        self.minimize(tape, scaled)
        dominant = tf.where(lam >= 0.5, y, y_other)
        for metric in self.metrics:
            if metric.name == "loss":
                self.update_loss(metric, loss, mixed)
            else:
                metric.update_state(dominant, logits)
        return self.get_metrics_result()


def config_setting(name: str, *, group: str | None = None):
    """`MixedSamples`' setting `name` (default, kind, help), declared for another config's field."""
    return settings.declared(MixedSamples, name, group=group)
