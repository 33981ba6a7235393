"""Adversarial examples: small changes to a photo that change a classifier's answer.

The machinery of class visualization (the gradient of a class score with
respect to the input pixels) also tweaks a dog photo until the network calls
it a cat. This module has the lesson's version of that and the standard
bounded attacks:

- `LessonAttack`: unbounded gradient ascent on the target class score (as in
  the lesson), only clipped to the valid pixel range; for comparison.
- `FGSM`: one step of size `eps` along the steepest direction of the norm
  (Goodfellow et al. 2015; "FGM" for L2).
- `PGD` (Madry et al. 2018, random start) and `BIM` (Kurakin et al. 2016, no
  random start): repeated steps, each projected back into the epsilon ball.
- `APGD` (Croce and Hein 2020): PGD with momentum and a step size that
  adapts per image, keeping each image's best point.

All of them share one loop (APGD, with per-image state, runs its own); a
norm (`"inf"` or `"2"`) contributes only its random start, its step
direction, its projection and its rounding. Whether an attack is targeted is
the criterion's business, not a flag: `Misclassification(labels)` (any other
class) or `TargetedMisclassification(target_classes)` (that class).

Reliable evaluation. A 10-step, single-start, cross-entropy PGD overstates
robustness (Croce and Hein 2020): on a confident model the softmax saturates
and the cross-entropy's gradient vanishes. The gradient attacks therefore
take `loss="margin"` (the logit margin, which does not saturate) and
`restarts` (re-attack the images still unbroken from new random starts), and
`robust_accuracy` combines several attacks, worst case per image
(`default_attacks`: margin PGD with two runs, then APGD-CE).

Units and guarantees. Images are RGB pixels in [0, 255], like every model of
this package takes them, and `eps` is in the same pixel units (L-inf `eps=4`
allows every channel of every pixel to move by up to 4 levels; radii beyond
255 for L-inf, or beyond the pixel cube's diagonal for L2, are rejected: see
`max_radius`). Every result lies inside the epsilon ball around its original
and inside [0, 255] (exactly for uint8 results; float32 results up to float32
rounding).

Saved images still work. By default (`quantize=True`) the attack returns uint8
images, and success is decided on those very images: at every step the
current point is rounded to the integer grid inside the ball (rounding toward
the original wherever rounding to nearest would leave the ball), the model is
run on the rounded image, and its gradient drives the next step of the float
iterate. So an image reported as adversarial is adversarial after it is saved
as PNG, and no separate re-check or repair pass is needed. Rounding keeps the
ball only around integer originals: with `quantize=True` the originals must
be integer-valued (uint8 photos, or floats holding integers); float originals
with fractional values are rejected with an explanation (round them first, or
pass `quantize=False` to get float32 results).

Logits, not probabilities. Attacks differentiate the model's logits: the
gradient of a saturated softmax vanishes, which silently weakens attacks. A
model that ends in a softmax is attacked through
`keras_transfer.models.as_logits_model`.

Speed. The loop runs in the graph: a `tf.while_loop` over steps (rounding,
forward, gradient, step, projection) on a batch that is the loop's state
stops each image as soon as it succeeds (`early_stop=True`), writes its
result and refills its slot with the next image, so batches stay full, no
work is spent on images that are already adversarial, and nothing returns to
Python until the end (or the next progress-bar update). Around the network a
step does little: for L-inf, the ball and its integer grid are boxes kept per
image, so the rounding and the projected step are two clips. `network_rate` times the
bare network, the ceiling of this loop.

Example::

    model = kt.build_imagenet_classifier("mobilenet", alpha=0.25)
    attack = PGD(norm="inf", eps=4.0, steps=10)
    result = attack(model, dog_photos, TargetedMisclassification(281))  # tabby
    result.success_rate, result.adversarial.dtype  # (1.0, uint8)
"""

from __future__ import annotations

import abc
import dataclasses
import math
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, NamedTuple

import keras
import numpy as np
import tensorflow as tf

from keras_transfer import models as models_lib
from keras_transfer import settings
from keras_transfer.settings import Choice, Flag, Int, Optional, Real, setting

PIXEL_MIN = 0.0
PIXEL_MAX = 255.0
NORMS = ("inf", "2")
ATTACKS = ("lesson", "fgsm", "pgd", "bim", "apgd")
LOSSES = ("crossentropy", "margin")
LESSON_OBJECTIVES = ("logit", "log_prob")

_NORM_ALIASES = {"inf": "inf", "linf": "inf", "l_inf": "inf", "2": "2", "l2": "2"}
_TINY = 1e-12


# --------------------------------------------------------------------------
# Norms: random start, step direction, projection, rounding.
# --------------------------------------------------------------------------


def _flat_norm(t: tf.Tensor) -> tf.Tensor:
    """L2 norm of every image of a batch, shaped to broadcast against it."""
    axes = tf.range(1, tf.rank(t))
    return tf.sqrt(tf.reduce_sum(tf.square(t), axis=axes, keepdims=True))


class _Norm(abc.ABC):
    name: ClassVar[str]

    @abc.abstractmethod
    def random_noise(self, shape: tf.Tensor, seed: tf.Tensor, eps: tf.Tensor) -> tf.Tensor:
        """Uniform random points of the ball, one per image of `shape` (stateless: a function of `seed`)."""

    def random_points(self, shape: tf.Tensor, seeds: tf.Tensor, eps: tf.Tensor) -> tf.Tensor:
        """`random_noise` with one seed per image: image i is a function of `seeds[i]` (int64 pairs) alone."""
        one = tf.concat([[1], shape[1:]], 0)
        return tf.map_fn(lambda seed: self.random_noise(one, seed, eps)[0], seeds, fn_output_signature=tf.float32)

    @abc.abstractmethod
    def direction(self, grad: tf.Tensor) -> tf.Tensor:
        """The steepest-ascent direction of unit norm for a gradient."""

    @abc.abstractmethod
    def project(self, delta: tf.Tensor, eps: tf.Tensor) -> tf.Tensor:
        """The closest perturbation inside the ball of radius `eps`."""

    @abc.abstractmethod
    def quantize(self, x: tf.Tensor, x0: tf.Tensor, eps: tf.Tensor, radius: tf.Tensor) -> tf.Tensor:
        """An integer image inside the ball and [0, 255], close to `x`.

        `x0` holds integers; `x` lies inside the ball and the pixel range;
        `radius` is `floor(eps)` (for the L-inf grid).
        """

    # The attack loop keeps, per image, what `box` returns (computed once,
    # when the image enters the pool) and steps with `rounded` and `advance`.

    def box(self, x0: tf.Tensor, eps: tf.Tensor, radius: tf.Tensor, *, quantize: bool) -> tuple[tf.Tensor, ...]:
        """The per-image constants `rounded` and `advance` need: here the original."""
        return (x0,)

    def rounded(self, x: tf.Tensor, box: Sequence[tf.Tensor], eps: tf.Tensor, radius: tf.Tensor) -> tf.Tensor:
        """`quantize`, from the box."""
        return self.quantize(x, box[0], eps, radius)

    def advance(self, x: tf.Tensor, move: tf.Tensor, box: Sequence[tf.Tensor], eps: tf.Tensor) -> tf.Tensor:
        """`x + move` projected into the ball, then clipped to [0, 255] (which stays in the ball)."""
        x0 = box[0]
        return tf.clip_by_value(x0 + self.project(x + move - x0, eps), PIXEL_MIN, PIXEL_MAX)


