"""Explaining one prediction: which pixels made the classifier say this class.

Six methods, all batched, for any classifier from RGB pixels in [0, 255] to
class scores (a model of this package, whose convolutional layers sit inside
the nested `"backbone"`, or a flat Keras model):

- `"gradcam"` (Selvaraju et al. 2017): the activations of a convolutional
  layer weighted by the mean gradient of the class logit per channel;
- `"gradcam_pp"` (Grad-CAM++, Chattopadhyay et al. 2018): the same with
  per-position weights from higher-order derivatives;
- `"gradients"` (Simonyan et al. 2014): the largest absolute input gradient
  over the colour channels;
- `"smoothgrad"` (Smilkov et al. 2017): absolute gradients averaged over
  noisy copies of the image;
- `"integrated_gradients"` (Sundararajan et al. 2017): gradients averaged
  along the straight path from a baseline image, times the image minus the
  baseline; the attributions of an image add up to f(image) - f(baseline);
- `"occlusion"` (Zeiler & Fergus 2014): how much the class logit drops when
  a grey window hides each place.

Every map is float32 `(N, H, W)` in [0, 1] at the input resolution (min-max
normalized per image; higher = more important for the class). The class is
the predicted one or one given; gradients are those of its logit.

How far to trust a map is measured, not assumed: `deletion_curve` and
`insertion_curve` (Petsiuk et al. 2018) remove (or restore) the pixels in the
map's order of importance and follow the class probability; a faithful map
makes it fall fast (low deletion AUC) and rise fast (high insertion AUC),
compared with `random_maps`. `rank_correlation` supports the sanity checks of
Adebayo et al. 2018 (maps must change when the weights are randomized).

Compiled steps are kept per model and configuration, so explaining batch
after batch with one `Explainer` (or `explain`) traces once::

    explainer = Explainer(model, config=ExplainConfig(smoothgrad_samples=20))
    result = explainer(images, method="gradcam")   # images: (N, 224, 224, 3) in [0, 255]
    result.maps, result.classes, result.probabilities
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from keras_transfer import models as models_lib
from keras_transfer import settings
from keras_transfer.settings import Choice, Flag, Int, Optional, Real, Text, setting

METHODS = ("gradcam", "gradcam_pp", "gradients", "smoothgrad", "integrated_gradients", "occlusion")
CAM_METHODS = ("gradcam", "gradcam_pp")
# What replaces pixels: an integrated-gradients baseline, the occlusion window, deleted pixels.
FILLS = ("black", "grey", "blur", "noise")
GREY = 127.5
# Petsiuk et al. blur the insertion start with sigma 5 at 224 px; sigmas here
# are given at 224 px and scaled with the input, so one default fits any size.
REFERENCE_SIZE = 224
_METHODS = "explanation methods"
_FAITHFULNESS = "faithfulness"


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExplainConfig:
    """Hyper-parameters of the explanation methods.

    Every field is a `keras_transfer.settings.setting` (default, valid values
    and help declared with it, and a flag of the `explain` command). Pixel
    lengths (`occlusion_window`, `occlusion_stride`, `blur_sigma`) are in
    pixels of the model's input.
    """

    layer: str | None = setting(
        None, kind=Optional(Text()), group=_METHODS, metavar="NAME",
        help="layer of Grad-CAM and Grad-CAM++ (inside the backbone of a keras_transfer model). None: the last "
        "layer whose output is still a spatial map larger than 1x1 (find_last_conv_layer).",
    )
    smoothgrad_samples: int = setting(
        20, kind=Int(min=1, max=4096), group=_METHODS, help="noisy copies averaged by SmoothGrad."
    )
    smoothgrad_noise: float = setting(
        0.2, kind=Real(min=0), group=_METHODS,
        help="SmoothGrad noise standard deviation, as a fraction of each image's value range (max - min).",
    )
    ig_steps: int = setting(
        32, kind=Int(min=1, max=4096), group=_METHODS, help="points on the integrated-gradients path (midpoint rule)."
    )
    ig_baseline: str = setting(
        "black", kind=Choice(FILLS), group=_METHODS,
        help="integrated-gradients baseline: black, mid-grey, the image blurred (--blur-sigma) or uniform noise.",
    )
    occlusion_window: int = setting(
        32, kind=Int(min=1), group=_METHODS, help="side of the occluding square, in pixels."
    )
    occlusion_stride: int = setting(
        16, kind=Int(min=1), group=_METHODS, help="step between occluding squares, in pixels."
    )
    occlusion_fill: str = setting(
        "grey", kind=Choice(FILLS), group=_METHODS, help="what the occluding square shows."
    )
    blur_sigma: float = setting(
        5.0, kind=Real(min=0, min_open=True), group=_METHODS,
        help="Gaussian blur of the 'blur' baseline and fill, in pixels at 224 px (scaled with the input size).",
    )
    batch_size: int = setting(
        32, kind=Int(min=1, max=4096), group=_METHODS,
        help="images (or noisy copies, path points, occluded copies) per model call.",
    )
    seed: int = setting(0, kind=Int(min=0), group=_METHODS, help="seed of the SmoothGrad noise and the noise fill.")
    jit_compile: bool = setting(
        False, kind=Flag(), group=_METHODS, help="compile the steps with XLA (measure: often no faster on CPU)."
    )

    def __post_init__(self):
        settings.validate(self)
        _check_occlusion_stride(self.occlusion_stride, self.occlusion_window)


@dataclasses.dataclass(frozen=True, kw_only=True)
class FaithfulnessConfig:
    """How the deletion and insertion curves of Petsiuk et al. (2018) are drawn.

    Deletion replaces the most important pixels first with `deletion_fill`;
    insertion starts from the image blurred by `insertion_blur_sigma` and
    restores the most important pixels first. Each curve has `curve_steps + 1`
    points (0, 1/steps, ..., all of the pixels); the score is the softmax
    probability of the explained class.

    Deleting scattered single pixels (`patch=1`) destroys an image faster
    than deleting a region of the same area, so a pixel-level map (input
    gradients, a random map) can get a low deletion AUC without pointing at
    the object; `patch > 1` moves squares and compares where maps put
    their mass.
    """

    curve_steps: int = setting(
        32, kind=Int(min=1, max=4096), group=_FAITHFULNESS,
        help="steps of the deletion and insertion curves (each moves 1/steps of the pixels).",
    )
    deletion_fill: str = setting(
        "black", kind=Choice(FILLS), group=_FAITHFULNESS, help="what deleted pixels become (Petsiuk et al.: black)."
    )
    insertion_blur_sigma: float = setting(
        5.0, kind=Real(min=0, min_open=True), group=_FAITHFULNESS,
        help="Gaussian blur of the insertion start image, in pixels at 224 px.",
    )
    patch: int = setting(
        1, kind=Int(min=1), group=_FAITHFULNESS,
        help="side of the squares moved together, ranked by their mean importance: 1 = single pixels (Petsiuk et "
        "al.); e.g. 16 = regions (Samek et al. 2017), which spares coarse maps the penalty of being compared "
        "with scattered-pixel deletions that break any image.",
    )

    def __post_init__(self):
        settings.validate(self)


@dataclasses.dataclass
class Explanation:
    """What `Explainer.__call__` (and `explain`) returns.

    Attributes:
        method: the method's name.
        maps: `(N, H, W)` float32 in [0, 1] at the input resolution.
        classes: `(N,)` explained class of each image.
        probabilities: `(N,)` softmax probability of that class.
        layer: the layer of Grad-CAM / Grad-CAM++, else `None`.
        layer_maps: Grad-CAM(++) maps at the layer's resolution, before
            upsampling (normalized the same way), else `None`.
        seconds: wall time of the call.
    """

    method: str
    maps: np.ndarray
    classes: np.ndarray
    probabilities: np.ndarray
    layer: str | None = None
    layer_maps: np.ndarray | None = None
    seconds: float = 0.0


# --------------------------------------------------------------------------
# Layers and the two-output model of Grad-CAM.
# --------------------------------------------------------------------------


def _scope(model: keras.Model) -> keras.Model:
    """The model whose layers are searched: the backbone of a keras_transfer model, else the model."""
    # As models.find_layer decides: a plain nested model that happens to be named "backbone" is one layer of a
    # flat model.
    return models_lib.get_backbone(model) if models_lib.is_classifier(model) else model


def find_last_conv_layer(model: keras.Model) -> str:
    """The name of the layer Grad-CAM uses by default.

    The last layer (of the backbone, for a model of this package) whose
    output is a spatial map `(batch, h, w, channels)` with `h * w > 1`: the
    last convolutional block's activation (MobileNet's `conv_pw_13_relu`,
    MobileNetV2's `out_relu`), not the 1x1 maps after global pooling.

    Raises:
        ValueError: when no layer has such an output (e.g. an input so small
            that the network ends at 1x1); the message says to pass a layer.
    """
    scope = _scope(model)
    for layer in reversed(scope.layers):
        shape = _output_shape(layer)
        if shape is not None and len(shape) == 4 and (shape[1] or 0) * (shape[2] or 0) > 1:
            return layer.name
    raise ValueError(
        f"No layer of {scope.name!r} outputs a spatial map larger than 1x1 at this input size; "
        "pass a layer name (ExplainConfig(layer=...), --layer)."
    )


def _output_shape(layer) -> tuple | None:
    try:
        return tuple(layer.output.shape)
    except (AttributeError, ValueError):  # a layer never called, or called several times
        return None


def activation_model(model: keras.Model, layer: str | int) -> keras.Model:
    """A model from the classifier's input to `[activations of layer, logits]`, sharing its weights.

    For a model of this package the layer sits inside the nested backbone:
    the backbone's sub-graph up to it is composed with the outer layers
    (preprocessing before, pooling and head after), so that the logits are
    computed from these very activations and gradients flow between them.

    Args:
        model: a classifier returning logits.
        layer: a layer name or index (see `keras_transfer.models.find_layer`).
    """
    chosen = models_lib.find_layer(model, layer)
    shape = _output_shape(chosen)
    if shape is None or len(shape) != 4:
        raise ValueError(
            f"Expected a layer with a spatial output (batch, height, width, channels) for Grad-CAM. "
            f"Received: layer={chosen.name!r} with output shape {shape}"
        )
    scope = _scope(model)
    # A nested model's `output` is that of its own graph; the tensor of the graph searched is its first call's.
    called = chosen._inbound_nodes[0].output_tensors[0] if isinstance(chosen, keras.Model) else chosen.output
    if scope is model:
        return keras.Model(model.inputs, [called, model.outputs[0]], name=f"{model.name}_cam")
    wrapper = model.get_layer(models_lib.BACKBONE_NAME)
    inner = keras.Model(scope.inputs, [called, scope.outputs[0]], name=f"{scope.name}_cam")
    before = keras.Model(model.inputs, wrapper.input, name=f"{model.name}_before_backbone")
    after = keras.Model(wrapper.output, model.outputs[0], name=f"{model.name}_after_backbone")
    inputs = keras.Input(shape=tuple(model.input_shape[1:]), name="image")
    activations, features = inner(before(inputs), training=False)
    return keras.Model(inputs, [activations, after(features)], name=f"{model.name}_cam")


# --------------------------------------------------------------------------
# Map arithmetic, in TF ops (inside the compiled steps).
# --------------------------------------------------------------------------


def _normalize(maps: tf.Tensor) -> tf.Tensor:
    """Min-max per map to [0, 1]; a constant map becomes 0."""
    lo = tf.reduce_min(maps, axis=(1, 2), keepdims=True)
    hi = tf.reduce_max(maps, axis=(1, 2), keepdims=True)
    return tf.where(hi > lo, (maps - lo) / tf.maximum(hi - lo, 1e-30), tf.zeros_like(maps))


def _upsample(maps: tf.Tensor, size: int) -> tf.Tensor:
    return tf.image.resize(maps[..., None], (size, size), method="bilinear")[..., 0]


def _pick(logits: tf.Tensor, classes: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """(classes with -1 replaced by the predicted class, their logits, their probabilities)."""
    logits = tf.cast(logits, tf.float32)
    chosen = tf.where(classes < 0, tf.argmax(logits, axis=-1, output_type=tf.int32), classes)
    score = tf.gather(logits, chosen, axis=1, batch_dims=1)
    probability = tf.gather(tf.nn.softmax(logits, axis=-1), chosen, axis=1, batch_dims=1)
    return chosen, score, probability


def gradcam_weights(activations: tf.Tensor, gradients: tf.Tensor, *, plus_plus: bool) -> tf.Tensor:
    """The class activation map `relu(sum_k w_k A_k)` of Grad-CAM or Grad-CAM++, `(batch, h, w)`.

    Grad-CAM's `w_k` is the mean gradient over positions. Grad-CAM++ weights
    the positive gradients by `alpha = g^2 / (2 g^2 + sum(A) g^3)` (its
    closed form for an exponential score); the factor exp(score) of that
    derivation is one positive number per image, which the normalization
    removes, so it is left out rather than risk overflowing.
    """
    if not plus_plus:
        weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)
        return tf.nn.relu(tf.reduce_sum(activations * weights, axis=-1))
    g2 = tf.square(gradients)
    g3 = g2 * gradients
    total = tf.reduce_sum(activations, axis=(1, 2), keepdims=True)
    denominator = 2.0 * g2 + total * g3
    alphas = g2 / tf.where(denominator != 0.0, denominator, tf.ones_like(denominator))
    norm = tf.reduce_sum(alphas, axis=(1, 2), keepdims=True)
    alphas = alphas / tf.where(norm != 0.0, norm, tf.ones_like(norm))
    weights = tf.reduce_sum(tf.nn.relu(gradients) * alphas, axis=(1, 2), keepdims=True)
    return tf.nn.relu(tf.reduce_sum(activations * weights, axis=-1))


def gaussian_blur(images, *, sigma: float) -> tf.Tensor:
    """Images blurred by a Gaussian of `sigma` pixels (edges reflected), float32."""
    x = tf.cast(images, tf.float32)
    radius = min(int(math.ceil(3.0 * sigma)), int(x.shape[1]) - 1, int(x.shape[2]) - 1)
    if radius < 1:
        return x
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps = (taps / taps.sum()).astype(np.float32)
    channels = int(x.shape[-1])
    kernel_y = tf.constant(np.tile(taps[:, None, None, None], (1, 1, channels, 1)))
    kernel_x = tf.constant(np.tile(taps[None, :, None, None], (1, 1, channels, 1)))
    x = tf.pad(x, [[0, 0], [radius, radius], [radius, radius], [0, 0]], mode="REFLECT")
    x = tf.nn.depthwise_conv2d(x, kernel_y, strides=[1, 1, 1, 1], padding="VALID")
    return tf.nn.depthwise_conv2d(x, kernel_x, strides=[1, 1, 1, 1], padding="VALID")


def fill_images(images, fill: str, *, blur_sigma: float = 5.0, seed: int = 0) -> tf.Tensor:
    """What replaces `images` under a fill (`FILLS`): black, mid-grey, blurred, or uniform noise.

    Args:
        images: `(N, H, W, 3)` pixels in [0, 255].
        fill: one of `FILLS`.
        blur_sigma: blur in pixels at 224 px, scaled with the width of
            `images`. Defaults to `5.0`.
        seed: seed of the noise, the same for every image. Defaults to `0`.
    """
    Choice(FILLS).check("fill", fill)
    x = tf.cast(images, tf.float32)
    if fill == "black":
        return tf.zeros_like(x)
    if fill == "grey":
        return tf.fill(tf.shape(x), GREY)
    if fill == "blur":
        return gaussian_blur(x, sigma=blur_sigma * int(x.shape[2]) / REFERENCE_SIZE)
    noise = tf.random.stateless_uniform(tf.shape(x)[1:], seed=[seed, 1], minval=0.0, maxval=255.0)
    return tf.broadcast_to(noise, tf.shape(x))


# --------------------------------------------------------------------------
# Compiled steps: one tf.function per method, kept by the object that uses it.
# --------------------------------------------------------------------------


def _image_spec(size: int) -> tf.TensorSpec:
    return tf.TensorSpec([None, size, size, 3], tf.float32)


_CLASSES_SPEC = tf.TensorSpec([None], tf.int32)


def _cam_step(cam_model: keras.Model, size: int, plus_plus: bool, jit: bool):
    @tf.function(input_signature=[_image_spec(size), _CLASSES_SPEC], jit_compile=jit)
    def step(x, classes):
        with tf.GradientTape() as tape:
            activations, logits = cam_model(x, training=False)
            chosen, score, probability = _pick(logits, classes)
            # Images are independent (inference mode): the sum's gradient is each image's own.
            total = tf.reduce_sum(score)
        # The gradient of the activations the logits were computed from (float16 under a mixed policy), then float32.
        gradients = tf.cast(tape.gradient(total, activations), tf.float32)
        activations = tf.cast(activations, tf.float32)
        cam = gradcam_weights(activations, gradients, plus_plus=plus_plus)
        return _normalize(_upsample(cam, size)), _normalize(cam), chosen, probability

    return step


def _gradient_step(model: keras.Model, size: int, jit: bool):
    @tf.function(input_signature=[_image_spec(size), _CLASSES_SPEC], jit_compile=jit)
    def step(x, classes):
        with tf.GradientTape() as tape:
            tape.watch(x)
            chosen, score, probability = _pick(model(x, training=False), classes)
            total = tf.reduce_sum(score)
        return tape.gradient(total, x), chosen, probability

    return step


def _smoothgrad_step(model: keras.Model, size: int, config: ExplainConfig):
    samples_spec = tf.TensorSpec([None], tf.int32)

    @tf.function(input_signature=[_image_spec(size), _CLASSES_SPEC, samples_spec], jit_compile=config.jit_compile)
    def step(x, classes, sample_ids):
        # Noise of sample i is drawn from (seed, i) alone: an image's map does
        # not depend on the batch it is in.
        noise = tf.map_fn(
            lambda i: tf.random.stateless_normal([size, size, 3], seed=tf.stack([config.seed, i])),
            sample_ids, fn_output_signature=tf.float32,
        )
        spread = tf.reduce_max(x, axis=(1, 2, 3)) - tf.reduce_min(x, axis=(1, 2, 3))
        sigma = config.smoothgrad_noise * spread[None, :, None, None, None]
        noisy = x[None] + noise[:, None] * sigma
        s, b = tf.shape(noisy)[0], tf.shape(noisy)[1]
        flat = tf.reshape(noisy, [-1, size, size, 3])
        with tf.GradientTape() as tape:
            tape.watch(flat)
            _, score, _ = _pick(model(flat, training=False), tf.tile(classes, [s]))
            total = tf.reduce_sum(score)
        gradients = tf.abs(tape.gradient(total, flat))
        return tf.reduce_sum(tf.reshape(gradients, [s, b, size, size, 3]), axis=0)

    return step


def _path_step(model: keras.Model, size: int, jit: bool):
    alphas_spec = tf.TensorSpec([None], tf.float32)

    @tf.function(input_signature=[_image_spec(size), _image_spec(size), _CLASSES_SPEC, alphas_spec], jit_compile=jit)
    def step(x, baseline, classes, alphas):
        points = baseline[None] + alphas[:, None, None, None, None] * (x - baseline)[None]
        s = tf.shape(points)[0]
        flat = tf.reshape(points, [-1, size, size, 3])
        with tf.GradientTape() as tape:
            tape.watch(flat)
            _, score, _ = _pick(model(flat, training=False), tf.tile(classes, [s]))
            total = tf.reduce_sum(score)
        gradients = tape.gradient(total, flat)
        return tf.reduce_sum(tf.reshape(gradients, [s, -1, size, size, 3]), axis=0)

    return step


def _occlusion_step(model: keras.Model, size: int, jit: bool):
    masks_spec = tf.TensorSpec([None, size, size], tf.float32)
    scalar = tf.TensorSpec([1], tf.float32)

    @tf.function(
        input_signature=[_image_spec(size), _image_spec(size), _CLASSES_SPEC, scalar, masks_spec], jit_compile=jit
    )
    def step(x, fill, classes, base_score, masks):
        """For one image (`x`, `fill`: batches of 1): the sum over windows of (logit drop x window mask)."""
        m = masks[..., None]
        occluded = x * (1.0 - m) + fill * m
        _, score, _ = _pick(model(occluded, training=False), tf.tile(classes, tf.shape(masks)[:1]))
        return tf.tensordot(base_score - score, masks, axes=1)

    return step


def _predict_step(model: keras.Model, size: int, jit: bool):
    @tf.function(input_signature=[_image_spec(size), _CLASSES_SPEC], jit_compile=jit)
    def step(x, classes):
        return _pick(model(x, training=False), classes)

    return step


# --------------------------------------------------------------------------
# Inputs.
# --------------------------------------------------------------------------


def _as_images(images, size: int) -> np.ndarray:
    """`images` as float32 `(N, size, size, 3)`; one image may be given without the batch axis."""
    x = np.asarray(images, dtype=np.float32)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[1:] != (size, size, 3):
        raise ValueError(
            f"Expected images of shape (N, {size}, {size}, 3) (the model's input size; see "
            f"keras_transfer.data.load_image_files(image_size={size})). Received: shape={np.shape(images)}"
        )
    if len(x) == 0:
        raise ValueError("Expected at least one image. Received: 0 images")
    if not np.all(np.isfinite(x)):
        raise ValueError("Expected finite pixel values in [0, 255]. Received: images with NaN or infinite values")
    return x


def _as_classes(classes, n: int, num_classes: int) -> np.ndarray:
    """int32 `(n,)` class per image, -1 where the predicted class is wanted (`classes=None`)."""
    if classes is None:
        return np.full(n, -1, np.int32)
    values = np.asarray(classes)
    if values.ndim == 0:
        values = np.full(n, values)
    ok = values.ndim == 1 and len(values) == n and values.dtype.kind in "iu"
    if not ok or np.any(values < 0) or np.any(values >= num_classes):
        raise ValueError(
            f"Expected classes to be None (the predicted class), a class index in [0, {num_classes}) or one "
            f"index per image ({n}). Received: classes={classes!r}"
        )
    return values.astype(np.int32)


def _chunks(n: int, size: int):
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def _normalize_np(maps: np.ndarray) -> np.ndarray:
    return _normalize(tf.constant(maps, tf.float32)).numpy()


def _check_occlusion_stride(stride: int, window: int) -> None:
    if stride > window:
        raise ValueError(
            "Expected occlusion_stride <= occlusion_window (a longer stride leaves pixels never occluded). "
            f"Received: occlusion_stride={stride}, occlusion_window={window}"
        )


def occlusion_masks(size: int, *, window: int, stride: int) -> np.ndarray:
    """`(P, size, size)` float32 masks of the occluding squares, covering every pixel.

    Squares start every `stride` pixels; one more is added at the far edge
    when the stride does not land there, so the last rows and columns are
    occluded too.
    """
    if window > size:
        raise ValueError(f"Expected occlusion_window <= the image size {size}. Received: occlusion_window={window}")
    _check_occlusion_stride(stride, window)
    starts = list(range(0, size - window + 1, stride))
    if starts[-1] != size - window:
        starts.append(size - window)
    masks = np.zeros((len(starts) ** 2, size, size), np.float32)
    for k, (top, left) in enumerate((t, l) for t in starts for l in starts):
        masks[k, top : top + window, left : left + window] = 1.0
    return masks


# --------------------------------------------------------------------------
# The explainer.
# --------------------------------------------------------------------------


class Explainer:
    """Explains a classifier's predictions with any of `METHODS`; keeps its compiled steps.

    Args:
        model: a classifier from RGB pixels in [0, 255] to class scores
            `(batch, num_classes)`; a final softmax is removed (see
            `keras_transfer.models.as_logits_model`). A model of this
            package, or a flat Keras model.
        config: hyper-parameters. Defaults to `ExplainConfig()`.
    """

    def __init__(self, model: keras.Model, *, config: ExplainConfig | None = None):
        if not isinstance(model, keras.Model):
            raise TypeError(f"Expected a keras.Model. Received: model of type {type(model).__name__}")
        config = config if config is not None else ExplainConfig()
        if not isinstance(config, ExplainConfig):
            raise TypeError(f"Expected an ExplainConfig. Received: config={config!r}")
        self.model = models_lib.as_logits_model(model)
        self.size = models_lib.image_size_of(self.model)
        self.num_classes = int(self.model.outputs[0].shape[-1])
        self.config = config
        if config.occlusion_window > self.size:
            raise ValueError(
                f"Expected occlusion_window <= the model's input size {self.size}. "
                f"Received: occlusion_window={config.occlusion_window}"
            )
        self._layer: str | None = None
        self._steps: dict[tuple, Callable] = {}

    @property
    def layer(self) -> str:
        """The Grad-CAM layer: `config.layer`, else `find_last_conv_layer(model)`."""
        if self._layer is None:
            name = self.config.layer if self.config.layer is not None else find_last_conv_layer(self.model)
            self._layer = models_lib.find_layer(self.model, name).name  # unknown names suggest close ones
        return self._layer

    def _step(self, key: tuple, build: Callable[[], Callable]) -> Callable:
        if key not in self._steps:
            self._steps[key] = build()
        return self._steps[key]

    def __call__(self, images, *, method: str, classes: int | Sequence[int] | None = None) -> Explanation:
        """Maps of `images` for `classes` by `method`.

        Args:
            images: `(N, H, W, 3)` (or one `(H, W, 3)`) pixels in [0, 255] at
                the model's input size, any dtype.
            method: one of `METHODS`.
            classes: `None` for each image's predicted class, one class index
                for all, or one index per image. Defaults to `None`.

        Returns:
            An `Explanation`.
        """
        Choice(METHODS).check("method", method)
        start = time.perf_counter()
        x = _as_images(images, self.size)
        wanted = _as_classes(classes, len(x), self.num_classes)
        if method in CAM_METHODS:
            maps, layer_maps, chosen, probabilities = self._cam(x, wanted, plus_plus=method == "gradcam_pp")
        else:
            runner = {
                "gradients": self._gradients,
                "smoothgrad": self._smoothgrad,
                "integrated_gradients": self._integrated,
                "occlusion": self._occlusion,
            }[method]
            (maps, chosen, probabilities), layer_maps = runner(x, wanted), None
        return Explanation(
            method=method,
            maps=maps.astype(np.float32),
            classes=chosen.astype(np.int64),
            probabilities=probabilities.astype(np.float32),
            layer=self.layer if method in CAM_METHODS else None,
            layer_maps=layer_maps,
            seconds=time.perf_counter() - start,
        )

    def predict(self, images, *, classes: int | Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(class indices, their probabilities) of `images`: the predicted classes, or `classes`."""
        x = _as_images(images, self.size)
        chosen, _, probabilities = self._predict(x, _as_classes(classes, len(x), self.num_classes))
        return chosen, probabilities

    def _predict(self, x: np.ndarray, classes: np.ndarray):
        step = self._step(("predict",), lambda: _predict_step(self.model, self.size, self.config.jit_compile))
        outs = [step(x[s], classes[s]) for s in _chunks(len(x), self.config.batch_size)]
        return tuple(np.concatenate([o[k].numpy() for o in outs]) for k in range(3))

    def _cam(self, x, classes, *, plus_plus: bool):
        layer = self.layer

        def build():
            cam_model = self._step(("cam_model", layer), lambda: activation_model(self.model, layer))
            return _cam_step(cam_model, self.size, plus_plus, self.config.jit_compile)

        step = self._step(("cam", layer, plus_plus), build)
        outs = [step(x[s], classes[s]) for s in _chunks(len(x), self.config.batch_size)]
        return tuple(np.concatenate([o[k].numpy() for o in outs]) for k in range(4))

    def _gradients(self, x, classes):
        step = self._step(("gradients",), lambda: _gradient_step(self.model, self.size, self.config.jit_compile))
        outs = [step(x[s], classes[s]) for s in _chunks(len(x), self.config.batch_size)]
        gradients, chosen, probabilities = (np.concatenate([o[k].numpy() for o in outs]) for k in range(3))
        # Simonyan et al.: the largest absolute gradient over the colour channels.
        return _normalize_np(np.abs(gradients).max(axis=-1)), chosen, probabilities

    def _smoothgrad(self, x, classes):
        chosen, _, probabilities = self._predict(x, classes)
        step = self._step(("smoothgrad",), lambda: _smoothgrad_step(self.model, self.size, self.config))
        samples, batch = self.config.smoothgrad_samples, self.config.batch_size
        per_call = max(1, min(samples, batch // min(len(x), batch)))
        total = np.zeros(x.shape, np.float32)
        for s in _chunks(len(x), batch):
            for ids in _chunks(samples, per_call):
                sample_ids = tf.range(ids.start, ids.stop, dtype=tf.int32)
                total[s] += step(x[s], chosen[s], sample_ids).numpy()
        return _normalize_np((total / samples).max(axis=-1)), chosen, probabilities

    def integrated_gradients(self, images, *, classes: int | Sequence[int] | None = None) -> np.ndarray:
        """Signed integrated-gradients attributions, `(N, H, W, 3)` float32.

        Per image they add up to the class logit at the image minus the one
        at the baseline (`config.ig_baseline`), up to the error of the
        `config.ig_steps`-point midpoint rule.

        Args:
            images: `(N, H, W, 3)` pixels in [0, 255] at the model's size.
            classes: as in `__call__`. Defaults to `None` (predicted).
        """
        x = _as_images(images, self.size)
        chosen, _, _ = self._predict(x, _as_classes(classes, len(x), self.num_classes))
        return self._attributions(x, chosen)

    def baseline(self, images) -> np.ndarray:
        """The integrated-gradients baseline of `images` (`config.ig_baseline`), float32."""
        x = _as_images(images, self.size)
        config = self.config
        return fill_images(x, config.ig_baseline, blur_sigma=config.blur_sigma, seed=config.seed).numpy()

    def _attributions(self, x: np.ndarray, chosen: np.ndarray) -> np.ndarray:
        step = self._step(("path",), lambda: _path_step(self.model, self.size, self.config.jit_compile))
        steps, batch = self.config.ig_steps, self.config.batch_size
        baseline = self.baseline(x)
        alphas = ((np.arange(steps) + 0.5) / steps).astype(np.float32)  # midpoint rule
        per_call = max(1, min(steps, batch // min(len(x), batch)))
        total = np.zeros(x.shape, np.float32)
        for s in _chunks(len(x), batch):
            for a in _chunks(steps, per_call):
                total[s] += step(x[s], baseline[s], chosen[s], alphas[a]).numpy()
        return (x - baseline) * (total / steps)

    def _integrated(self, x, classes):
        chosen, _, probabilities = self._predict(x, classes)
        attributions = self._attributions(x, chosen)
        # Evidence for the class: the positive part of the per-pixel sum.
        return _normalize_np(np.maximum(attributions.sum(axis=-1), 0.0)), chosen, probabilities

    def _occlusion(self, x, classes):
        config = self.config
        chosen, scores, probabilities = self._predict(x, classes)
        step = self._step(("occlusion",), lambda: _occlusion_step(self.model, self.size, config.jit_compile))
        masks = occlusion_masks(self.size, window=config.occlusion_window, stride=config.occlusion_stride)
        coverage = masks.sum(axis=0)
        fill = fill_images(x, config.occlusion_fill, blur_sigma=config.blur_sigma, seed=config.seed).numpy()
        maps = np.zeros(x.shape[:3], np.float32)
        for i in range(len(x)):
            one = slice(i, i + 1)
            for m in _chunks(len(masks), config.batch_size):
                maps[i] += step(x[one], fill[one], chosen[one], scores[one], masks[m]).numpy()
        return _normalize_np(maps / coverage), chosen, probabilities


def explain(
    model: keras.Model,
    images,
    *,
    method: str,
    classes: int | Sequence[int] | None = None,
    config: ExplainConfig | None = None,
) -> Explanation:
    """Maps of `images` by `method`: `Explainer(model, config=config)(images, method=..., classes=...)`.

    Each call compiles its steps anew; to explain several batches, make one
    `Explainer` and call it.

    Args:
        model: a classifier from RGB pixels in [0, 255] to class scores.
        images: `(N, H, W, 3)` pixels in [0, 255] at the model's input size.
        method: one of `METHODS`.
        classes: `None` for the predicted classes, one index, or one per
            image. Defaults to `None`.
        config: hyper-parameters. Defaults to `ExplainConfig()`.
    """
    return Explainer(model, config=config)(images, method=method, classes=classes)


# --------------------------------------------------------------------------
# Faithfulness: deletion and insertion curves, random maps, rank correlation.
# --------------------------------------------------------------------------


@dataclasses.dataclass
class FaithfulnessScores:
    """Deletion and insertion curves of a batch of maps and their areas.

    Attributes:
        deletion: `(N, steps + 1)` class probability as the most important
            pixels are deleted (lower area = more faithful).
        insertion: `(N, steps + 1)` class probability as they are restored
            into the blurred image (higher area = more faithful).
        deletion_auc: `(N,)` area under each deletion curve, in [0, 1].
        insertion_auc: `(N,)` area under each insertion curve, in [0, 1].
    """

    deletion: np.ndarray
    insertion: np.ndarray
    deletion_auc: np.ndarray
    insertion_auc: np.ndarray


def _pixel_ranks(maps: np.ndarray, patch: int = 1) -> np.ndarray:
    """int32 `(N, H, W)`: 0 for the pixel deleted first, ties in reading order.

    With `patch > 1` the map is averaged over `patch x patch` squares, which
    are ranked as wholes: all pixels of a square go before the next square's.
    """
    n, h, w = maps.shape
    pixel = np.arange(h * w)
    rows, cols = np.arange(h) // patch, np.arange(w) // patch
    cell = (rows[:, None] * (cols[-1] + 1) + cols[None, :]).reshape(-1)
    sums = np.zeros((n, cell.max() + 1))
    np.add.at(sums, (slice(None), cell), maps.reshape(n, -1))
    means = sums / np.bincount(cell)
    cell_order = np.argsort(-means, axis=1, kind="stable")
    cell_rank = np.empty_like(cell_order)
    np.put_along_axis(cell_rank, cell_order, np.arange(means.shape[1])[None], axis=1)
    # Sort by (rank of the pixel's square, pixel index): a square's pixels stay together.
    order = np.argsort(cell_rank[:, cell] * (h * w) + pixel[None], axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, pixel[None], axis=1)
    return ranks.reshape(n, h, w).astype(np.int32)


def _curve_step(model: keras.Model, size: int, jit: bool):
    ranks_spec = tf.TensorSpec([None, size, size], tf.int32)
    counts_spec = tf.TensorSpec([None], tf.int32)

    @tf.function(
        input_signature=[_image_spec(size), _image_spec(size), ranks_spec, _CLASSES_SPEC, counts_spec],
        jit_compile=jit,
    )
    def step(start, end, ranks, classes, counts):
        """Probabilities `(b, k)` of the images with the `counts[j]` top-ranked pixels taken from `end`."""
        moved = ranks[:, None] < counts[None, :, None, None]
        x = tf.where(moved[..., None], end[:, None], start[:, None])
        k = tf.shape(counts)[0]
        logits = tf.cast(model(tf.reshape(x, [-1, size, size, 3]), training=False), tf.float32)
        probabilities = tf.gather(tf.nn.softmax(logits, axis=-1), tf.repeat(classes, k), axis=1, batch_dims=1)
        return tf.reshape(probabilities, [-1, k])

    return step


class Faithfulness:
    """Deletion and insertion curves (Petsiuk et al. 2018) of maps, batched through the model.

    Args:
        model: the classifier the maps explain (RGB [0, 255] in, class
            scores out).
        config: how the curves are drawn. Defaults to `FaithfulnessConfig()`.
        batch_size: images per model call. Defaults to `32`.
        jit_compile: compile the step with XLA. Defaults to `False`.
    """

    def __init__(
        self,
        model: keras.Model,
        *,
        config: FaithfulnessConfig | None = None,
        batch_size: int = 32,
        jit_compile: bool = False,
    ):
        self.model = models_lib.as_logits_model(model)
        self.size = models_lib.image_size_of(self.model)
        self.config = config if config is not None else FaithfulnessConfig()
        if not isinstance(self.config, FaithfulnessConfig):
            raise TypeError(f"Expected a FaithfulnessConfig. Received: config={self.config!r}")
        self.batch_size = Int(min=1).check("batch_size", batch_size)
        self._step = _curve_step(self.model, self.size, jit_compile)

    def with_config(self, config: FaithfulnessConfig) -> Faithfulness:
        """A `Faithfulness` of the same model with another config, sharing the compiled step."""
        if not isinstance(config, FaithfulnessConfig):
            raise TypeError(f"Expected a FaithfulnessConfig. Received: config={config!r}")
        other = copy.copy(self)
        other.config = config
        return other

    def _curves(self, start: np.ndarray, end: np.ndarray, maps, classes) -> np.ndarray:
        maps = np.asarray(maps, np.float32)
        if maps.shape != start.shape[:3]:
            raise ValueError(f"Expected one map per image, of shape {start.shape[:3]}. Received: shape={maps.shape}")
        classes = _as_classes(classes, len(start), int(self.model.outputs[0].shape[-1]))
        if np.any(classes < 0):
            raise ValueError("Expected the explained class of every image (Explanation.classes). Received: None")
        steps = self.config.curve_steps
        pixels = self.size * self.size
        counts = np.round(np.arange(steps + 1) * pixels / steps).astype(np.int32)
        ranks = _pixel_ranks(maps, self.config.patch)
        per_call = max(1, self.batch_size // (steps + 1))
        outs = [
            self._step(start[s], end[s], ranks[s], classes[s], counts).numpy()
            for s in _chunks(len(start), per_call)
        ]
        return np.concatenate(outs)

    def deletion_curve(self, images, maps, *, classes: int | Sequence[int]) -> np.ndarray:
        """`(N, curve_steps + 1)` probability of `classes` as the most important pixels become `deletion_fill`."""
        x = _as_images(images, self.size)
        fill = fill_images(x, self.config.deletion_fill).numpy()
        return self._curves(x, fill, maps, classes)

    def insertion_curve(self, images, maps, *, classes: int | Sequence[int]) -> np.ndarray:
        """`(N, curve_steps + 1)` probability of `classes` as the most important pixels are restored."""
        x = _as_images(images, self.size)
        blurred = fill_images(x, "blur", blur_sigma=self.config.insertion_blur_sigma).numpy()
        return self._curves(blurred, x, maps, classes)

    def __call__(self, images, maps, *, classes: int | Sequence[int]) -> FaithfulnessScores:
        """Both curves of `maps` (the explanation of `images` for `classes`) and their areas."""
        deletion = self.deletion_curve(images, maps, classes=classes)
        insertion = self.insertion_curve(images, maps, classes=classes)
        return FaithfulnessScores(deletion, insertion, curve_auc(deletion), curve_auc(insertion))


def curve_auc(curves) -> np.ndarray:
    """Area under each curve `(N, steps + 1)` sampled evenly on [0, 1] (trapezoid rule), `(N,)`."""
    curves = np.asarray(curves, np.float64)
    if curves.ndim != 2 or curves.shape[1] < 2:
        raise ValueError(f"Expected curves of shape (N, steps + 1) with steps >= 1. Received: shape={curves.shape}")
    return ((curves[:, 1:] + curves[:, :-1]).sum(axis=1) / (2.0 * (curves.shape[1] - 1))).astype(np.float32)


def deletion_curve(model: keras.Model, images, maps, *, classes, config: FaithfulnessConfig | None = None):
    """`Faithfulness(model, config=config).deletion_curve(images, maps, classes=classes)`; see there."""
    return Faithfulness(model, config=config).deletion_curve(images, maps, classes=classes)


def insertion_curve(model: keras.Model, images, maps, *, classes, config: FaithfulnessConfig | None = None):
    """`Faithfulness(model, config=config).insertion_curve(images, maps, classes=classes)`; see there."""
    return Faithfulness(model, config=config).insertion_curve(images, maps, classes=classes)


def random_maps(count: int, size: int, *, cells: int | None = None, seed: int = 0) -> np.ndarray:
    """Random maps, the baseline a faithful explanation must beat, `(count, size, size)` float32 in [0, 1].

    Args:
        count: number of maps.
        size: side of each map.
        cells: `None` for independent uniform pixels; else a `cells x cells`
            uniform grid upsampled bilinearly: random blobs as coarse as a
            Grad-CAM map (e.g. 7 for a 224 px MobileNet), which deletion
            treats differently from scattered pixels. Defaults to `None`.
        seed: seed of the draw. Defaults to `0`.
    """
    Int(min=1).check("count", count)
    Int(min=1).check("size", size)
    Optional(Int(min=1)).check("cells", cells)
    rng = np.random.default_rng(seed)
    if cells is None:
        return rng.random((count, size, size), dtype=np.float32)
    coarse = tf.constant(rng.random((count, cells, cells), dtype=np.float32))
    return _normalize(_upsample(coarse, size)).numpy()


def _average_ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values), np.float64)
    ranks[order] = np.arange(len(values))
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    return (np.bincount(inverse, ranks) / counts)[inverse]  # ties share their mean rank


def rank_correlation(maps_a, maps_b) -> np.ndarray:
    """Spearman rank correlation of each pair of maps, `(N,)` (a scalar array for two single maps).

    Ties get their average rank; a constant map correlates 0 with anything.
    """
    a, b = np.asarray(maps_a, np.float64), np.asarray(maps_b, np.float64)
    if a.shape != b.shape or a.ndim not in (2, 3):
        raise ValueError(f"Expected two maps or batches of maps of one shape. Received: {a.shape} and {b.shape}")
    single = a.ndim == 2
    a = a.reshape(1 if single else len(a), -1)
    b = b.reshape(a.shape)
    out = []
    for x, y in zip(a, b):
        rx, ry = _average_ranks(x) - (len(x) - 1) / 2, _average_ranks(y) - (len(y) - 1) / 2
        denominator = math.sqrt(float(rx @ rx) * float(ry @ ry))
        out.append(float(rx @ ry) / denominator if denominator > 0 else 0.0)
    return np.asarray(out[0] if single else out)