class _LinfNorm(_Norm):
    name = "inf"

    def random_noise(self, shape, seed, eps):
        # Image i from (seed, i).
        seed = tf.cast(seed, tf.int64)
        key = seed[0] * 1_000_003 + seed[1]
        rows = tf.range(tf.cast(shape[0], tf.int64), dtype=tf.int64)
        return self.random_points(shape, tf.stack([tf.fill(tf.shape(rows), key), rows], axis=1), eps)

    def random_points(self, shape, seeds, eps):
        # 256 evenly spaced levels strictly inside [-eps, eps] (steps of eps / 128), one random byte
        # each. The bytes are a counter-based hash of (the image's seed, the byte's index), drawn
        # for all images at once and fusable by XLA: a generator per image (tf.map_fn of Philox
        # draws) cost more than a tenth of a step when a few images start each step.
        size = tf.reduce_prod(shape[1:])
        first, second = _seed_keys(seeds)
        index = tf.cast(tf.range((size + 3) // 4), tf.uint32)[None, :]
        words = _mix32(tf.bitwise.bitwise_xor(_mix32(index + first[:, None]), second[:, None]))
        levels = tf.reshape(tf.bitcast(words, tf.uint8), [tf.shape(seeds)[0], -1])[:, :size]
        return tf.reshape((tf.cast(levels, tf.float32) + 0.5) * (eps / 128.0) - eps, shape)

    def direction(self, grad):
        return tf.sign(grad)

    def project(self, delta, eps):
        return tf.clip_by_value(delta, -eps, eps)

    def quantize(self, x, x0, eps, radius):
        # The integers within eps of an integer x0 are x0 - floor(eps) ... x0 +
        # floor(eps); clipping the nearest integer into that box rounds toward
        # the original exactly where rounding to nearest would leave the ball.
        return tf.clip_by_value(tf.round(x), *_box_bounds(x0, radius))

    def box(self, x0, eps, radius, *, quantize):
        # The original alone, as uint8 when it holds integers (quantize): the
        # fused kernels of `rounded` and `advance` derive the bounds of the
        # ball and of its integer grid from it, reading one byte a pixel per
        # step where four float bounds read sixteen (the elementwise work
        # around the network is bound by memory, not arithmetic).
        return (tf.cast(x0, tf.uint8 if quantize else tf.float32),)

    def advance(self, x, move, box, eps):
        return tf.clip_by_value(x + move, *_box_bounds(box[0], eps))


def _mix32(h: tf.Tensor) -> tf.Tensor:
    """A bijective 32-bit hash with good avalanche (Wellons' "lowbias32")."""
    def shift_xor(v, bits):
        return tf.bitwise.bitwise_xor(v, tf.bitwise.right_shift(v, tf.constant(bits, tf.uint32)))

    h = shift_xor(h, 16) * tf.constant(0x7FEB352D, tf.uint32)
    h = shift_xor(h, 15) * tf.constant(0x846CA68B, tf.uint32)
    return shift_xor(h, 16)


def _seed_keys(seeds: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Two 32-bit keys per int64 seed pair, each depending on all 128 bits."""
    words = tf.reshape(tf.bitcast(tf.cast(seeds, tf.int64), tf.uint32), [-1, 4])
    key = _mix32(words[:, 3] + tf.constant(0x9E3779B9, tf.uint32))
    for k in (2, 1, 0):
        key = _mix32(tf.bitwise.bitwise_xor(words[:, k], key))
    return key, _mix32(tf.bitwise.bitwise_xor(key, tf.constant(0x85EBCA6B, tf.uint32)))


def _box_bounds(x0: tf.Tensor, half_width: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """The box `[x0 - half_width, x0 + half_width]` (x0 of any dtype) intersected with the pixel range."""
    x0 = tf.cast(x0, tf.float32)
    return tf.maximum(x0 - half_width, PIXEL_MIN), tf.minimum(x0 + half_width, PIXEL_MAX)


class _L2Norm(_Norm):
    name = "2"

    def random_noise(self, shape, seed, eps):
        seeds = tf.random.experimental.stateless_split(seed, 2)
        direction = tf.random.stateless_normal(shape, seeds[0])
        direction /= tf.maximum(_flat_norm(direction), _TINY)
        # Radius eps * u^(1/d) makes the point uniform in the ball's volume.
        dims = tf.cast(tf.reduce_prod(shape[1:]), tf.float32)
        u = tf.random.stateless_uniform(tf.concat([shape[:1], tf.ones_like(shape[1:])], 0), seeds[1])
        return direction * (eps * tf.pow(u, 1.0 / dims))

    def direction(self, grad):
        return grad / tf.maximum(_flat_norm(grad), _TINY)

    def project(self, delta, eps):
        return delta * tf.minimum(eps / tf.maximum(_flat_norm(delta), _TINY), 1.0)

    def quantize(self, x, x0, eps, radius):
        # Exact integer arithmetic in float64 (squared norms of 224 px images
        # exceed float32's integer range).
        shape = tf.shape(x)
        batch = shape[0]
        eps64 = tf.cast(eps, tf.float64)
        delta = tf.reshape(tf.cast(x, tf.float64) - tf.cast(x0, tf.float64), [batch, -1])
        norm = tf.sqrt(tf.reduce_sum(tf.square(delta), axis=1, keepdims=True))
        # x is in the ball up to float32 rounding; make that exact first, so
        # that truncating toward the original is guaranteed to be inside.
        delta = delta * tf.minimum(eps64 / tf.maximum(norm, _TINY), 1.0)
        nearest = tf.round(delta)
        toward = tf.sign(delta) * tf.floor(tf.abs(delta))
        outward = tf.abs(nearest) > tf.abs(toward)
        # Rounding a pixel toward the original instead of away from it saves
        # |r|^2 - (|r| - 1)^2 = 2|r| - 1 of squared norm. When rounding to
        # nearest leaves the ball, the pixels with the largest |r| are rounded
        # toward the original, just enough of them to get back inside: all
        # those above a threshold magnitude m*, and among those at m*, the
        # ones whose fraction was closest to one half (least change).
        magnitude = tf.cast(tf.abs(nearest), tf.int32)  # 0 ... 255
        excess = tf.reduce_sum(tf.square(nearest), axis=1) - tf.square(eps64)
        saving = tf.where(outward, 2.0 * tf.abs(nearest) - 1.0, tf.zeros_like(nearest))
        per_magnitude = _row_histogram(magnitude, saving, 256)
        # saved_from[m]: saving of switching every outward pixel with |r| >= m.
        saved_from = tf.concat(
            [tf.math.cumsum(per_magnitude, axis=1, reverse=True), tf.zeros([batch, 1], tf.float64)], axis=1
        )
        threshold = tf.reduce_sum(tf.cast(saved_from[:, :256] >= excess[:, None], tf.int32), axis=1) - 1
        threshold = tf.clip_by_value(threshold, 1, 255)
        above = tf.gather(saved_from, threshold + 1, axis=1, batch_dims=1)
        needed = tf.math.ceil((excess - above) / (2.0 * tf.cast(threshold, tf.float64) - 1.0))
        at_threshold = outward & tf.equal(magnitude, threshold[:, None])
        # How far past one half each fraction was, in 256 bins of [0, 0.5).
        past_half = tf.abs(delta) - tf.abs(toward) - 0.5
        bins = tf.clip_by_value(tf.cast(tf.floor(past_half * 512.0), tf.int32), 0, 255)
        per_bin = tf.math.cumsum(_row_histogram(bins, tf.cast(at_threshold, tf.float64), 256), axis=1)
        last_bin = tf.minimum(tf.reduce_sum(tf.cast(per_bin < needed[:, None], tf.int32), axis=1), 255)
        # Ties in the last bin: the first ones in scan order, exactly as many as still needed.
        before_last = tf.gather(tf.pad(per_bin, [[0, 0], [1, 0]]), last_bin, axis=1, batch_dims=1)
        in_last = at_threshold & tf.equal(bins, last_bin[:, None])
        rank = tf.math.cumsum(tf.cast(in_last, tf.float64), axis=1)
        chosen = (at_threshold & (bins < last_bin[:, None])) | (in_last & (rank <= (needed - before_last)[:, None]))
        switch = (excess > 0)[:, None] & ((outward & (magnitude > threshold[:, None])) | chosen)
        rounded = tf.where(switch, toward, nearest)
        return tf.reshape(tf.reshape(tf.cast(x0, tf.float64), [batch, -1]) + rounded, shape)


def _row_histogram(bins: tf.Tensor, weights: tf.Tensor, num_bins: int) -> tf.Tensor:
    """Per row of `bins` (int, `[batch, n]`), the sum of `weights` in each bin."""
    batch = tf.shape(bins)[0]
    segments = bins + num_bins * tf.range(batch)[:, None]
    sums = tf.math.unsorted_segment_sum(tf.reshape(weights, [-1]), tf.reshape(segments, [-1]), batch * num_bins)
    return tf.reshape(sums, [batch, num_bins])


_NORMS: dict[str, _Norm] = {"inf": _LinfNorm(), "2": _L2Norm()}


def norm_ops(norm: str | int | float) -> _Norm:
    """The step direction, projection and rounding of a norm, for loops written elsewhere (adversarial training)."""
    return _NORMS[norm_name(norm)]


def norm_name(norm: str | int | float) -> str:
    """Canonical name of a norm: `"inf"` (also `np.inf`, `"linf"`) or `"2"` (also `2`, `"l2"`)."""
    if isinstance(norm, bool):
        raise ValueError(f"Expected norm in {NORMS}. Received: norm={norm!r}")
    if isinstance(norm, (int, float, np.number)):
        if math.isinf(norm) and norm > 0:
            return "inf"
        if norm == 2:
            return "2"
    elif isinstance(norm, str) and norm.strip().lower() in _NORM_ALIASES:
        return _NORM_ALIASES[norm.strip().lower()]
    raise ValueError(f"Expected norm in {NORMS} (or np.inf, 2, 'linf', 'l2'). Received: norm={norm!r}")


def max_radius(norm: str | int | float, image_shape: Sequence[int] | None = None) -> float:
    """The largest change worth asking for, in pixel units of [0, 255].

    For L-inf, 255 (every pixel may then take any value); for L2, the
    diagonal of the pixel cube, `255 * sqrt(height * width * channels)`, or
    `inf` when `image_shape` is not given.
    """
    if norm_name(norm) == "inf":
        return PIXEL_MAX
    if image_shape is None:
        return math.inf
    return PIXEL_MAX * math.sqrt(float(np.prod(image_shape)))


def check_radius(
    name: str, value: float | None, norm: str | int | float, image_shape: Sequence[int] | None = None
) -> None:
    """Raises `ValueError` naming `value` when it exceeds `max_radius(norm, image_shape)`."""
    limit = max_radius(norm, image_shape)
    if value is not None and value > limit:
        where = "L-inf" if norm_name(norm) == "inf" else f"L2 on {'x'.join(map(str, image_shape))} images"
        raise ValueError(
            f"Expected {name} to be <= {limit:g} ({where}, pixel units of [0, 255]). Received: {name}={value!r}"
        )


def round_into_ball(x, x0, *, norm: str | int | float, eps: float) -> np.ndarray:
    """Integer images inside the `eps` ball around `x0` and inside [0, 255], close to `x`.

    The rounding `quantize=True` attacks apply at every step: to nearest,
    except where that would leave the ball, where pixels are rounded toward
    the original (for L2 the fewest and least-changed pixels needed).

    Args:
        x: float images inside the ball and inside [0, 255].
        x0: integer-valued originals, same shape.
        norm: `"inf"` or `"2"`.
        eps: the radius, in pixel units.

    Returns:
        float32 images holding integers.
    """
    eps = float(eps)
    rounded = _NORMS[norm_name(norm)].quantize(
        tf.constant(x, tf.float32),
        tf.constant(x0, tf.float32),
        tf.constant(eps, tf.float32),
        tf.constant(math.floor(eps), tf.float32),
    )
    return np.asarray(rounded, np.float32)


def perturbation_norms(originals, adversarials) -> tuple[np.ndarray, np.ndarray]:
    """L-inf and L2 norms of `adversarials - originals`, per image, in pixel units.

    Computed in float64, so they are exact for uint8 images.

    Returns:
        `(linf, l2)`, two float64 arrays of shape `(batch,)`.
    """
    a = np.asarray(originals, np.float64)
    b = np.asarray(adversarials, np.float64)
    if a.shape != b.shape or a.ndim < 2:
        raise ValueError(
            f"Expected two batches of images of the same shape. Received shapes {a.shape} and {b.shape}"
        )
    delta = (b - a).reshape(len(a), -1)
    if delta.shape[1] == 0:
        return np.zeros(len(a)), np.zeros(len(a))
    return np.abs(delta).max(axis=1), np.sqrt(np.square(delta).sum(axis=1))


# --------------------------------------------------------------------------
# Criteria: what counts as success.
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class Misclassification:
    """Untargeted: an image succeeds when its predicted class is not its label.

    Attributes:
        labels: the true class of each image (one int for all). Defaults to
            `None`: the model's own predictions on the original images, which
            avoids "label leaking" (Kurakin et al. 2017) and is what
            "the prediction changed" means for images without labels.
    """

    labels: int | Sequence[int] | np.ndarray | None = None
    targeted: ClassVar[bool] = False


@dataclasses.dataclass(frozen=True, eq=False)
class TargetedMisclassification:
    """Targeted: an image succeeds when the model predicts its target class.

    Attributes:
        target_classes: the target class of each image (one int for all).
    """

    target_classes: int | Sequence[int] | np.ndarray
    targeted: ClassVar[bool] = True


Criterion = Misclassification | TargetedMisclassification


def _broadcast_classes(values, n: int, num_classes: int, what: str) -> np.ndarray:
    array = np.asarray(values)
    if array.dtype == bool or not np.issubdtype(array.dtype, np.integer):
        if not (np.issubdtype(array.dtype, np.floating) and np.all(array == np.round(array))):
            raise ValueError(f"Expected integer class indices for {what}. Received: {values!r}")
    array = np.broadcast_to(array.astype(np.int64), (n,)) if array.ndim == 0 else array.astype(np.int64)
    if array.shape != (n,):
        raise ValueError(f"Expected one class per image ({n}) or one for all for {what}. Received shape {array.shape}")
    if array.size and (array.min() < 0 or array.max() >= num_classes):
        bad = array[(array < 0) | (array >= num_classes)][0]
        raise ValueError(f"Class index out of range for {what}: expected 0 <= class < {num_classes}. Received: {bad}")
    return array.astype(np.int32)


def resolve_criterion(
    criterion: Criterion | None,
    model: keras.Model,
    images,
    *,
    batch_size: int = 32,
) -> tuple[bool, np.ndarray]:
    """`(targeted, classes)` of a criterion for `images` on `model`.

    `classes` holds the target class (targeted) or the class to move away from
    (untargeted) of every image; `Misclassification()` without labels uses the
    model's predictions on `images`.
    """
    criterion = Misclassification() if criterion is None else criterion
    if not isinstance(criterion, (Misclassification, TargetedMisclassification)):
        raise TypeError(
            "Expected criterion to be Misclassification(labels) or TargetedMisclassification(targets). "
            f"Received: criterion={criterion!r}"
        )
    logits_model = _logits_model(model)
    num_classes = int(logits_model.outputs[0].shape[-1])
    n = len(images)
    if isinstance(criterion, TargetedMisclassification):
        return True, _broadcast_classes(criterion.target_classes, n, num_classes, "target_classes")
    if criterion.labels is None:
        return False, np.argmax(predict_logits(model, images, batch_size=batch_size), axis=1).astype(np.int32)
    return False, _broadcast_classes(criterion.labels, n, num_classes, "labels")


def is_adversarial(logits, classes, *, targeted: bool) -> np.ndarray:
    """Whether each prediction meets the criterion (`argmax == target` or `argmax != label`)."""
    predicted = np.argmax(np.asarray(logits), axis=-1)
    classes = np.asarray(classes)
    return predicted == classes if targeted else predicted != classes


# --------------------------------------------------------------------------
# Compiled functions, cached per model.
# --------------------------------------------------------------------------

# model -> (logits model, {key: compiled function}). Weak keys, and the
# functions hold the logits model only through a weak reference (their graphs
# capture its variables), so a dropped model is freed with its functions.
_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _entry(model: keras.Model) -> tuple[keras.Model, dict]:
    if not isinstance(model, keras.Model):
        raise TypeError(f"Expected a keras.Model. Received: model of type {type(model).__name__}")
    entry = _CACHE.get(model)
    if entry is None:
        logits_model = models_lib.as_logits_model(model)
        entry = (logits_model, {})
        _CACHE[model] = entry
    return entry


def _logits_model(model: keras.Model) -> keras.Model:
    return _entry(model)[0]


def _image_spec(logits_model: keras.Model) -> tf.TensorSpec:
    shape = tuple(logits_model.inputs[0].shape)
    if len(shape) != 4 or shape[-1] != 3:
        raise ValueError(f"Expected a model taking RGB images (batch, height, width, 3). Received: input shape {shape}")
    return tf.TensorSpec((None, *shape[1:]), tf.float32)


def _forward_fn(model: keras.Model) -> Callable:
    logits_model, fns = _entry(model)
    if "forward" not in fns:
        ref = weakref.ref(logits_model)

        @tf.function(input_signature=[_image_spec(logits_model)])
        def forward(x):
            return tf.cast(ref()(x, training=False), tf.float32)

        fns["forward"] = forward
    return fns["forward"]


def predict_logits(model: keras.Model, images, *, batch_size: int = 32) -> np.ndarray:
    """Logits of `images` (pixels in [0, 255], any dtype), in batches.

    A model ending in softmax gives its pre-softmax logits.

    Args:
        model: a classifier taking RGB pixels in [0, 255].
        images: array `(batch, height, width, 3)`.
        batch_size: images per forward pass. Defaults to `32`.

    Returns:
        float32 array `(batch, num_classes)`.
    """
    batch_size = _BATCH_SIZE.check("batch_size", batch_size)
    forward = _forward_fn(model)
    images = np.asarray(images)
    outputs = [
        forward(tf.constant(images[i : i + batch_size], tf.float32)).numpy() for i in range(0, len(images), batch_size)
    ]
    if not outputs:
        num_classes = int(_logits_model(model).outputs[0].shape[-1])
        return np.zeros((0, num_classes), np.float32)
    return np.concatenate(outputs)


def network_rate(
    model: keras.Model,
    *,
    batch_size: int,
    steps: int = 10,
    backward: bool = True,
    image_shape: Sequence[int] | None = None,
) -> float:
    """Batches per second of the bare compiled network: the ceiling of every loop on it.

    Times `model`'s logits (softmax removed) and, with `backward`, their
    gradient with respect to the input: the work an attack step or a class
    visualization step cannot avoid, with nothing else around it. Random
    images of the model's input size; one untimed call first.

    Args:
        model: a classifier taking RGB pixels in [0, 255].
        batch_size: images per pass.
        steps: timed passes. Defaults to `10`.
        backward: include the gradient with respect to the input. Defaults
            to `True` (`False`: the forward pass alone).
        image_shape: `(height, width, 3)` of the images. Defaults to `None`:
            the model's input shape (which must then be fully defined).
    """
    logits_model, fns = _entry(model)
    if "ceiling" not in fns:
        ref = weakref.ref(logits_model)

        @tf.function(input_signature=[_image_spec(logits_model)])
        def forward_backward(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                total = tf.reduce_sum(tf.cast(ref()(x, training=False), tf.float32)[:, 0])
            return tape.gradient(total, x)

        fns["ceiling"] = forward_backward
    fn = fns["ceiling"] if backward else _forward_fn(model)
    image_shape = tuple(image_shape or logits_model.inputs[0].shape[1:])
    if None in image_shape:
        raise ValueError(f"The model takes images of any size; pass image_shape. Received input shape {image_shape}")
    shape = (_BATCH_SIZE.check("batch_size", batch_size), *image_shape)
    x = tf.constant(np.random.default_rng(0).uniform(PIXEL_MIN, PIXEL_MAX, shape).astype(np.float32))
    fn(x).numpy()
    start = time.perf_counter()
    for _ in range(_BATCH_SIZE.check("steps", steps)):
        out = fn(x)
    out.numpy()
    return steps / (time.perf_counter() - start)


def _objective(logits: tf.Tensor, classes: tf.Tensor, *, kind: str, targeted: bool) -> tf.Tensor:
    """The per-image value each step ascends."""
    if kind == "crossentropy":
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=classes, logits=logits)
        return -ce if targeted else ce
    if kind == "margin":
        # The logit margin (Carlini and Wagner 2017): positive exactly when
        # the criterion is met, and, unlike the cross-entropy of a confident
        # model, its gradient does not vanish as the softmax saturates.
        own = tf.gather(logits, classes, axis=1, batch_dims=1)
        is_own = tf.one_hot(classes, tf.shape(logits)[-1], on_value=True, off_value=False)
        best_other = tf.reduce_max(tf.where(is_own, tf.float32.min, logits), axis=-1)
        return own - best_other if targeted else best_other - own
    if kind == "logit":
        score = tf.gather(logits, classes, axis=1, batch_dims=1)
    else:  # log_prob
        score = tf.gather(tf.nn.log_softmax(logits, axis=-1), classes, axis=1, batch_dims=1)
    return score if targeted else -score


def _success(logits: tf.Tensor, classes: tf.Tensor, targeted: bool) -> tf.Tensor:
    predicted = tf.argmax(logits, axis=-1, output_type=tf.int32)
    return tf.equal(predicted, classes) if targeted else tf.not_equal(predicted, classes)


@dataclasses.dataclass(frozen=True)
class _Plan:
    """How an attack runs the shared loop."""

    norm: str
    eps: float  # math.inf for unbounded
    steps: int
    step_size: float
    random_start: bool
    early_stop: bool
    quantize: bool
    objective: str  # crossentropy | margin | logit | log_prob
    direction: str  # "norm": the norm's steepest direction; "rms": gradient / its RMS

    @property
    def key(self) -> tuple:
        return (self.norm, self.quantize, self.objective, self.direction)


def _seen(plan: _Plan, x: tf.Tensor, box: Sequence[tf.Tensor], eps: tf.Tensor, radius: tf.Tensor) -> tf.Tensor:
    """What the model is shown of the iterate `x`: its rounding (see `_Norm.rounded`) as float32, or `x`."""
    return tf.cast(_NORMS[plan.norm].rounded(x, box, eps, radius), tf.float32) if plan.quantize else x


def _attack_loop(model: keras.Model, plan: _Plan, targeted: bool) -> _Loop:
    """The shared loop for `model` and `plan`, compiled once per model and plan key."""
    logits_model, fns = _entry(model)
    key = ("attack", *plan.key, targeted)
    if key not in fns:
        fns[key] = _Loop(logits_model, plan, targeted)
    return fns[key]


class _Loop:
    """The compiled loop of one logits model, `_Plan.key` and criterion kind.

    `run_steps` runs the attack on a pool of images, refilled from a window
    of originals; `judge` is a forward pass and its success.

    All the elementwise work of a step is one XLA kernel for L-inf (compiled
    inside a loop that is not): the projected step, the rounding the next step
    shows the model, and the images entering the pool in place of those that
    finished (random start, box, rounding). L2's rounding (histograms in
    float64) is left to TF.
    """

    def __init__(self, logits_model: keras.Model, plan: _Plan, targeted: bool):
        self._model = weakref.ref(logits_model)
        self._plan, self._norm, self._targeted = plan, _NORMS[plan.norm], targeted
        self._advance = tf.function(self._advance_pool, jit_compile=plan.norm == "inf")
        # The whole loop runs in the graph: a step, the bookkeeping of finished
        # images and the refill of their slots cost no round trip to Python (at
        # batch 8, those round trips and refill calls took 10-15% of the time).
        self.run_steps = tf.function(self._run_steps, reduce_retracing=True)
        image = _image_spec(logits_model)
        self.judge = tf.function(self._judge, input_signature=[image, tf.TensorSpec((None,), tf.int32)])

    def _moved(self, x, grad, box, eps, radius, step_size):
        """The projected step from `x` along `grad`, and its rounding."""
        if self._plan.direction == "rms":
            rms = tf.sqrt(tf.reduce_mean(tf.square(grad), axis=tf.range(1, tf.rank(grad)), keepdims=True))
            move = grad / tf.maximum(rms, _TINY)
        else:
            move = self._norm.direction(grad)
        x = self._norm.advance(x, step_size * move, box, eps)
        return x, _seen(self._plan, x, box, eps, radius)

    def _advance_pool(self, pool: _Pool, grad, entering, originals, seeds, image_shape, eps, radius, step_size,
                      random_start) -> _Pool:
        """The pool after a step along `grad`, slot s holding image `entering[s]` of `originals` instead where >= 0.

        `originals` (see `_store`) and their `seeds` are the images entering,
        a power-of-two number of rows (see `_refill`).
        """
        norm = self._norm
        box = [_unstore(part, tf.shape(pool.x)) for part in pool.box]
        x, seen = self._moved(pool.x, grad, box, eps, radius, step_size)
        originals = tf.cast(_unstore(originals, image_shape), tf.float32)
        start_box = norm.box(originals, eps, radius, quantize=self._plan.quantize)
        # (Its Python body, traced into this kernel with the rest of the step.)
        start = (_random_starts.python_function(originals, seeds, eps, norm=self._plan.norm) if random_start
                 else originals)

        def enter(old, new):  # each slot's row of `new` where an image enters, else `old`
            rows = tf.gather(new, tf.maximum(entering, 0))
            return tf.where(tf.reshape(entering >= 0, [-1] + [1] * (len(old.shape) - 1)), rows, old)

        return pool._replace(
            x=enter(x, start),
            seen=enter(seen, _seen(self._plan, start, start_box, eps, radius)),
            box=[enter(old, _store(new)) for old, new in zip(pool.box, start_box)],
        )

    def _record(self, pool: _Pool, results: _Results, grad, logits, limits: _Limits) -> _Pool:
        """Writes the images that succeeded or used every step into `results`; frees their slots."""
        quantize = self._plan.quantize
        ok = _success(logits, pool.cls, self._targeted) & limits.early_stop
        spent = pool.spent + 1
        out_of_budget = ~ok & (spent >= limits.steps)
        won, last, done = tf.where(ok)[:, 0], tf.where(out_of_budget)[:, 0], tf.where(ok | out_of_budget)
        won_images = tf.gather(pool.image, won)[:, None]
        results.seen.scatter_nd_update(won_images, _as_result(tf.gather(pool.seen, won), quantize))
        results.logits.scatter_nd_update(won_images, tf.gather(logits, won))
        results.success.scatter_nd_update(won_images, tf.ones_like(won, tf.bool))
        # An image out of steps is judged on its last iterate, rounded (its step
        # taken here, outside the kernel that puts the next image in its slot);
        # the forward pass of that look is batched after the loop (`_judge_pending`).
        last_box = [_unstore(tf.gather(part, last), tf.shape(pool.x)) for part in pool.box]
        _, last_seen = self._moved(tf.gather(pool.x, last), tf.gather(grad, last), last_box, limits.eps,
                                   limits.radius, limits.step_size)
        last_images = tf.gather(pool.image, last)[:, None]
        results.seen.scatter_nd_update(last_images, _as_result(last_seen, quantize))
        results.pending.scatter_nd_update(last_images, tf.ones_like(last, tf.bool))
        results.spent.scatter_nd_update(tf.gather_nd(pool.image, done)[:, None], tf.gather_nd(spent, done))
        image = tf.tensor_scatter_nd_update(pool.image, done, tf.fill(tf.shape(done)[:1], -1))
        return pool._replace(image=image, spent=spent)

    def _refill(self, pool: _Pool, grad, window: _Window, cursor: tf.Variable, limits: _Limits) -> _Pool:
        """The pool after a step along `grad` (zero: none), free slots filled with the window's next images in
        order; with none left, without its free slots."""
        free = tf.cast(tf.where(pool.image < 0)[:, 0], tf.int32)
        start = cursor.read_value()
        take = tf.minimum(tf.size(free), tf.shape(window.classes)[0] - start)
        # The entering images as a power of two of rows (the last one repeated), so
        # that the kernel compiles for a few sizes only.
        rows = tf.minimum(tf.range(start, start + _power_of_two_at_least(tf.maximum(take, 1))),
                          tf.maximum(start + take - 1, 0))
        slots = free[:take, None]
        entering = tf.tensor_scatter_nd_update(tf.fill(tf.shape(pool.image), -1), slots, tf.range(take))
        # (No random draw when no image enters: an L2 start costs a normal draw per pixel.)
        pool = self._advance(pool, grad, entering, tf.gather(window.x0, rows), tf.gather(window.seeds, rows),
                             window.image_shape, limits.eps, limits.radius, limits.step_size,
                             limits.random_start & (take > 0))
        new = tf.range(start, start + take)
        pool = pool._replace(
            cls=tf.tensor_scatter_nd_update(pool.cls, slots, tf.gather(window.classes, new)),
            image=tf.tensor_scatter_nd_update(pool.image, slots, new + window.offset),
            spent=tf.tensor_scatter_nd_update(pool.spent, slots, tf.zeros_like(new)),
        )
        cursor.assign(start + take)
        if window.last and take < tf.size(free):
            # No image left to start: the pool shrinks to the images still running.
            keep = tf.where(pool.image >= 0)[:, 0]
            pool = tf.nest.map_structure(lambda part: tf.gather(part, keep), pool)
        return pool

    def _run_steps(self, variables: _PoolVariables, results: _Results, window: _Window, cursor, limits: _Limits,
                   max_steps):
        # The pool is the loop's state, in tensors: TF's sparse updates of a
        # variable make every later read and write of it a copy.
        pool = _Pool.read(variables)
        pool = self._refill(pool, tf.zeros_like(pool.x), window, cursor, limits)
        taken = tf.constant(0)
        while taken < max_steps and tf.size(pool.image) > 0 and tf.reduce_all(pool.image >= 0):
            taken += 1
            # The model sees (and success is judged on) the rounded image
            # `seen`; the float iterate x accumulates the steps, so steps
            # smaller than one grey level still add up.
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(pool.seen)
                logits = tf.cast(self._model()(pool.seen, training=False), tf.float32)
                # Images are independent (inference mode), so the gradient of
                # the sum is each image's own gradient.
                objective = _objective(logits, pool.cls, kind=self._plan.objective, targeted=self._targeted)
                total = tf.reduce_sum(objective)
            grad = tape.gradient(total, pool.seen)
            pool = self._refill(self._record(pool, results, grad, logits, limits), grad, window, cursor, limits)
        pool.write(variables)
        return taken

    def _judge(self, seen, cls):
        logits = tf.cast(self._model()(seen, training=False), tf.float32)
        return logits, _success(logits, cls, self._targeted)


# --------------------------------------------------------------------------
# Results.
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class AttackResult:
    """What an attack returns.

    Attributes:
        adversarial: the adversarial images, uint8 when the attack quantizes
            (the default), else float32; same shape as the input.
        success: bool `(batch,)`, whether each returned image meets the
            criterion (judged on `adversarial` itself).
        logits: float32 `(batch, num_classes)`, the model's logits on
            `adversarial`.
        classes: int32 `(batch,)`, the target class of each image (targeted)
            or the class it had to leave (untargeted).
        targeted: whether the criterion was targeted.
        gradient_steps: int32 `(batch,)`, forward-and-backward passes spent
            on each image (an image that succeeds at its k-th look costs k).
        seconds: wall time of the attack (compilation included on a model's
            first attack).
        restart: int32 `(batch,)`, the run (0 = the first, then the
            restarts) that found each adversarial image; -1 where none did.
            Defaults to `None` (not recorded).
    """

    adversarial: np.ndarray
    success: np.ndarray
    logits: np.ndarray
    classes: np.ndarray
    targeted: bool
    gradient_steps: np.ndarray
    seconds: float
    restart: np.ndarray | None = None

    @property
    def success_rate(self) -> float:
        return float(np.mean(self.success)) if len(self.success) else float("nan")

    @property
    def probabilities(self) -> np.ndarray:
        return softmax(self.logits)

    @property
    def images_per_second(self) -> float:
        return len(self.success) / self.seconds if self.seconds > 0 else float("nan")


def softmax(logits) -> np.ndarray:
    """Class probabilities of `logits` (`keras.ops.softmax` in float64, returned as float32)."""
    return keras.ops.convert_to_numpy(keras.ops.softmax(np.asarray(logits, np.float64), axis=-1)).astype(np.float32)


# --------------------------------------------------------------------------
# Attacks.
# --------------------------------------------------------------------------


_BATCH_SIZE = Int(min=1)
_POSITIVE = Real(min=0, min_open=True)
_EPSILONS = settings.Many(Real(min=0))
_NORM_HELP = "norm of the ball: 'inf' or '2' (also np.inf, 2, 'linf', 'l2')."
_EPS_HELP = "radius of the ball, in pixel units of the [0, 255] input (at most 255 for L-inf)."
_EARLY_STOP_HELP = "stop each image as soon as it meets the criterion; False runs every step."
_SEED = Optional(Int(min=0))
_LOSS_HELP = (
    "the loss ascended: 'crossentropy' or 'margin' (the logit margin, which does not saturate on a "
    "confident model)."
)
_RESTARTS_HELP = "runs per image: an image still unbroken after a run is attacked again from a new random start."
# Restart r draws its random starts from seed + r * _RESTART_STRIDE (a prime).
_RESTART_STRIDE = 1_000_003


def _as_images(images, model: keras.Model, *, quantize: bool) -> np.ndarray:
    array = np.asarray(images)
    if array.ndim != 4 or array.shape[-1] != 3:
        raise ValueError(
            f"Expected a batch of RGB images of shape (batch, height, width, 3). Received shape {array.shape}"
        )
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ValueError(f"Expected images of an integer or float dtype. Received dtype {array.dtype}")
    expected = tuple(_logits_model(model).inputs[0].shape[1:3])
    if any(e is not None and e != s for e, s in zip(expected, array.shape[1:3])):
        raise ValueError(
            f"The model takes {expected[0]}x{expected[1]} images. Received images of shape {array.shape}; "
            "resize them first (keras_transfer.data.load_image_files does)."
        )
    # uint8 photos stay uint8 (converted per batch as they enter the pool):
    # a float32 copy of the whole set costs more than several attack steps.
    x = array if array.dtype == np.uint8 else array.astype(np.float32)
    if x.size:
        if not np.all(np.isfinite(x)):
            raise ValueError("Expected finite pixel values. Received images with NaN or infinite values.")
        low, high = float(x.min()), float(x.max())
        if low < PIXEL_MIN or high > PIXEL_MAX:
            raise ValueError(
                f"Expected pixels in [0, 255]. Received images with values in [{low}, {high}]; "
                "models of this package take raw RGB pixels (preprocessing is inside the model)."
            )
        if quantize and not np.issubdtype(array.dtype, np.integer) and not np.all(x == np.round(x)):
            frac = x[x != np.round(x)][0]
            raise ValueError(
                "quantize=True returns uint8 images inside the epsilon ball, which exists only around "
                f"integer-valued originals. Received float images with fractional values (e.g. {frac}). "
                "Round them first (np.round(images).astype(np.uint8)), or pass quantize=False to attack "
                "them as floats and get float32 results."
            )
    return x


@dataclasses.dataclass(frozen=True, kw_only=True)
class _GradientAttack(abc.ABC):
    """The loop shared by every attack; subclasses only describe a `_Plan`.

    Fields are `keras_transfer.settings.setting`s (default, valid values and
    help declared together), checked when the attack is made.
    """

    quantize: bool = setting(
        True, kind=Flag(),
        help="return uint8 images, judged after rounding (see the module docstring); False returns float32.",
    )
    name: ClassVar[str] = ""

    def __post_init__(self):
        if hasattr(self, "norm"):
            object.__setattr__(self, "norm", norm_name(self.norm))
        settings.validate(self)
        self.check_radii()

    def _radii(self) -> list[tuple[str, float | None, str]]:
        """`(name, value, norm)` of every field in pixel units, bounded by `max_radius`."""
        return []

    def check_radii(self, image_shape: Sequence[int] | None = None) -> None:
        """Raises `ValueError` when `eps` or the step exceeds `max_radius` for images of `image_shape`.

        Checked when the attack is made (L-inf), and again by `__call__`
        with the images' shape (L2).
        """
        for name, value, norm in self._radii():
            check_radius(name, value, norm, image_shape)

    @abc.abstractmethod
    def _plan(self) -> _Plan: ...

    def describe(self) -> str:
        """A one-line summary, e.g. `"PGD L-inf eps=4, 10 steps of 1"`."""
        plan = self._plan()
        norm = "L-inf" if plan.norm == "inf" else "L2"
        bound = f"eps={plan.eps:g}" if math.isfinite(plan.eps) else "unbounded"
        steps = f"{plan.steps} step{'s' * (plan.steps != 1)} of {plan.step_size:g}"
        return f"{self.name} {norm} {bound}, {steps}{_loss_and_restarts(self)}"

    def __call__(
        self,
        model: keras.Model,
        images,
        criterion: Criterion | None = None,
        *,
        batch_size: int = 32,
        seed: int | None = 0,
        verbose: int = 0,
    ) -> AttackResult:
        """Attacks a batch of images.

        Args:
            model: a classifier taking RGB pixels in [0, 255] and returning
                one score vector per image (logits; a final softmax is
                removed).
            images: array `(batch, height, width, 3)` of pixels in [0, 255];
                uint8 (or integer-valued floats) when `quantize=True`.
            criterion: `TargetedMisclassification(target_classes)` or
                `Misclassification(labels)`. Defaults to `None`:
                `Misclassification()`, i.e. change the model's prediction.
            batch_size: images attacked at once. Defaults to `32`.
            seed: seed of the random start; equal seeds give equal results.
                Defaults to `0`.
            verbose: 1 shows a progress bar. Defaults to `0`.

        Returns:
            An `AttackResult`.
        """
        batch_size = _BATCH_SIZE.check("batch_size", batch_size)
        seed = _SEED.check("seed", seed)
        plan = self._plan()
        start = time.perf_counter()
        x0 = _as_images(images, model, quantize=plan.quantize)
        self.check_radii(x0.shape[1:])
        targeted, classes = resolve_criterion(criterion, model, x0, batch_size=batch_size)
        base_seed = int(np.random.SeedSequence().entropy % 2**63) if seed is None else seed
        outcome = _Outcome.empty(x0, int(_logits_model(model).outputs[0].shape[-1]), quantize=plan.quantize)
        restart = np.full(len(x0), -1, np.int32)
        todo = np.arange(len(x0))
        if plan.quantize and plan.eps < 1:
            # The only integer image within eps < 1 of an integer original is
            # the original itself: nothing to attack, one look at it.
            logits = predict_logits(model, x0, batch_size=batch_size)
            outcome.adversarial[:], outcome.logits[:] = x0, logits
            outcome.success[:] = is_adversarial(logits, classes, targeted=targeted)
            restart[outcome.success] = 0
            todo = todo[:0]
        for r in range(getattr(self, "restarts", 1) if todo.size else 0):
            # Only the images no earlier run broke are attacked again, from a
            # new random start (seed stream `seed + r * _RESTART_STRIDE`).
            every = todo.size == len(x0)
            adversarial, logits, success, steps = self._run_once(
                model, x0 if every else x0[todo], classes[todo], targeted, batch_size=batch_size,
                seed=base_seed + r * _RESTART_STRIDE, ids=todo, verbose=verbose,
            )
            if every:  # the first run's arrays are the results: no copy (half a millisecond an image in float32)
                outcome.adversarial, outcome.logits, outcome.success = adversarial, logits, success
            else:
                outcome.adversarial[todo], outcome.logits[todo] = adversarial, logits
                outcome.success[todo] = success
            outcome.spent[todo] += steps
            restart[todo[success]] = r
            todo = todo[~success]
            if todo.size == 0:
                break
        return AttackResult(
            adversarial=outcome.adversarial,
            success=outcome.success,
            logits=outcome.logits,
            classes=classes,
            targeted=targeted,
            gradient_steps=outcome.spent,
            seconds=time.perf_counter() - start,
            restart=restart,
        )

    def _run_once(self, model, x0, classes, targeted, *, batch_size, seed, ids, verbose):
        """One run over `x0` (a restart): `(adversarial, logits, success, gradient_steps)`."""
        return _run(model, x0, classes, targeted, self._plan(), batch_size, seed, verbose, ids=ids)


def _loss_and_restarts(attack) -> str:
    """`", margin loss, 3 restarts"`: the parts of a description that differ from the defaults."""
    text = ", margin loss" if getattr(attack, "loss", None) == "margin" else ""
    restarts = getattr(attack, "restarts", 1)
    return text + (f", {restarts} runs (restarts)" if restarts > 1 else "")


@dataclasses.dataclass
class _Outcome:
    """Per-image results of an attack, over its restarts."""

    adversarial: np.ndarray
    logits: np.ndarray
    success: np.ndarray
    spent: np.ndarray  # gradient steps per image

    @classmethod
    def empty(cls, x0: np.ndarray, num_classes: int, *, quantize: bool = False) -> _Outcome:
        n = len(x0)
        return cls(
            # Rounded images are integers: uint8 holds them exactly in a quarter of the memory.
            adversarial=np.empty(x0.shape, np.uint8 if quantize else np.float32),
            logits=np.zeros((n, num_classes), np.float32),
            success=np.zeros(n, bool),
            spent=np.zeros(n, np.int32),
        )


class _Pool(NamedTuple):
    """The images being attacked, one per slot: the compiled loop's state.

    `x` is each image's float iterate and `seen` its rounding (what the model
    sees; `x` itself without rounding); `box` holds the per-image constants
    of the norm's step (see `_Norm.box`, kept by `_store`); `image` the index
    of the image in the attacked set (-1: free) and `spent` its gradient steps.
    """

    x: tf.Tensor
    seen: tf.Tensor
    box: list[tf.Tensor]
    cls: tf.Tensor
    image: tf.Tensor
    spent: tf.Tensor

    @classmethod
    def read(cls, variables: _PoolVariables) -> _Pool:
        x = variables.x.read_value()
        return cls(x=x, seen=x if variables.seen is None else variables.seen.read_value(),
                   box=[part.read_value() for part in variables.box], cls=variables.cls.read_value(),
                   image=variables.image.read_value(), spent=variables.spent.read_value())

    def write(self, variables: _PoolVariables) -> None:
        for variable, value in zip(tf.nest.flatten(variables), tf.nest.flatten(self)):
            if variable is not None:
                variable.assign(value)


class _PoolVariables(NamedTuple):
    """A `_Pool` between calls of the compiled loop (`seen` is `None` without rounding)."""

    x: tf.Variable
    seen: tf.Variable | None
    box: list[tf.Variable]
    cls: tf.Variable
    image: tf.Variable
    spent: tf.Variable


class _Results(NamedTuple):
    """Per-image results of one run, written by the compiled loop as images finish.

    `pending`: the image used every step; its `seen` (the rounded last
    iterate) still needs its forward pass (`logits`, `success`).
    """

    seen: tf.Variable
    logits: tf.Variable
    success: tf.Variable
    spent: tf.Variable
    pending: tf.Variable


class _Window(NamedTuple):
    """The next images to attack: originals (see `_store`), their shape, classes, start seeds, the index of the
    first, whether none follow."""

    x0: tf.Tensor
    image_shape: tf.Tensor
    classes: tf.Tensor
    seeds: tf.Tensor
    offset: tf.Tensor
    last: tf.Tensor


class _Limits(NamedTuple):
    """A plan's numbers, as tensors (the compiled loop is traced once per model and `_Plan.key`)."""

    eps: tf.Tensor
    radius: tf.Tensor
    step_size: tf.Tensor
    steps: tf.Tensor
    early_stop: tf.Tensor
    random_start: tf.Tensor

    @classmethod
    def of(cls, plan: _Plan) -> _Limits:
        return cls(
            eps=tf.constant(plan.eps, tf.float32),
            radius=tf.constant(math.floor(plan.eps) if math.isfinite(plan.eps) else math.inf, tf.float32),
            step_size=tf.constant(plan.step_size, tf.float32),
            steps=tf.constant(plan.steps, tf.int32),
            early_stop=tf.constant(plan.early_stop),
            random_start=tf.constant(plan.random_start),
        )


def _power_of_two_at_least(n: tf.Tensor) -> tf.Tensor:
    """The smallest power of two >= `n` (int32, 1 <= n <= 2**30)."""
    bits = tf.reduce_sum(tf.cast(tf.bitwise.right_shift(n - 1, tf.range(31)) > 0, tf.int32))
    return tf.bitwise.left_shift(1, bits)


def _variable(value) -> tf.Variable:
    # Any number of rows: the pool shrinks once no image is left to start.
    value = tf.convert_to_tensor(value)
    return tf.Variable(value, shape=[None, *value.shape[1:]], trainable=False)


def _store(images: tf.Tensor) -> tf.Tensor:
    """How the loop keeps uint8 images: each as a row of uint32 words, four bytes a word; others as they are.

    TF's scatter and gather kernels move uint8 images byte by byte, about
    three times slower per element than float32 (measured: 0.6 ms to scatter
    2-3 images at 224 px, as much as the random starts of those images).
    """
    if images.dtype != tf.uint8:
        return images
    rows = tf.shape(images)[0]
    flat = tf.reshape(images, [rows, -1])
    flat = tf.pad(flat, [[0, 0], [0, tf.math.floormod(-tf.shape(flat)[1], 4)]])
    return tf.bitcast(tf.reshape(flat, [rows, -1, 4]), tf.uint32)


def _unstore(stored: tf.Tensor, shape: tf.Tensor) -> tf.Tensor:
    """The images `_store` kept, with the image shape of `shape`'s last three dimensions."""
    if stored.dtype != tf.uint32:
        return stored
    rows, image_shape = tf.shape(stored)[0], shape[-3:]
    flat = tf.reshape(tf.bitcast(stored, tf.uint8), [rows, -1])[:, : tf.reduce_prod(image_shape)]
    return tf.reshape(flat, tf.concat([[rows], image_shape], 0))


def _as_result(seen: tf.Tensor, quantize: bool) -> tf.Tensor:
    # Rounded images are integers: uint8 holds them exactly in a quarter of the memory.
    return _store(tf.cast(seen, tf.uint8)) if quantize else seen


def _stored_array(images: np.ndarray) -> np.ndarray:
    """`_store` of a numpy array (a view where the image size is a multiple of 4 bytes)."""
    if images.dtype != np.uint8:
        return images
    flat = np.ascontiguousarray(images).reshape(len(images), -1)
    if flat.shape[1] % 4:
        flat = np.pad(flat, ((0, 0), (0, -flat.shape[1] % 4)))
    return flat.view(np.uint32)


def _unstored_array(stored: np.ndarray, image_shape: tuple[int, ...]) -> np.ndarray:
    if stored.dtype != np.uint32:
        return stored
    flat = stored.view(np.uint8).reshape(len(stored), -1)[:, : math.prod(image_shape)]
    return flat.reshape(len(stored), *image_shape)


def _empty_pool(capacity: int, image_shape: tuple[int, ...], plan: _Plan) -> _PoolVariables:
    zeros = tf.zeros([capacity, *image_shape])
    box = _NORMS[plan.norm].box(zeros, tf.constant(0.0), tf.constant(0.0), quantize=plan.quantize)
    return _PoolVariables(
        x=_variable(zeros),
        seen=_variable(zeros) if plan.quantize else None,
        box=[_variable(_store(part)) for part in box],
        cls=_variable(tf.zeros([capacity], tf.int32)),
        image=_variable(tf.fill([capacity], -1)),
        spent=_variable(tf.zeros([capacity], tf.int32)),
    )


def _empty_results(x0: np.ndarray, num_classes: int, plan: _Plan) -> _Results:
    n = len(x0)
    return _Results(
        seen=_variable(_as_result(tf.zeros([n, *x0.shape[1:]]), plan.quantize)),
        logits=_variable(tf.zeros([n, num_classes])),
        success=_variable(tf.zeros([n], tf.bool)),
        spent=_variable(tf.zeros([n], tf.int32)),
        pending=_variable(tf.zeros([n], tf.bool)),
    )


# Originals handed to the compiled loop at a time (a float32 copy of a large set would double its memory).
_WINDOW_BYTES = 2**28
# Steps between progress bar updates (verbose): each update is a return to Python.
_PROGRESS_STEPS = 10


def _run(
    model: keras.Model,
    x0: np.ndarray,
    classes: np.ndarray,
    targeted: bool,
    plan: _Plan,
    batch_size: int,
    seed: int | None,
    verbose: int,
    *,
    ids: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The shared loop: a pool of `batch_size` slots, each refilled as its image finishes.

    Returns `(adversarial, logits, success, gradient_steps)`. `ids` name the
    images in the seeds of their random starts (see `_start_seeds`).
    """
    loop = _attack_loop(model, plan, targeted)
    n, num_classes = len(x0), int(_logits_model(model).outputs[0].shape[-1])
    if n == 0:
        return dataclasses.astuple(_Outcome.empty(x0, num_classes, quantize=plan.quantize))
    limits = _Limits.of(plan)
    base_seed = int(np.random.SeedSequence().entropy % 2**63) if seed is None else seed
    pool = _empty_pool(min(batch_size, n), x0.shape[1:], plan)
    results = _empty_results(x0, num_classes, plan)
    cursor = tf.Variable(0)
    max_steps = tf.constant(_PROGRESS_STEPS if verbose else 2**31 - 1)
    progbar = keras.utils.Progbar(n) if verbose else None
    window_size = max(batch_size, _WINDOW_BYTES // max(1, x0[0].size * 4))
    for start in range(0, n, window_size):
        stop = min(n, start + window_size)
        window = _Window(
            x0=tf.constant(_stored_array(x0[start:stop])),
            image_shape=tf.constant(x0.shape[1:], tf.int32),
            classes=tf.constant(classes[start:stop], tf.int32),
            seeds=_start_seeds(np.arange(start, stop), base_seed, ids),
            offset=tf.constant(start),
            last=tf.constant(stop == n),
        )
        cursor.assign(0)
        while True:
            loop.run_steps(pool, results, window, cursor, limits, max_steps)
            running = pool.image.numpy()
            if progbar is not None:
                progbar.update(start + int(cursor.numpy()) - int(np.sum(running >= 0)))
            # Back in Python: the pool is empty (the end), has a free slot (this window is used up), or the
            # progress bar is due.
            if running.size == 0 or np.any(running < 0):
                break
    return _judge_pending(loop.judge, results, classes, x0.shape[1:], batch_size)


def _judge_pending(judge, results: _Results, classes: np.ndarray, image_shape: tuple[int, ...], batch_size: int):
    """The results as arrays, after one forward pass over the images that used every step."""
    # (A variable's numpy() is a copy of its value, writable.)
    adversarial, logits, success, spent = (v.numpy() for v in results[:4])
    adversarial = _unstored_array(adversarial, image_shape)
    pending = np.flatnonzero(results.pending.numpy())
    for b in range(0, len(pending), batch_size):
        idx = pending[b : b + batch_size]
        batch_logits, ok = judge(tf.constant(adversarial[idx], tf.float32), tf.constant(classes[idx], tf.int32))
        logits[idx], success[idx] = batch_logits.numpy(), ok.numpy()
    return adversarial, logits, success, spent


def _start_seeds(images: np.ndarray, base_seed: int, ids: np.ndarray | None) -> tf.Tensor:
    """The seeds of the random starts of `images` (positions in the attacked set), one per image.

    `ids` (default: the positions) name the images in the seeds, so a start
    depends only on the seed and the image, not on the batch (nor on which
    images a restart still attacks).
    """
    keys = images if ids is None else np.asarray(ids)[images]
    return tf.constant(np.stack([np.full(len(keys), base_seed % 2**63), keys], axis=1), tf.int64)


def _starts(originals: tf.Tensor, images: np.ndarray, plan: _Plan, base_seed: int, ids: np.ndarray | None) -> tf.Tensor:
    """The first iterates: the `originals`, or random points of the ball around them (see `_start_seeds`)."""
    if not plan.random_start:
        return originals
    seeds = _start_seeds(images, base_seed, ids)
    return _random_starts(originals, seeds, tf.constant(plan.eps, tf.float32), norm=plan.norm)


# Drawn in the graph rather than by a numpy generator per image: numpy's draws and their
# conversion to a tensor cost about a step's time per 32 images entering the pool.
@tf.function(reduce_retracing=True)
def _random_starts(originals: tf.Tensor, seeds: tf.Tensor, eps: tf.Tensor, *, norm: str) -> tf.Tensor:
    noise = _NORMS[norm].random_points(tf.shape(originals), seeds, eps)
    return tf.clip_by_value(originals + noise, PIXEL_MIN, PIXEL_MAX)


@dataclasses.dataclass(frozen=True, kw_only=True)
class FGSM(_GradientAttack):
    """Fast gradient sign method: one step of size `eps` (Goodfellow et al. 2015).

    With `norm="2"` this is the fast gradient method (a step of L2 length
    `eps` along the gradient).

    Attributes:
        norm: `"inf"` or `"2"`. Defaults to `"inf"`.
        eps: radius of the ball, in pixel units of the [0, 255] input.
        loss: `"crossentropy"` or `"margin"` (see `PGD`). Defaults to
            `"crossentropy"`.
        quantize: return uint8 images, judged after rounding (see the module
            docstring). Defaults to `True`.
    """

    norm: str = setting("inf", kind=Choice(NORMS), help=_NORM_HELP)
    eps: float = setting(kind=_POSITIVE, help=_EPS_HELP)
    loss: str = setting("crossentropy", kind=Choice(LOSSES), help=_LOSS_HELP)
    name: ClassVar[str] = "FGSM"

    def _radii(self):
        return [("eps", self.eps, self.norm)]

    def _plan(self) -> _Plan:
        return _Plan(
            norm=self.norm,
            eps=float(self.eps),
            steps=1,
            step_size=float(self.eps),
            random_start=False,
            # An image already adversarial is left as it is; the single step
            # could undo that.
            early_stop=True,
            quantize=self.quantize,
            objective=self.loss,
            direction="norm",
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class PGD(_GradientAttack):
    """Projected gradient descent (Madry et al. 2018) on the cross-entropy or the logit margin.

    Every step moves by `step_size` along the norm's steepest direction
    (the sign of the gradient for L-inf, the normalized gradient for L2),
    projects back into the ball of radius `eps` around the original and clips
    to [0, 255].

    Loss. The cross-entropy (the default, as in Madry et al.) saturates on a
    confident model: its gradient vanishes with the softmax and the attack
    overstates robustness (Croce and Hein 2020). `loss="margin"` ascends the
    logit margin instead (Carlini and Wagner 2017; untargeted: the largest
    other logit minus the true class's; targeted: the target's logit minus
    the largest other), which does not saturate and is positive exactly when
    the criterion is met.

    Restarts. With `restarts=R`, an image that is not adversarial after a run
    is attacked again from a new random start, up to R runs: only the
    still-unbroken images are re-attacked, each result is the first
    adversarial image found, `gradient_steps` adds up over the runs and
    `AttackResult.restart` says which run succeeded. Restart r draws its
    starts from the seed stream `seed + r * 1_000_003`, so a seed fixes the
    result. Restarts need the random start (`BIM` rejects them: every run
    would repeat the first).

    Attributes:
        norm: `"inf"` or `"2"`. Defaults to `"inf"`.
        eps: radius of the ball, in pixel units of the [0, 255] input.
        steps: maximum number of steps per image. Defaults to `10`.
        step_size: length of a step in pixel units. Defaults to `None`:
            `2.5 * eps / steps` (Madry et al.), which can cross the ball.
        random_start: start from a uniform random point of the ball.
            Defaults to `True` (`BIM` is PGD without it).
        early_stop: stop each image as soon as it meets the criterion (a
            smaller perturbation, and no wasted work). `False` runs every
            step and returns the last iterate. Defaults to `True`.
        loss: `"crossentropy"` or `"margin"`. Defaults to `"crossentropy"`.
        restarts: runs per image, each from a new random start for the
            images still unbroken. Defaults to `1`.
        quantize: return uint8 images, judged after rounding (see the module
            docstring). Defaults to `True`.
    """

    norm: str = setting("inf", kind=Choice(NORMS), help=_NORM_HELP)
    eps: float = setting(kind=_POSITIVE, help=_EPS_HELP)
    steps: int = setting(10, kind=Int(min=1), help="maximum number of steps per image.")
    step_size: float | None = setting(
        None, kind=Optional(_POSITIVE), help="length of a step in pixel units; None: 2.5 * eps / steps."
    )
    random_start: bool = setting(True, kind=Flag(), help="start from a uniform random point of the ball.")
    early_stop: bool = setting(True, kind=Flag(), help=_EARLY_STOP_HELP)
    loss: str = setting("crossentropy", kind=Choice(LOSSES), help=_LOSS_HELP)
    restarts: int = setting(1, kind=Int(min=1), help=_RESTARTS_HELP)
    name: ClassVar[str] = "PGD"

    def __post_init__(self):
        super().__post_init__()
        _check_restarts(self)

    def _radii(self):
        return [("eps", self.eps, self.norm), ("step_size", self.step_size, self.norm)]

    @property
    def effective_step_size(self) -> float:
        return float(self.step_size) if self.step_size is not None else 2.5 * float(self.eps) / self.steps

    def _plan(self) -> _Plan:
        return _Plan(
            norm=self.norm,
            eps=float(self.eps),
            steps=int(self.steps),
            step_size=self.effective_step_size,
            random_start=bool(self.random_start),
            early_stop=bool(self.early_stop),
            quantize=self.quantize,
            objective=self.loss,
            direction="norm",
        )


def _check_restarts(attack) -> None:
    if attack.restarts > 1 and not attack.random_start:
        raise ValueError(
            f"Restarts need random_start=True: without a random start every run of {attack.name} repeats "
            f"the first. Received: restarts={attack.restarts!r}, random_start=False"
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class BIM(PGD):
    """Basic iterative method (Kurakin et al. 2016): `PGD` starting at the original.

    It takes no `restarts` (without a random start, every run would repeat
    the first): `restarts > 1` is rejected.
    """

    random_start: bool = setting(False, kind=Flag(), help="start from a uniform random point of the ball.")
    name: ClassVar[str] = "BIM"


@dataclasses.dataclass(frozen=True, kw_only=True)
class LessonAttack(_GradientAttack):
    """The lesson's attack: gradient ascent on the target's class score, unbounded.

    The class-visualization loop started from a photo instead of noise: each
    step adds the gradient of the target class score (normalized to an RMS of
    `step_size` pixel levels) and clips to [0, 255], until the model predicts
    the target. Nothing bounds the total change, which is the point of the
    comparison with `PGD`. Untargeted, it descends the score of the image's
    class instead.

    Attributes:
        steps: maximum number of steps per image. Defaults to `100`.
        step_size: RMS change of one step, in pixel units. Defaults to `1.0`.
        objective: `"logit"` (the raw class score, as class visualization
            uses) or `"log_prob"`. Defaults to `"logit"`.
        eps: optional bound, to compare with the bounded attacks at equal
            budget. Defaults to `None` (unbounded).
        norm: norm of `eps` when given. Defaults to `"inf"`.
        early_stop: stop each image once it meets the criterion. Defaults to
            `True`.
        quantize: return uint8 images, judged after rounding. Defaults to
            `True`.
    """

    steps: int = setting(100, kind=Int(min=1), help="maximum number of steps per image.")
    step_size: float = setting(1.0, kind=_POSITIVE, help="RMS change of one step, in pixel units.")
    objective: str = setting(
        "logit", kind=Choice(LESSON_OBJECTIVES), help="the class score ascended: the logit or the log-probability."
    )
    eps: float | None = setting(None, kind=Optional(_POSITIVE), help=_EPS_HELP + " None: unbounded.")
    norm: str = setting("inf", kind=Choice(NORMS), help=_NORM_HELP)
    early_stop: bool = setting(True, kind=Flag(), help=_EARLY_STOP_HELP)
    name: ClassVar[str] = "Lesson"

    def _radii(self):
        # A step is an RMS change per pixel, bounded like an L-inf one.
        return [("eps", self.eps, self.norm), ("step_size", self.step_size, "inf")]

    def _plan(self) -> _Plan:
        return _Plan(
            norm=self.norm,
            eps=math.inf if self.eps is None else float(self.eps),
            steps=int(self.steps),
            step_size=float(self.step_size),
            random_start=False,
            early_stop=bool(self.early_stop),
            quantize=self.quantize,
            objective=self.objective,
            direction="rms",
        )


# --------------------------------------------------------------------------
# APGD: auto-PGD, with a step size that adapts per image.
# --------------------------------------------------------------------------

APGD_MOMENTUM = 0.75
APGD_RHO = 0.75


def apgd_checkpoints(steps: int) -> tuple[int, ...]:
    """The steps at which APGD may halve its step size (Croce and Hein 2020).

    `w_j = ceil(p_j * steps)` with `p_0 = 0`, `p_1 = 0.22` and
    `p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)`; only the distinct ones
    strictly between 0 and `steps` (a checkpoint at the last step could not
    change anything). Computed in exact hundredths: for 100 steps,
    `(22, 41, 57, 70, 80, 87, 93, 99)`.

    Args:
        steps: the number of gradient steps.
    """
    steps = _BATCH_SIZE.check("steps", steps)
    previous, current, found = 0, 22, []
    while current <= 100:
        w = -(-current * steps // 100)  # ceil, in integers
        if 0 < w < steps and (not found or w > found[-1]):
            found.append(w)
        previous, current = current, current + max(current - previous - 3, 6)
    return tuple(found)


def apgd_halves(*, increases, interval, reduced, best, best_at_checkpoint, rho: float = APGD_RHO):
    """Whether APGD halves an image's step size at a checkpoint (numpy or TensorFlow values).

    Condition 1: the loss increased at fewer than `rho * interval` of the
    `interval` steps since the last checkpoint. Condition 2: the step size
    was not halved at the last checkpoint and the best loss has not improved
    since. Either halves the step size (and APGD goes back to its best point).

    Args:
        increases: per image, the steps since the last checkpoint that
            increased the loss.
        interval: steps since the last checkpoint.
        reduced: per image, whether the step size was halved at the last
            checkpoint.
        best: per image, the best loss so far.
        best_at_checkpoint: per image, the best loss at the last checkpoint.
        rho: the fraction of condition 1. Defaults to `0.75`.
    """
    oscillating = increases < rho * interval
    stalled = ~reduced & (best <= best_at_checkpoint)
    return oscillating | stalled


def _apgd_state(x: tf.Tensor, step_size: float, num_classes: int) -> tuple:
    """The per-image state of an APGD batch at its start, a tuple of tensors: the iterate, the previous one,
    the best point, the gradient there, the best loss, the logits there, the last loss, the step size, the
    loss increases since the last checkpoint, the best loss at the last checkpoint, and whether the step size
    was halved there."""
    n = tf.shape(x)[0]
    low = tf.fill([n], tf.float32.min)
    return (
        x, x, x, tf.zeros_like(x), low, tf.zeros([n, num_classes]), tf.fill([n], tf.float32.max),
        tf.fill([n], tf.constant(step_size, tf.float32)), tf.zeros([n]), low, tf.zeros([n], tf.bool),
    )


def _apgd_fns(model: keras.Model, plan: _Plan, targeted: bool) -> tuple[Callable, Callable]:
    logits_model, fns = _entry(model)
    key = ("apgd", *plan.key, targeted)
    if key in fns:
        return fns[key]
    ref = weakref.ref(logits_model)
    norm = _NORMS[plan.norm]
    # Signatures with a free batch size: a batch shrinks as its images
    # succeed, which must not retrace the functions.
    image, scalar = _image_spec(logits_model), tf.TensorSpec((), tf.float32)
    vector, classes = tf.TensorSpec((None,), tf.float32), tf.TensorSpec((None,), tf.int32)
    num_classes = int(logits_model.outputs[0].shape[-1])
    state = (image,) * 4 + (vector, tf.TensorSpec((None, num_classes), tf.float32)) + (vector,) * 4
    state += (tf.TensorSpec((None,), tf.bool),)
    one = tf.zeros([1, 1, 1, 1])
    box = tuple(tf.TensorSpec(image.shape, part.dtype) for part in norm.box(one, one, one, quantize=plan.quantize))

    def forward(seen):
        return tf.cast(ref()(seen, training=False), tf.float32)

    @tf.function(input_signature=[state, box, classes, scalar, scalar, tf.TensorSpec((), tf.int32), scalar])
    def step(state, box, cls, eps, radius, phase, interval):
        # phase 0: the first step (no momentum); 1: a step; 2: a checkpoint first.
        x, previous, best_x, best_grad, best_loss, best_logits, last_loss, size, increases, at_check, reduced = state
        # As in the PGD loop: the model sees the rounded image, and its
        # gradient there drives the float iterate.
        seen = _seen(plan, x, box, eps, radius)
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(seen)
            logits = forward(seen)
            loss = _objective(logits, cls, kind=plan.objective, targeted=targeted)
            total = tf.reduce_sum(loss)
        grad = tape.gradient(total, seen)
        increases += tf.cast(loss > last_loss, tf.float32)
        better = loss > best_loss
        best_x = tf.where(better[:, None, None, None], x, best_x)
        best_grad = tf.where(better[:, None, None, None], grad, best_grad)
        best_logits = tf.where(better[:, None], logits, best_logits)
        best_loss = tf.where(better, loss, best_loss)
        at_check = tf.where(tf.equal(phase, 0), best_loss, at_check)
        checkpoint = tf.equal(phase, 2)
        halve = checkpoint & apgd_halves(
            increases=increases, interval=interval, reduced=reduced, best=best_loss, best_at_checkpoint=at_check
        )
        # Halving restarts from the best point, without momentum.
        back = halve[:, None, None, None]
        x, grad, previous = tf.where(back, best_x, x), tf.where(back, best_grad, grad), tf.where(back, best_x, previous)
        size = tf.where(halve, size / 2.0, size)
        reduced = tf.where(checkpoint, halve, reduced)
        at_check = tf.where(checkpoint, best_loss, at_check)
        increases = tf.where(checkpoint, tf.zeros_like(increases), increases)
        last_loss = tf.where(halve, best_loss, loss)
        alpha = tf.where(tf.equal(phase, 0), 1.0, APGD_MOMENTUM)
        z = norm.advance(x, size[:, None, None, None] * norm.direction(grad), box, eps)
        moved = norm.advance(x, alpha * (z - x) + (1.0 - alpha) * (x - previous), box, eps)
        state = (moved, x, best_x, best_grad, best_loss, best_logits, last_loss, size, increases, at_check, reduced)
        return state, seen, logits, _success(logits, cls, targeted)

    @tf.function(input_signature=[state, box, classes, scalar, scalar])
    def finish(state, box, cls, eps, radius):
        # The last iterate gets its look (forward only); the result is it or
        # the best point, an adversarial one first, else the higher loss.
        x, best_x, best_loss, best_logits = state[0], state[2], state[4], state[5]
        seen = _seen(plan, x, box, eps, radius)
        logits = forward(seen)
        ok, best_ok = _success(logits, cls, targeted), _success(best_logits, cls, targeted)
        loss = _objective(logits, cls, kind=plan.objective, targeted=targeted)
        last = (ok & ~best_ok) | (tf.equal(ok, best_ok) & (loss > best_loss))
        return (
            tf.where(last[:, None, None, None], seen, _seen(plan, best_x, box, eps, radius)),
            tf.where(last[:, None], logits, best_logits),
            tf.where(last, ok, best_ok),
        )

    fns[key] = (step, finish)
    return fns[key]


def _gather_rows(values, rows: np.ndarray):
    return tuple(tf.gather(v, rows) for v in values)


def _run_apgd(
    model: keras.Model,
    x0: np.ndarray,
    classes: np.ndarray,
    targeted: bool,
    plan: _Plan,
    *,
    batch_size: int,
    seed: int,
    ids: np.ndarray | None,
    verbose: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """APGD on batches of `batch_size` images, each batch shrinking as its images succeed."""
    step, finish = _apgd_fns(model, plan, targeted)
    num_classes = int(_logits_model(model).outputs[0].shape[-1])
    outcome = _Outcome.empty(x0, num_classes, quantize=plan.quantize)
    eps = tf.constant(plan.eps, tf.float32)
    radius = tf.constant(math.floor(plan.eps), tf.float32)
    norm = _NORMS[plan.norm]
    checkpoints = apgd_checkpoints(plan.steps)
    intervals = dict(zip(checkpoints, np.diff((0, *checkpoints)).tolist()))
    progbar = keras.utils.Progbar(len(x0)) if verbose and len(x0) else None
    for begin in range(0, len(x0), batch_size):
        rows = np.arange(begin, min(begin + batch_size, len(x0)))
        originals = tf.constant(x0[rows], tf.float32)
        state = _apgd_state(_starts(originals, rows, plan, seed, ids), plan.step_size, num_classes)
        box = norm.box(originals, eps, radius, quantize=plan.quantize)
        cls = tf.constant(classes[rows])
        for m in range(plan.steps):
            phase = 0 if m == 0 else 2 if m in intervals else 1
            interval = tf.constant(float(intervals.get(m, 1)), tf.float32)
            state, seen, logits, ok = step(state, box, cls, eps, radius, tf.constant(phase), interval)
            outcome.spent[rows] += 1
            ok = ok.numpy() & plan.early_stop
            if ok.any():
                done = np.flatnonzero(ok)
                outcome.adversarial[rows[done]] = tf.gather(seen, done).numpy()
                outcome.logits[rows[done]] = tf.gather(logits, done).numpy()
                outcome.success[rows[done]] = True
                keep = np.flatnonzero(~ok)
                rows = rows[keep]
                if not rows.size:
                    break
                state, box, cls = _gather_rows(state, keep), _gather_rows(box, keep), tf.gather(cls, keep)
        if rows.size:
            seen, logits, ok = finish(state, box, cls, eps, radius)
            outcome.adversarial[rows], outcome.logits[rows], outcome.success[rows] = seen.numpy(), logits.numpy(), ok.numpy()
        if progbar is not None:
            progbar.update(min(begin + batch_size, len(x0)))
    return outcome.adversarial, outcome.logits, outcome.success, outcome.spent


@dataclasses.dataclass(frozen=True, kw_only=True)
class APGD(_GradientAttack):
    """Auto-PGD (Croce and Hein 2020, Algorithm 1): PGD with momentum and a step size that adapts per image.

    Each image starts with a step of `2 * eps`; a step moves to
    `z = P(x + step * direction)` and then to
    `P(x + 0.75 (z - x) + 0.25 (x - x_previous))` (momentum), where `P`
    projects into the ball and [0, 255]. At the checkpoints of
    `apgd_checkpoints(steps)` the step size of an image is halved, and the
    image goes back to the best point it has seen, when its loss increased
    at fewer than 75% of the steps since the last checkpoint, or when its
    step size was not halved at the last checkpoint and its best loss has
    not improved since (`apgd_halves`). The best-loss point is kept per
    image.

    Conventions as in the rest of the module: pixels in [0, 255], `eps` in
    pixel units, and with `quantize=True` the model looks at (and success is
    judged on) the rounded image at every step, so the uint8 results are
    adversarial as saved. With `early_stop`, each image stops at its first
    adversarial look; otherwise (or when no step succeeds) the result is the
    better of the best-loss point and the last iterate (an adversarial one
    first, else the higher loss; with the margin loss the best-loss point is
    adversarial whenever any look was). `restarts` attack the still-unbroken images again from new random
    starts, as for `PGD`. `gradient_steps` counts forward-and-backward passes
    (`steps` per run for an image that never succeeds); the last iterate of
    such an image gets one more forward pass, not counted.

    Losses: `"crossentropy"` (APGD-CE) or `"margin"` (the logit margin; the
    paper's DLR loss divides it by a spread of the sorted logits, which is
    not defined for two classes).

    Attributes:
        norm: `"inf"` or `"2"`. Defaults to `"inf"`.
        eps: radius of the ball, in pixel units of the [0, 255] input.
        steps: gradient steps per image and run. Defaults to `100` (the
            paper's).
        loss: `"crossentropy"` or `"margin"`. Defaults to `"crossentropy"`.
        restarts: runs per image, each from a new random start for the
            images still unbroken. Defaults to `1`.
        random_start: start from a uniform random point of the ball.
            Defaults to `True`.
        early_stop: stop each image as soon as it meets the criterion.
            Defaults to `True`.
        quantize: return uint8 images, judged after rounding (see the module
            docstring). Defaults to `True`.
    """

    norm: str = setting("inf", kind=Choice(NORMS), help=_NORM_HELP)
    eps: float = setting(kind=_POSITIVE, help=_EPS_HELP)
    steps: int = setting(100, kind=Int(min=1), help="gradient steps per image and run.")
    loss: str = setting("crossentropy", kind=Choice(LOSSES), help=_LOSS_HELP)
    restarts: int = setting(1, kind=Int(min=1), help=_RESTARTS_HELP)
    random_start: bool = setting(True, kind=Flag(), help="start from a uniform random point of the ball.")
    early_stop: bool = setting(True, kind=Flag(), help=_EARLY_STOP_HELP)
    name: ClassVar[str] = "APGD"

    def __post_init__(self):
        super().__post_init__()
        _check_restarts(self)

    def _radii(self):
        return [("eps", self.eps, self.norm)]

    def _plan(self) -> _Plan:
        return _Plan(
            norm=self.norm,
            eps=float(self.eps),
            steps=int(self.steps),
            step_size=2.0 * float(self.eps),
            random_start=bool(self.random_start),
            early_stop=bool(self.early_stop),
            quantize=self.quantize,
            objective=self.loss,
            direction="norm",
        )

    def describe(self) -> str:
        norm = "L-inf" if self.norm == "inf" else "L2"
        loss = "CE" if self.loss == "crossentropy" else "margin"
        restarts = f", {self.restarts} runs (restarts)" if self.restarts > 1 else ""
        return f"APGD-{loss} {norm} eps={self.eps:g}, {self.steps} steps (adaptive, from 2*eps){restarts}"

    def _run_once(self, model, x0, classes, targeted, *, batch_size, seed, ids, verbose):
        return _run_apgd(
            model, x0, classes, targeted, self._plan(), batch_size=batch_size, seed=seed, ids=ids, verbose=verbose
        )


Attack = FGSM | PGD | BIM | APGD | LessonAttack


def make_attack(
    name: str,
    *,
    norm: str | int | float = "inf",
    eps: float | None = 4.0,
    steps: int | None = None,
    step_size: float | None = None,
    random_start: bool | None = None,
    early_stop: bool = True,
    quantize: bool = True,
    loss: str = "crossentropy",
    restarts: int = 1,
) -> Attack:
    """Builds an attack by name (for command lines and configs).

    Args:
        name: `"lesson"`, `"fgsm"`, `"pgd"`, `"bim"` or `"apgd"`.
        norm: `"inf"` or `"2"`. Defaults to `"inf"`.
        eps: radius in pixel units; `None` only for `"lesson"` (unbounded).
            Defaults to `4.0`.
        steps: steps of iterative attacks. Defaults to `None`: the attack's
            default (10 for PGD/BIM, 100 for APGD and the lesson).
        step_size: step length in pixel units (PGD, BIM, lesson; APGD adapts
            its own). Defaults to `None`: the attack's default.
        random_start: PGD/BIM/APGD only; overrides the attack's default.
            Defaults to `None`.
        early_stop: stop each image at its first success (iterative
            attacks). Defaults to `True`.
        quantize: return uint8 images judged after rounding. Defaults to
            `True`.
        loss: `"crossentropy"` or `"margin"` (FGSM, PGD, BIM, APGD; the
            lesson has its own objective). Defaults to `"crossentropy"`.
        restarts: runs per image (PGD, APGD). Defaults to `1`.
    """
    key = name.strip().lower() if isinstance(name, str) else name
    if key not in ATTACKS:
        raise ValueError(f"Unknown attack. Expected one of {ATTACKS}. Received: name={name!r}")
    if key == "lesson" and loss != "crossentropy":
        raise ValueError(f"The lesson's attack ascends a class score, not a loss. Received: loss={loss!r}")
    if key in ("lesson", "fgsm") and restarts != 1:
        raise ValueError(f"Restarts need a random start (pgd or apgd). Received: restarts={restarts!r}")
    if key == "apgd" and step_size is not None:
        raise ValueError(f"APGD adapts its step size (from 2 * eps). Received: step_size={step_size!r}")
    kwargs: dict[str, Any] = {"norm": norm, "quantize": quantize}
    if key != "fgsm" and steps is not None:
        kwargs["steps"] = steps
    if key not in ("fgsm", "apgd") and step_size is not None:
        kwargs["step_size"] = step_size
    if key in ("pgd", "bim", "apgd") and random_start is not None:
        kwargs["random_start"] = random_start
    if key != "fgsm":
        kwargs["early_stop"] = early_stop
    if key != "lesson":
        kwargs["loss"] = loss
    if key in ("pgd", "bim", "apgd"):
        kwargs["restarts"] = restarts
    if key == "lesson":
        return LessonAttack(eps=eps, **kwargs)
    if eps is None:
        raise ValueError(f"The {key!r} attack needs eps (pixel units). Received: eps=None")
    if key == "fgsm":
        if steps not in (None, 1):
            raise ValueError(f"FGSM takes exactly one step. Received: steps={steps!r}")
        if step_size is not None:
            raise ValueError(f"FGSM's one step has length eps; do not pass a step size. Received: step_size={step_size!r}")
        return FGSM(eps=eps, **kwargs)
    return {"pgd": PGD, "bim": BIM, "apgd": APGD}[key](eps=eps, **kwargs)


def attack_loss(logits, classes, *, loss: str = "crossentropy", targeted: bool = False) -> np.ndarray:
    """The per-image value the gradient attacks ascend, on given logits.

    Args:
        logits: `(batch, num_classes)`.
        classes: the class to leave (untargeted) or the target, per image.
        loss: `"crossentropy"` (minus it when targeted) or `"margin"`
            (untargeted: the largest other logit minus the class's;
            targeted: the target's logit minus the largest other). Defaults
            to `"crossentropy"`.
        targeted: whether `classes` are targets. Defaults to `False`.

    Returns:
        float32 `(batch,)`.
    """
    loss = Choice(LOSSES).check("loss", loss)
    values = _objective(
        tf.constant(np.asarray(logits, np.float32)), tf.constant(np.asarray(classes, np.int32)),
        kind=loss, targeted=bool(targeted),
    )
    return values.numpy()


# --------------------------------------------------------------------------
# Metrics.
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class AttackMetrics:
    """Summary of an attack on a batch.

    Attributes:
        num_images: images attacked.
        success_rate: fraction meeting the criterion after the attack.
        mean_linf, max_linf, mean_l2, max_l2: perturbation sizes over all
            images, in pixel units.
        mean_linf_success, mean_l2_success: the same over successful images
            only (`nan` if none).
        target_confidence: mean softmax probability of the target class
            after the attack (targeted), or of the original class
            (untargeted: lower is stronger).
        prediction_confidence: mean top-1 probability after the attack.
        already_adversarial: fraction meeting the criterion before any
            change (`nan` when the clean logits were not given).
    """

    num_images: int
    success_rate: float
    mean_linf: float
    max_linf: float
    mean_l2: float
    max_l2: float
    mean_linf_success: float
    mean_l2_success: float
    target_confidence: float
    prediction_confidence: float
    already_adversarial: float

    def to_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


def _mean(values) -> float:
    values = np.asarray(values, np.float64)
    return float(values.mean()) if values.size else float("nan")


def attack_metrics(
    *,
    originals,
    adversarials,
    logits,
    classes,
    targeted: bool,
    clean_logits=None,
) -> AttackMetrics:
    """Success rate, perturbation sizes and confidences of an attack.

    Args:
        originals: the images before the attack.
        adversarials: the images after it.
        logits: the model's logits on `adversarials`.
        classes: target classes (targeted) or the classes to leave.
        targeted: whether the criterion is targeted.
        clean_logits: the model's logits on `originals`, to count the images
            that were adversarial from the start. Defaults to `None`.
    """
    linf, l2 = perturbation_norms(originals, adversarials)
    classes = np.asarray(classes)
    success = is_adversarial(logits, classes, targeted=targeted)
    probabilities = softmax(logits) if len(classes) else np.zeros((0, 1))
    target_p = probabilities[np.arange(len(classes)), classes] if len(classes) else np.zeros(0)
    already = float("nan")
    if clean_logits is not None:
        already = _mean(is_adversarial(clean_logits, classes, targeted=targeted))
    return AttackMetrics(
        num_images=int(len(classes)),
        success_rate=_mean(success),
        mean_linf=_mean(linf),
        max_linf=float(linf.max()) if linf.size else float("nan"),
        mean_l2=_mean(l2),
        max_l2=float(l2.max()) if l2.size else float("nan"),
        mean_linf_success=_mean(linf[success]),
        mean_l2_success=_mean(l2[success]),
        target_confidence=_mean(target_p),
        prediction_confidence=_mean(probabilities.max(axis=-1)) if len(classes) else float("nan"),
        already_adversarial=already,
    )


@dataclasses.dataclass(frozen=True)
class TransferMetrics:
    """How adversarial images made for one model fare on another.

    Attributes:
        num_images: images scored.
        success_rate: fraction of adversarial images that meet the criterion
            on the second model.
        clean_rate: fraction of the original images that already meet it on
            the second model (the baseline to compare with).
        success_rate_given_source_success: `success_rate` among the images
            that fooled the source model (`nan` when not given or none).
    """

    num_images: int
    success_rate: float
    clean_rate: float
    success_rate_given_source_success: float

    def to_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


def transfer_metrics(
    model: keras.Model,
    *,
    originals,
    adversarials,
    criterion: Criterion,
    source_success=None,
    batch_size: int = 32,
) -> tuple[TransferMetrics, np.ndarray, np.ndarray]:
    """Scores adversarial images on a second model.

    The criterion is in the second model's label space: e.g.
    `TargetedMisclassification(cat_index)` for "the second model calls it a
    cat", or `Misclassification()` for "its prediction changed" (its own
    predictions on `originals` are then the reference).

    Args:
        model: the second model.
        originals: the clean images.
        adversarials: the adversarial images made on another model.
        criterion: success in the second model's label space.
        source_success: bool per image, success on the source model.
            Defaults to `None`.
        batch_size: images per forward pass. Defaults to `32`.

    Returns:
        `(metrics, clean_logits, adversarial_logits)` of the second model.
    """
    targeted, classes = resolve_criterion(criterion, model, originals, batch_size=batch_size)
    clean = predict_logits(model, originals, batch_size=batch_size)
    adv = predict_logits(model, adversarials, batch_size=batch_size)
    ok = is_adversarial(adv, classes, targeted=targeted)
    given = float("nan")
    if source_success is not None:
        source_success = np.asarray(source_success, bool)
        given = _mean(ok[source_success])
    metrics = TransferMetrics(
        num_images=int(len(classes)),
        success_rate=_mean(ok),
        clean_rate=_mean(is_adversarial(clean, classes, targeted=targeted)),
        success_rate_given_source_success=given,
    )
    return metrics, clean, adv


@dataclasses.dataclass(frozen=True)
class RobustAccuracy:
    """Accuracy of a model under attack, for several budgets.

    Per-attack fields are indexed `[attack][budget]`, in the order the
    attacks ran; `broken_by` is indexed `[budget][image]`.

    Attributes:
        epsilons: the budgets, in pixel units (0 = no attack).
        accuracy: fraction of images classified correctly after the attacks
            at each budget: an image counts as correct only when the clean
            image is correct and every attack failed on it (the worst case
            per image).
        clean_accuracy: accuracy on the unmodified images.
        num_images: images evaluated.
        attack: description of the evaluation (`eps` varies).
        seconds: wall time of the whole sweep.
        attacks: description of each attack. Defaults to `()`.
        attack_accuracy: the accuracy each attack alone gives. Exact for the
            first attack; for a later one only with `each_attack_alone=True`
            (else `None`: it ran only on the images the earlier ones left).
            Defaults to `()`.
        found_by: how many images each attack broke first (that no earlier
            attack had broken). Defaults to `()`.
        gradient_steps: forward-and-backward passes each attack spent.
            Defaults to `()`.
        broken_by: per image, the index of the attack that broke it first,
            -1 if none did (robust), -2 if the clean image is already wrong.
            Defaults to `()`.
    """

    epsilons: tuple[float, ...]
    accuracy: tuple[float, ...]
    clean_accuracy: float
    num_images: int
    attack: str
    seconds: float = 0.0
    attacks: tuple[str, ...] = ()
    attack_accuracy: tuple[tuple[float | None, ...], ...] = ()
    found_by: tuple[tuple[int, ...], ...] = ()
    gradient_steps: tuple[tuple[int, ...], ...] = ()
    broken_by: tuple[tuple[int, ...], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _materialize(data, labels) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(data, tf.data.Dataset):
        if labels is not None:
            raise ValueError("Pass labels only with an image array; a dataset yields (images, labels) itself.")
        xs, ys = [], []
        for element in data.as_numpy_iterator():
            if not isinstance(element, tuple) or len(element) < 2:
                raise ValueError("Expected a dataset of (images, labels). Received elements that are not pairs.")
            x, y = element[0], element[1]
            if np.ndim(x) == 3:
                x, y = x[None], np.reshape(y, (1,))
            xs.append(np.asarray(x))
            ys.append(np.asarray(y).reshape(-1))
        if not xs:
            raise ValueError("The dataset is empty.")
        return np.concatenate(xs), np.concatenate(ys)
    if labels is None:
        raise ValueError("Pass labels with an image array (or a tf.data.Dataset of (images, labels)).")
    images = np.asarray(data)
    labels = np.asarray(labels).reshape(-1)
    if len(images) != len(labels):
        raise ValueError(f"Expected one label per image. Received {len(images)} images and {len(labels)} labels.")
    return images, labels


def default_attacks(norm: str | int | float = "inf") -> tuple[PGD, APGD]:
    """The attacks `robust_accuracy` combines by default (their `eps` is replaced by each budget).

    `PGD(loss="margin", steps=10, restarts=2)`, then
    `APGD(loss="crossentropy", steps=20)` on the images it left: two
    losses and two step rules, so one's blind spot (the saturated
    cross-entropy of a confident model, a fixed step size) is covered by
    the other. A robust image costs 40 gradient steps, an image broken early
    a few: on a model that is not robust the sweep costs about what one
    PGD-10 does.

    Args:
        norm: `"inf"` or `"2"`. Defaults to `"inf"`.
    """
    return (
        PGD(norm=norm, eps=1.0, steps=10, loss="margin", restarts=2),
        APGD(norm=norm, eps=1.0, steps=20, loss="crossentropy"),
    )


def _check_attacks(attacks, attack) -> tuple:
    if attack is not None and attacks is not None:
        raise ValueError(f"Pass attack or attacks, not both. Received: attack={attack!r}, attacks={attacks!r}")
    if attack is not None:
        attacks = (attack,)
    attacks = default_attacks() if attacks is None else tuple(attacks)
    if not attacks:
        raise ValueError("Expected at least one attack. Received: attacks=()")
    for a in attacks:
        if not isinstance(a, (PGD, FGSM, APGD)):
            raise TypeError(f"Expected PGD, BIM, APGD or FGSM attacks. Received: {a!r}")
    norms = sorted({a.norm for a in attacks})
    if len(norms) > 1:
        raise ValueError(f"Expected attacks of one norm (the budgets are radii of it). Received norms {norms}")
    return attacks


def robust_accuracy(
    model: keras.Model,
    data,
    labels=None,
    *,
    epsilons: Sequence[float],
    attacks: Sequence[PGD | APGD | FGSM] | None = None,
    attack: PGD | APGD | FGSM | None = None,
    each_attack_alone: bool = False,
    batch_size: int = 32,
    seed: int | None = 0,
    verbose: int = 0,
) -> RobustAccuracy:
    """Accuracy of `model` under untargeted attacks of each budget in `epsilons`, worst case per image.

    Only correctly classified images are attacked (the others count as
    errors at every budget), with early stopping. Attacks run in order, each
    on the images the earlier ones did not break, so an image counts as
    robust only when every attack (and every restart) failed on it, and the
    sweep costs little more than the images the model gets right.

    Args:
        model: the classifier.
        data: an array of images `(batch, h, w, 3)` in [0, 255], or a
            `tf.data.Dataset` of `(images, labels)` (batched or not).
        labels: true classes, with an image array. Defaults to `None`.
        epsilons: the budgets in pixel units; `0` is the clean accuracy.
        attacks: the attacks whose `eps` is varied, all of one norm.
            Defaults to `None`: `default_attacks()` (margin PGD with two
            runs, then APGD-CE).
        attack: one attack, instead of `attacks` (the former interface).
            Defaults to `None`.
        each_attack_alone: run every attack on every correctly classified
            image, so that `attack_accuracy` holds each attack's own
            accuracy (costs the sum of the attacks). Defaults to `False`.
        batch_size: images attacked at once. Defaults to `32`.
        seed: seed of the random starts. Defaults to `0`.
        verbose: 1 prints one line per budget. Defaults to `0`.
    """
    start = time.perf_counter()
    epsilons = _EPSILONS.check("epsilons", tuple(float(e) for e in epsilons))
    attacks = _check_attacks(attacks, attack)
    each_attack_alone = Flag().check("each_attack_alone", each_attack_alone)
    images, y = _materialize(data, labels)
    for eps in epsilons:  # all of them before any attack runs
        check_radius("epsilons", eps, attacks[0].norm, images.shape[1:])
    num_classes = int(_logits_model(model).outputs[0].shape[-1])
    y = _broadcast_classes(y, len(images), num_classes, "labels")
    clean = np.argmax(predict_logits(model, images, batch_size=batch_size), axis=1)
    correct = clean == y
    sweeps = []
    for eps in epsilons:
        sweep = _one_budget(model, images, y, correct, attacks, eps, each_attack_alone, batch_size, seed)
        sweeps.append(sweep)
        if verbose:
            found = ", ".join(f"{a.name} {k}" for a, k in zip(attacks, sweep["found_by"]))
            print(f"eps={eps:g}: robust accuracy {sweep['accuracy']:.4f} (broken first by: {found})", flush=True)
    return RobustAccuracy(
        epsilons=epsilons,
        accuracy=tuple(s["accuracy"] for s in sweeps),
        clean_accuracy=_mean(correct),
        num_images=int(len(images)),
        attack=_sweep_description(attacks),
        seconds=time.perf_counter() - start,
        attacks=tuple(_describe_varying(a) for a in attacks),
        attack_accuracy=tuple(tuple(s["alone"][k] for s in sweeps) for k in range(len(attacks))),
        found_by=tuple(tuple(s["found_by"][k] for s in sweeps) for k in range(len(attacks))),
        gradient_steps=tuple(tuple(s["steps"][k] for s in sweeps) for k in range(len(attacks))),
        broken_by=tuple(tuple(s["broken_by"]) for s in sweeps),
    )


def _one_budget(model, images, y, correct, attacks, eps: float, each_alone: bool, batch_size: int, seed) -> dict:
    """The attacks of one budget: worst case per image, and what each attack did."""
    n = len(images)
    broken = np.where(correct, -1, -2)
    alone: list[float | None] = [None] * len(attacks)
    found, steps = [0] * len(attacks), [0] * len(attacks)
    for k, attack in enumerate(attacks):
        todo = np.flatnonzero(correct if each_alone else broken == -1)
        if eps == 0 or not todo.size:
            alone[k] = _mean(correct) if (each_alone or k == 0 or eps == 0) else None
            continue
        result = dataclasses.replace(attack, eps=eps)(
            model, images[todo], Misclassification(y[todo]), batch_size=batch_size, seed=seed
        )
        steps[k] = int(result.gradient_steps.sum())
        hit = todo[result.success]
        first = hit[broken[hit] == -1]
        broken[first] = k
        found[k] = int(first.size)
        if each_alone or k == 0:
            alone[k] = float(int(correct.sum()) - int(result.success.sum())) / n
    return {
        "accuracy": float((broken == -1).sum()) / n if n else float("nan"),
        "alone": alone,
        "found_by": found,
        "steps": steps,
        "broken_by": broken.tolist(),
    }


def _describe_varying(attack: PGD | APGD | FGSM) -> str:
    """An attack's description with its budget left out (it varies)."""
    plan = attack._plan()
    norm = "L-inf" if plan.norm == "inf" else "L2"
    if isinstance(attack, APGD):
        loss = "CE" if attack.loss == "crossentropy" else "margin"
        restarts = f", {attack.restarts} runs (restarts)" if attack.restarts > 1 else ""
        return f"APGD-{loss} {norm}, {plan.steps} steps (adaptive){restarts}"
    if isinstance(attack, FGSM):
        steps = "1 step of eps"
    elif attack.step_size is None:
        steps = f"{plan.steps} steps of 2.5*eps/{plan.steps}"
    else:
        steps = f"{plan.steps} steps of {plan.step_size:g}"
    start = ", random start" if plan.random_start else ""
    return f"{attack.name} {norm}, {steps}{start}{_loss_and_restarts(attack)}"


def _sweep_description(attacks) -> str:
    parts = [_describe_varying(a) for a in attacks]
    if len(parts) == 1:
        return f"{parts[0]}; untargeted, eps varies"
    return "worst case per image of: " + "; ".join(parts) + "; untargeted, eps varies"
