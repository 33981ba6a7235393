"""Class visualization: the image a classifier finds most typical of a class.

Gradient ascent on the input image of a frozen classifier reveals what the
network has learned a class looks like (an "ideal tabby cat"). Raw gradient
ascent yields high-frequency noise that the network happens to like; three
things make the result an image:

- a penalty on total variation (and optionally an image norm);
- random transforms (jitter, scale, rotation) applied before the network
  sees the image, so only features that survive small moves are rewarded;
- a parameterization in which natural images are easy to reach: Fourier
  coefficients scaled by 1/frequency with decorrelated colour (the approach
  of Lucid, Olah et al. 2017), instead of raw pixels.

The three concerns live in three places: what is optimized (`PixelImage`,
`FourierImage`), how it is made robust (`random_affine`), and the loop
(`visualize_classes`): a `tf.function` that runs a chunk of steps in a
`tf.while_loop`, inside a plain Python loop that gives each step's logs to
the progress bar, TensorBoard and callbacks, out of the graph.

Works on any Keras classifier that takes RGB pixels in [0, 255] and outputs
one score vector per image, like every model of this package::

    model = kt.build_imagenet_classifier("mobilenet", alpha=0.25)
    result = visualize_classes(model, ["tabby", "zebra"], config=VisualizationConfig(seed=0))
    result.uint8_images  # (2, 224, 224, 3)
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence

import keras
import numpy as np
import tensorflow as tf

from keras_transfer import classes as classes_lib
from keras_transfer import models as models_lib
from keras_transfer import naming
from keras_transfer import settings
from keras_transfer.settings import Choice, Flag, Int, Optional, Real, setting

PARAMETERIZATIONS = ("pixel", "fourier")
OBJECTIVES = ("logit", "log_prob", "logit+log_prob")
# Beyond these, octaves only repeat the smallest size (8 px) and images get
# too large to optimize on a CPU.
MAX_OCTAVES = 10
MAX_IMAGE_SIZE = 4096
# `--help` sections of the settings.
_OPTIMIZATION = "optimization"
_PENALTIES = "penalties"
_TRANSFORMS = "random transforms"
_SIZE = "image size and octaves"

# Adam step sizes and total-variation weights that work together (tuned on
# MobileNet 0.25, see experiments/ideal_class/). Adam moves every parameter
# by about the learning rate whatever its gradient, so what counts is the
# penalty's gradient relative to the objective's, per parameter: a pixel gets
# a tiny share of a mean-normalized penalty, a low Fourier frequency a large
# one, hence weights 100x apart.
DEFAULT_LEARNING_RATES = {"pixel": 0.01, "fourier": 0.05}
DEFAULT_TV_WEIGHTS = {"pixel": 1000.0, "fourier": 10.0}

# Square root of the colour correlation of ImageNet photos (Lucid's published
# `color_correlation_svd_sqrt`). Optimizing in this decorrelated colour space
# keeps all three channels' statistics alike, which avoids saturated blotches.
_COLOR_CORRELATION_SVD_SQRT = np.array(
    [[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], dtype=np.float32
)
_COLOR_CORRELATION = _COLOR_CORRELATION_SVD_SQRT / np.max(np.linalg.norm(_COLOR_CORRELATION_SVD_SQRT, axis=0))

Callback = Callable[[int, Mapping[str, np.ndarray]], None]


@dataclasses.dataclass(frozen=True)
class VisualizationConfig:
    """Hyper-parameters of a class visualization.

    Every field is a `keras_transfer.settings.setting`: its default, its
    valid values and its help (also the `ideal_class` command's flag) are
    declared with it. In more detail:

    - `objective`: what is maximized for each image's target class:
      `"logit"` (the raw class score, Simonyan et al. 2014: strong,
      recognizable features, but similar classes such as "tiger cat" rise
      with the target), `"log_prob"` (the log-softmax: makes the class win,
      but stops gaining once it is certain, so the image stays faint) or
      `"logit+log_prob"` (logit plus `log_prob_weight` times the
      log-probability: both).
    - `parameterization`: `"fourier"` (1/f-scaled spectrum with decorrelated
      colour, squashed into range by a sigmoid) or `"pixel"` (raw pixels
      clipped to range after every step).
    - `tv_weight`: the total variation is the mean absolute difference
      between neighbouring pixels on a [0, 1] scale; a mean, so one weight
      works at every image size.
    - `octaves`: optimize first at a coarse size, then at sizes growing by
      `octave_scale` up to `image_size` (multi-scale); each octave gets
      `steps // octaves` steps (the last one the rest), at least 2 when
      there are several.
    - `seed`: equal seeds give equal results; `None` draws a fresh seed,
      reported in `VisualizationResult.config`.
    """

    steps: int = setting(
        256, kind=Int(min=1), group=_OPTIMIZATION,
        help="gradient steps in total (split evenly over the octaves).",
    )
    learning_rate: float | None = setting(
        None, kind=Optional(Real(min=0, min_open=True)), group=_OPTIMIZATION,
        help="Adam learning rate; None: "
        + ", ".join(f"{v:g} for {k}" for k, v in DEFAULT_LEARNING_RATES.items()) + ".",
    )
    objective: str = setting(
        "logit+log_prob", kind=Choice(OBJECTIVES), group=_OPTIMIZATION,
        help="score maximized for the target class: the logit, the log-probability, or the logit plus "
        "--log-prob-weight times the log-probability.",
    )
    log_prob_weight: float = setting(
        3.0, kind=Real(min=0), group=_OPTIMIZATION,
        help="weight of the log-probability in the logit+log_prob objective.",
    )
    parameterization: str = setting(
        "fourier", kind=Choice(PARAMETERIZATIONS), group=_OPTIMIZATION,
        help="optimize raw pixels, or a 1/f-scaled Fourier spectrum with decorrelated colour.",
    )
    tv_weight: float | None = setting(
        None, kind=Optional(Real(min=0)), group=_PENALTIES,
        help="weight of the total variation (mean absolute neighbour difference on a [0, 1] scale); None: "
        + ", ".join(f"{v:g} for {k}" for k, v in DEFAULT_TV_WEIGHTS.items()) + ".",
    )
    l1_weight: float = setting(
        0.0, kind=Real(min=0), group=_PENALTIES, help="weight of mean |pixel - grey| on a [0, 1] scale."
    )
    l2_weight: float = setting(
        0.0, kind=Real(min=0), group=_PENALTIES, help="weight of mean (pixel - grey)^2 on a [0, 1] scale."
    )
    jitter: int = setting(
        8, kind=Int(min=0, max=MAX_IMAGE_SIZE), group=_TRANSFORMS,
        help="maximum random shift in model-input pixels, drawn anew at every step; 0 disables it.",
    )
    scale: float = setting(
        0.1, kind=Real(min=0, max=1, max_open=True), group=_TRANSFORMS,
        help="maximum random zoom in or out, 0.1 = 0.9 to 1.1; 0 disables it.",
    )
    rotation: float = setting(
        5.0, kind=Real(min=0, max=180), group=_TRANSFORMS,
        help="maximum random rotation in degrees; 0 disables it.",
    )
    octaves: int = setting(
        1, kind=Int(min=1, max=MAX_OCTAVES), group=_SIZE,
        help="number of coarse-to-fine sizes, each with at least 2 steps; 1 = a single size.",
    )
    octave_scale: float = setting(
        1.4, kind=Real(min=1, min_open=True), group=_SIZE, help="size ratio between consecutive octaves."
    )
    image_size: int | None = setting(
        None, kind=Optional(Int(min=8, max=MAX_IMAGE_SIZE)), group=_SIZE,
        help="side of the optimized image; the model sees it resampled to its input size. "
        "None: the model's input size.",
    )
    init_std: float = setting(
        0.01, kind=Real(min=0), group=_OPTIMIZATION,
        help="standard deviation of the random start around mid-grey (pixel scale [0, 1] for pixel, "
        "spectrum units for fourier).",
    )
    decorrelate: bool = setting(
        True, kind=Flag(), group=_OPTIMIZATION,
        help="optimize colour in the decorrelated ImageNet colour space (fourier only).",
    )
    jit_compile: bool = setting(
        False, kind=Flag(), group=_OPTIMIZATION, help="compile the step with XLA (often slower on CPU; measure)."
    )
    seed: int | None = setting(
        None, kind=Optional(Int(min=0)), group=_OPTIMIZATION,
        help="seed of the start image and the random transforms; equal seeds give equal results.",
    )

    def __post_init__(self):
        settings.validate(self)
        if self.octaves > 1 and self.steps < 2 * self.octaves:
            raise ValueError(
                "Expected at least 2 steps per octave (steps >= 2 * octaves) with several octaves. "
                f"Received: steps={self.steps!r}, octaves={self.octaves!r}"
            )

    @property
    def effective_learning_rate(self) -> float:
        if self.learning_rate is not None:
            return float(self.learning_rate)
        return DEFAULT_LEARNING_RATES[self.parameterization]

    @property
    def effective_tv_weight(self) -> float:
        if self.tv_weight is not None:
            return float(self.tv_weight)
        return DEFAULT_TV_WEIGHTS[self.parameterization]


# --------------------------------------------------------------------------
# What is optimized: parameterizations of a batch of RGB images in [0, 1].
# --------------------------------------------------------------------------


class PixelImage:
    """Raw pixels on a [0, 1] scale, projected back into range after each step.

    Args:
        size: side of the square image.
    """

    # Layout of `render_planes`: channels last, the same as `render`.
    channels_first = False

    def __init__(self, size: int):
        self.size = int(size)

    def initial(self, batch: int, *, std: float, rng: np.random.Generator) -> np.ndarray:
        """Mid-grey plus Gaussian noise of standard deviation `std`."""
        noise = rng.normal(0.0, std, size=(batch, self.size, self.size, 3))
        return np.clip(0.5 + noise, 0.0, 1.0).astype(np.float32)

    def from_images(self, images: np.ndarray) -> np.ndarray:
        """Parameters that render exactly `images` (in [0, 1])."""
        return np.clip(np.asarray(images, np.float32), 0.0, 1.0)

    def render(self, params: tf.Tensor) -> tf.Tensor:
        return params

    def render_planes(self, params: tf.Tensor) -> tf.Tensor:
        """The images in the layout `channels_first` names (the optimization step's)."""
        return params

    def project(self, params: tf.Tensor) -> tf.Tensor:
        return tf.clip_by_value(params, 0.0, 1.0)


class FourierImage:
    """A 1/f-scaled spectrum in decorrelated colour, squashed by a sigmoid.

    Natural images have a spectrum falling roughly as 1/frequency. Scaling
    the optimized Fourier coefficients that way makes a gradient step move
    all frequencies about equally in image space, instead of favouring the
    high frequencies that raw-pixel gradients are full of.

    Args:
        size: side of the square image.
        decay_power: exponent of the 1/frequency scaling. Defaults to `1.0`.
        decorrelate: map the three channels through the ImageNet colour
            correlation before the sigmoid. Defaults to `True`.
    """

    # Lucid divides the inverse FFT by 4 so that the sigmoid starts in its
    # near-linear range; kept so that its learning rates carry over.
    _SPATIAL_SCALE = 4.0
    # The inverse FFT yields one plane per channel; the step keeps that
    # layout (on CPU, transposing 3-channel images costs several sigmoids).
    channels_first = True

    def __init__(self, size: int, *, decay_power: float = 1.0, decorrelate: bool = True):
        self.size = int(size)
        self.decorrelate = decorrelate
        fy = np.fft.fftfreq(self.size)[:, None]
        fx = np.fft.rfftfreq(self.size)[None, :]
        freqs = np.sqrt(fx * fx + fy * fy)
        scale = 1.0 / np.maximum(freqs, 1.0 / self.size) ** decay_power
        # sqrt(h * w) makes TF's 1/(h * w)-normalized inverse FFT orthonormal.
        self._scale = (scale * self.size).astype(np.float32)
        self._color = _COLOR_CORRELATION if decorrelate else np.eye(3, dtype=np.float32)
        # The inverse FFT is linear, so the spatial scale joins the spectrum's.
        self._forward_scale = (self._scale / self._SPATIAL_SCALE).astype(np.complex64)
        # Adjoint of the inverse real FFT: the real FFT divided by h * w, with
        # the columns that stand for two conjugate frequencies counted twice
        # (the gradient TF registers for IRFFT2D, applied in one product).
        columns = np.full(self.size // 2 + 1, 2.0)
        columns[0] = 1.0
        if self.size % 2 == 0:
            columns[-1] = 1.0
        self._adjoint_scale = (self._forward_scale * columns / self.size**2).astype(np.complex64)

    @property
    def spectrum_shape(self) -> tuple[int, int, int]:
        return 3, self.size, self.size // 2 + 1

    def initial(self, batch: int, *, std: float, rng: np.random.Generator) -> np.ndarray:
        """A random spectrum (real and imaginary parts of standard deviation `std`)."""
        return rng.normal(0.0, std, size=(batch, *self.spectrum_shape, 2)).astype(np.float32)

    def from_images(self, images: np.ndarray) -> np.ndarray:
        """Parameters that render `images` (in [0, 1]; exact up to clipping at 0 and 1)."""
        images = np.clip(np.asarray(images, np.float64), 1e-4, 1.0 - 1e-4)
        pre_sigmoid = np.log(images) - np.log1p(-images)
        decorrelated = pre_sigmoid @ np.linalg.inv(self._color.T.astype(np.float64))
        channels_first = np.transpose(decorrelated * self._SPATIAL_SCALE, (0, 3, 1, 2))
        spectrum = np.fft.rfft2(channels_first) / self._scale
        return np.stack([spectrum.real, spectrum.imag], axis=-1).astype(np.float32)

    def render(self, params: tf.Tensor) -> tf.Tensor:
        return tf.transpose(self.render_planes(params), (0, 2, 3, 1))

    def render_planes(self, params: tf.Tensor) -> tf.Tensor:
        """The images as `(batch, 3, size, size)` planes (the optimization step's layout)."""
        planes = self._inverse_fft(params)
        batch = tf.shape(planes)[0]
        # Colour mixing as one small product over the channel axis.
        mixed = tf.matmul(tf.constant(self._color), tf.reshape(planes, [batch, 3, -1]))
        return tf.sigmoid(tf.reshape(mixed, tf.shape(planes)))

    def _inverse_fft(self, params: tf.Tensor) -> tf.Tensor:
        """Scaled spectrum `(batch, 3, size, size // 2 + 1, 2)` -> `(batch, 3, size, size)` planes."""
        fft_length = [self.size, self.size]

        # Written out because autodiff through `tf.complex(p[..., 0], p[..., 1])`
        # scatters both halves back into full-size zero tensors (two
        # StridedSliceGrads: more CPU time than the FFTs themselves).
        @tf.custom_gradient
        def inverse_fft(params):
            spectrum = tf.bitcast(params, tf.complex64) * self._forward_scale

            def gradient(upstream):
                return tf.bitcast(tf.signal.rfft2d(upstream, fft_length=fft_length) * self._adjoint_scale, tf.float32)

            return tf.signal.irfft2d(spectrum, fft_length=fft_length), gradient

        return inverse_fft(tf.convert_to_tensor(params, tf.float32))

    def project(self, params: tf.Tensor) -> tf.Tensor:
        return params


def make_parameterization(name: str, size: int, *, decorrelate: bool = True) -> PixelImage | FourierImage:
    """The parameterization called `name` (`"pixel"` or `"fourier"`) of a `size`-pixel image."""
    if name == "pixel":
        return PixelImage(size)
    if name == "fourier":
        return FourierImage(size, decorrelate=decorrelate)
    raise ValueError(f"Unknown parameterization. Expected one of {PARAMETERIZATIONS}. Received: {name!r}")


# --------------------------------------------------------------------------
# How it is made robust: random affine resampling, in TF ops.
# --------------------------------------------------------------------------


def affine_resample(
    images: tf.Tensor,
    *,
    output_size: int,
    angle: tf.Tensor | float = 0.0,
    zoom: tf.Tensor | float = 1.0,
    shift: tf.Tensor | Sequence[float] = (0.0, 0.0),
    sparse: bool = True,
    gain: float = 1.0,
    channels_first: bool = False,
) -> tf.Tensor:
    """Rotates, zooms and shifts a batch of images and resamples it to `output_size`.

    Bilinear interpolation with mirrored borders, written as a linear map with
    four weights per output pixel, so its gradient is the exact adjoint of
    the resampling (TF's gradient of `ImageProjectiveTransformV3` is only an
    approximation). All images of the batch get the same transform, so the
    map is built once per call.

    Args:
        images: `(batch, height, width, channels)` float images with a
            static shape.
        output_size: side of the square output.
        angle: rotation in radians. Defaults to `0.0`.
        zoom: magnification; > 1 shows a smaller central part. Defaults to
            `1.0`.
        shift: translation (x, y) in output pixels. Defaults to `(0, 0)`.
        sparse: apply the map as a sparse-dense matrix product, the fastest
            on CPU (about half the CPU time of gathers, forward and
            backward); `False` uses a gather, which XLA can compile. Both
            give the same result. Defaults to `True`.
        gain: factor applied to the output, folded into the interpolation
            weights (free, where a product would cost two passes over the
            images, forward and backward). Defaults to `1.0`.
        channels_first: `images` are `(batch, channels, height, width)`;
            the output is channels last all the same. Defaults to `False`.

    Returns:
        `(batch, output_size, output_size, channels)` images.
    """
    images = tf.convert_to_tensor(images)
    if channels_first:
        batch, channels, in_h, in_w = images.shape
    else:
        batch, in_h, in_w, channels = images.shape
    index, weight = _resampling_map(tf.stop_gradient(tf.cast(angle, tf.float32)),
                                    tf.stop_gradient(tf.cast(zoom, tf.float32)),
                                    tf.stop_gradient(tf.cast(shift, tf.float32)), tf.constant(gain, tf.float32),
                                    output_size=output_size, in_h=in_h, in_w=in_w)
    out_pixels = output_size * output_size
    # Pixels as rows, (image, channel) as columns: one map serves the batch.
    pixels = tf.transpose(images, (2, 3, 0, 1) if channels_first else (1, 2, 0, 3))
    pixels = tf.reshape(pixels, (in_h * in_w, batch * channels))
    if sparse:
        rows = np.repeat(np.arange(out_pixels, dtype=np.int64), 4)
        matrix = tf.sparse.SparseTensor(
            tf.stack([tf.constant(rows), tf.reshape(index, [-1])], axis=1),
            tf.reshape(weight, [-1]),
            dense_shape=[out_pixels, in_h * in_w],
        )
        out = tf.sparse.sparse_dense_matmul(matrix, pixels)
    else:
        gathered = tf.gather(pixels, tf.reshape(index, [-1]))
        out = tf.reduce_sum(tf.reshape(gathered, (out_pixels, 4, batch * channels)) * tf.reshape(weight, (-1, 4, 1)), 1)
    out = tf.reshape(out, (output_size, output_size, batch, channels))
    return tf.transpose(out, (2, 0, 1, 3))


# One fused XLA kernel for the ~20 elementwise steps from the transform to the taps (about 4x faster
# than TF's kernels, 3-4 ms of a 150 ms step for 8 images at 224 px).
@tf.function(jit_compile=True)
def _resampling_map(angle: tf.Tensor, zoom: tf.Tensor, shift: tf.Tensor, gain: tf.Tensor, *, output_size: int,
                    in_h: int, in_w: int) -> tuple[tf.Tensor, tf.Tensor]:
    """The taps of `affine_resample`: `(index, weight)`, `(output_size, output_size, 4)` each."""
    # Output pixel centres in normalized coordinates [-1, 1].
    grid = (2.0 * np.arange(output_size, dtype=np.float32) + 1.0) / output_size - 1.0
    gy, gx = (tf.constant(g) for g in np.meshgrid(grid, grid, indexing="ij"))
    cos = tf.cos(angle) / zoom
    sin = tf.sin(angle) / zoom
    tx = 2.0 * shift[0] / output_size
    ty = 2.0 * shift[1] / output_size
    # Normalized -> input pixel coordinates (pixel centres at integers).
    x = ((cos * gx - sin * gy + tx + 1.0) * in_w - 1.0) / 2.0
    y = ((sin * gx + cos * gy + ty + 1.0) * in_h - 1.0) / 2.0
    index, weight = _bilinear_taps(_mirror(x, in_w), _mirror(y, in_h), in_h, in_w)
    return index, weight * gain


def _bilinear_taps(x: tf.Tensor, y: tf.Tensor, in_h: int, in_w: int) -> tuple[tf.Tensor, tf.Tensor]:
    """The four input pixels (flat indices) around each sampling point, and their bilinear weights.

    `x` and `y` are input pixel coordinates (centres at integers) within
    [-0.5, size - 0.5]; the results have their shape plus a last axis of 4.
    """
    x0 = tf.floor(x)
    y0 = tf.floor(y)
    wx = x - x0
    wy = y - y0
    # Coordinates in [-0.5, 0) and (size - 1, size - 0.5] interpolate
    # between a border pixel and itself.
    x0i = tf.cast(x0, tf.int64)
    y0i = tf.cast(y0, tf.int64)
    x1i = tf.clip_by_value(x0i + 1, 0, in_w - 1)
    y1i = tf.clip_by_value(y0i + 1, 0, in_h - 1)
    x0i = tf.clip_by_value(x0i, 0, in_w - 1)
    y0i = tf.clip_by_value(y0i, 0, in_h - 1)
    index = tf.stack([y0i * in_w + x0i, y0i * in_w + x1i, y1i * in_w + x0i, y1i * in_w + x1i], axis=-1)
    weight = tf.stack([(1.0 - wx) * (1.0 - wy), wx * (1.0 - wy), (1.0 - wx) * wy, wx * wy], axis=-1)
    return index, weight


def _mirror(coord: tf.Tensor, size: int) -> tf.Tensor:
    """Reflects pixel coordinates into [-0.5, size - 0.5] (mirror at the border)."""
    period = 2.0 * size
    c = tf.math.floormod(coord + 0.5, period)
    c = tf.where(c >= size, period - c, c)
    return c - 0.5


def random_affine(
    images: tf.Tensor,
    *,
    output_size: int,
    seed: tf.Tensor,
    jitter: int = 0,
    scale: float = 0.0,
    rotation: float = 0.0,
    sparse: bool = True,
    gain: float = 1.0,
    channels_first: bool = False,
) -> tf.Tensor:
    """Applies one random shift, zoom and rotation to a batch of images (stateless RNG).

    The same transform for every image keeps each image's result independent
    of the rest of the batch (visualizing a class alone or with others gives
    the same image for a seed) and lets one resampling map serve all.

    Args:
        images: `(batch, height, width, channels)` float images.
        output_size: side of the square output (the model's input size).
        seed: int32 tensor of shape `(2,)`; equal seeds give equal transforms.
        jitter: maximum shift in output pixels (rounded to whole pixels).
            Defaults to `0`.
        scale: maximum zoom in or out as a fraction. Defaults to `0.0`.
        rotation: maximum rotation in degrees. Defaults to `0.0`.
        sparse: see `affine_resample`. Defaults to `True`.
        gain: factor applied to the output (see `affine_resample`).
            Defaults to `1.0`.
        channels_first: `images` are `(batch, channels, height, width)`;
            the output is channels last all the same. Defaults to `False`.
    """
    images = tf.convert_to_tensor(images)
    height, width = images.shape[2:4] if channels_first else images.shape[1:3]
    if not (jitter or scale or rotation) and height == output_size and width == output_size:
        images = tf.transpose(images, (0, 2, 3, 1)) if channels_first else images
        return images * gain if gain != 1.0 else images
    seeds = tf.random.experimental.stateless_split(seed, 3)
    shift = tf.round(tf.random.stateless_uniform((2,), seeds[0], -jitter - 0.5, jitter + 0.5))
    zoom = tf.random.stateless_uniform((), seeds[1], 1.0 - scale, 1.0 + scale)
    angle = tf.random.stateless_uniform((), seeds[2], -rotation, rotation) * (math.pi / 180.0)
    return affine_resample(
        images,
        output_size=output_size,
        angle=angle,
        zoom=zoom,
        shift=shift,
        sparse=sparse,
        gain=gain,
        channels_first=channels_first,
    )


# --------------------------------------------------------------------------
# Objectives and penalties: per-image values, maximized / minimized.
# --------------------------------------------------------------------------


def class_score(
    logits: tf.Tensor,
    targets: tf.Tensor,
    *,
    objective: str = "logit+log_prob",
    log_prob_weight: float = 3.0,
) -> tf.Tensor:
    """Each image's score for its own target class, `(batch,)`.

    Args:
        logits: `(batch, num_classes)` class logits.
        targets: `(batch,)` int class indices.
        objective: `"logit"`, `"log_prob"` or `"logit+log_prob"` (see
            `VisualizationConfig`). Defaults to `"logit+log_prob"`.
        log_prob_weight: weight of the log-probability in
            `"logit+log_prob"`. Defaults to `3.0`.
    """
    if objective == "logit":
        scores = logits
    elif objective == "log_prob":
        scores = tf.nn.log_softmax(logits, axis=-1)
    elif objective == "logit+log_prob":
        scores = logits + log_prob_weight * tf.nn.log_softmax(logits, axis=-1)
    else:
        raise ValueError(f"Unknown objective. Expected one of {OBJECTIVES}. Received: objective={objective!r}")
    return tf.gather(scores, targets, axis=1, batch_dims=1)


def total_variation(images, *, channels_first: bool = False) -> tf.Tensor:
    """Mean absolute difference between neighbouring pixels, per image.

    A mean rather than `tf.image.total_variation`'s sum, so the value (and a
    penalty weight) does not grow with the image size. On images in [0, 1]
    it is 0 for a flat image and about 0.67 for uniform noise.

    Args:
        images: `(batch, height, width, channels)` images.
        channels_first: `images` are `(batch, channels, height, width)`
            instead. Defaults to `False`.

    Returns:
        `(batch,)` float32 values.
    """
    return _total_variation_along(tf.cast(images, tf.float32), 2 if channels_first else 1)


def _total_variation_along(images: tf.Tensor, first_axis: int) -> tf.Tensor:
    """Total variation over the two spatial axes `first_axis` and `first_axis + 1`."""

    # The gradient written out: autodiff through the two slicings takes
    # about 7x longer on CPU (15 ms vs 2 ms for two 224 px images), which
    # was a third of a whole optimization step.
    @tf.custom_gradient
    def tv(images):
        return _tv_value(images, first_axis), lambda upstream: _tv_gradient(images, upstream, first_axis)

    return tv(images)


def _tv_differences(images: tf.Tensor, first_axis: int) -> tuple[tf.Tensor, tf.Tensor, float, float]:
    lead = (slice(None),) * first_axis
    dy = images[lead + (slice(1, None),)] - images[lead + (slice(None, -1),)]
    dx = images[lead + (slice(None), slice(1, None))] - images[lead + (slice(None), slice(None, -1))]
    return dy, dx, float(np.prod(dy.shape[1:])), float(np.prod(dx.shape[1:]))


# Value and gradient each fused by XLA into a pass or two over the images (2-2.5x faster than TF's
# dozen elementwise kernels: 4-6 ms of a 150 ms step for 8 images at 224 px); XLA compiles them even
# inside a step that is not compiled (the sparse resampling cannot be).
@tf.function(jit_compile=True)
def _tv_value(images: tf.Tensor, first_axis: int) -> tf.Tensor:
    dy, dx, count_y, count_x = _tv_differences(images, first_axis)
    return tf.reduce_sum(tf.abs(dy), axis=(1, 2, 3)) / count_y + tf.reduce_sum(tf.abs(dx), axis=(1, 2, 3)) / count_x


@tf.function(jit_compile=True)
def _tv_gradient(images: tf.Tensor, upstream: tf.Tensor, first_axis: int) -> tf.Tensor:
    dy, dx, count_y, count_x = _tv_differences(images, first_axis)
    upstream = upstream[:, None, None, None]
    y_axis, x_axis = first_axis, first_axis + 1
    sy = tf.sign(dy) * (upstream / count_y)
    sx = tf.sign(dx) * (upstream / count_x)
    # d|x[i+1] - x[i]| / dx[i] = -sign, and +sign for x[i+1]: the padded differences, shifted.
    pad_y = [[0, 0]] * 4
    pad_y[y_axis] = [1, 1]
    pad_x = [[0, 0]] * 4
    pad_x[x_axis] = [1, 1]
    sy, sx = tf.pad(sy, pad_y), tf.pad(sx, pad_x)
    lead = (slice(None),) * first_axis
    return (sy[lead + (slice(None, -1),)] - sy[lead + (slice(1, None),)]
            + sx[lead + (slice(None), slice(None, -1))] - sx[lead + (slice(None), slice(1, None))])


def image_norm(images, *, p: int) -> tf.Tensor:
    """Mean |pixel - 0.5|^p of images in [0, 1], per image (`p` is 1 or 2)."""
    if p not in (1, 2):
        raise ValueError(f"Expected p in (1, 2). Received: p={p!r}")
    centred = tf.abs(tf.cast(images, tf.float32) - 0.5)
    return tf.reduce_mean(centred if p == 1 else tf.square(centred), axis=(1, 2, 3))


# --------------------------------------------------------------------------
# The loop.
# --------------------------------------------------------------------------


@dataclasses.dataclass
class VisualizationResult:
    """What `visualize_classes` returns.

    Attributes:
        images: `(batch, size, size, 3)` float32 pixels in [0, 255].
        targets: target class index of each image.
        class_names: target class name of each image.
        history: per-step values, each `(steps, batch)`: `"loss"`,
            `"objective"` (the maximized score), `"penalty"` (weighted sum),
            `"tv"`, `"l1"`, `"l2"` (unweighted penalties) and
            `"probability"` (softmax of the target on the transformed image
            the model saw at that step).
        config: the configuration used, with the seed actually used.
        seconds: wall time of the optimization steps (without the first,
            compiling step of each octave).
    """

    images: np.ndarray
    targets: list[int]
    class_names: list[str]
    history: dict[str, np.ndarray]
    config: VisualizationConfig
    seconds: float = 0.0

    @property
    def uint8_images(self) -> np.ndarray:
        """The images rounded to uint8, as they would be saved."""
        return np.clip(np.round(self.images), 0, 255).astype(np.uint8)

    @property
    def steps_per_second(self) -> float:
        """Optimization speed, without each octave's first (compiling) step; `nan` when no other step ran."""
        timed = self.history["loss"].shape[0] - self.config.octaves
        return timed / self.seconds if self.seconds > 0 and timed > 0 else float("nan")


_IMAGE_EVERY = Int(min=1)


class NonFiniteLossError(FloatingPointError):
    """The loss or its gradient became NaN or infinite during optimization."""


def resolve_targets(classes: Sequence[int | str] | int | str, class_names: Sequence[str]) -> list[int]:
    """Class indices of `classes` (indices or names) among `class_names`."""
    if isinstance(classes, (int, str, np.integer)):
        classes = [classes]
    classes = [int(c) if isinstance(c, np.integer) else c for c in classes]
    if not classes:
        raise ValueError("Expected at least one class to visualize. Received: classes=[]")
    return [classes_lib.resolve_class(c, class_names) for c in classes]


def visualize_classes(
    model: keras.Model,
    classes: Sequence[int | str] | int | str,
    *,
    config: VisualizationConfig | None = None,
    class_names: Sequence[str] | None = None,
    callbacks: Sequence[Callback] = (),
    log_dir: str | os.PathLike | None = None,
    image_every: int = 50,
    progress: bool = True,
) -> VisualizationResult:
    """Optimizes one image per class, each toward its own class, in one batch.

    Args:
        model: a classifier from RGB pixels in [0, 255] to class scores of
            shape `(batch, num_classes)`; a final softmax is removed (see
            `keras_transfer.models.as_logits_model`).
        classes: class indices or names (one image each). Names are looked
            up in `class_names`.
        config: hyper-parameters. Defaults to `VisualizationConfig()`.
        class_names: names of the model's classes. Defaults to `None`: the
            ImageNet names for a 1000-class model, else the indices.
        callbacks: callables `callback(step, logs)` called for every step,
            in order, with the `history` values of that step (numpy arrays
            of shape `(batch,)`); steps run in chunks of up to
            `CHUNK_STEPS` in the graph, and the calls follow each chunk.
            Defaults to `()`.
        log_dir: folder for TensorBoard scalars (every step) and images.
            Defaults to `None` (no logs).
        image_every: write the images to TensorBoard every this many steps
            (and after the last). Defaults to `50`.
        progress: show a progress bar. Defaults to `True`.

    Returns:
        A `VisualizationResult`.

    Raises:
        ValueError: for a model without a class-score output or an unknown
            class (the message suggests close matches).
        NonFiniteLossError: when the loss or gradient becomes NaN or
            infinite; no image is returned then.
    """
    config = config or VisualizationConfig()
    if not isinstance(config, VisualizationConfig):
        raise TypeError(f"Expected a VisualizationConfig. Received: config={config!r}")
    _IMAGE_EVERY.check("image_every", image_every)
    logits_model, model_size = models_lib.logits_model_and_size(model)
    class_names = _class_names(logits_model, class_names)
    targets = resolve_targets(classes, class_names)
    seed = config.seed if config.seed is not None else random.SystemRandom().randrange(2**31)
    config = dataclasses.replace(config, seed=seed)
    rng = np.random.default_rng(seed)
    batch = len(targets)
    recorder = _Recorder(
        total_steps=config.steps,
        labels=naming.unique_stems([class_names[t] for t in targets], default="class"),
        callbacks=tuple(callbacks),
        writer=tf.summary.create_file_writer(os.fspath(log_dir)) if log_dir is not None else None,
        image_every=image_every,
        progbar=keras.utils.Progbar(config.steps, stateful_metrics=["loss", "probability"]) if progress else None,
    )
    target_tensor = tf.constant(targets, tf.int32)
    images01: np.ndarray | None = None
    first_step = 0
    try:
        for octave_size, octave_steps in _octaves(config, config.image_size or model_size):
            param = make_parameterization(config.parameterization, octave_size, decorrelate=config.decorrelate)
            if images01 is None:
                start = param.initial(batch, std=config.init_std, rng=rng)
            else:
                resized = tf.image.resize(images01, (octave_size, octave_size), method="bilinear").numpy()
                start = param.from_images(resized)
            images01 = _optimize_octave(logits_model, param, start, target_tensor, config, model_size,
                                        first_step=first_step, steps=octave_steps, recorder=recorder)
            first_step += octave_steps
    finally:
        if recorder.writer is not None:
            recorder.writer.close()
    if not np.all(np.isfinite(images01)):
        raise NonFiniteLossError("The optimized images contain NaN or infinite values; no image was returned.")
    return VisualizationResult(
        images=np.clip(images01 * 255.0, 0.0, 255.0).astype(np.float32),
        targets=targets,
        class_names=[class_names[t] for t in targets],
        history={k: np.stack(v) for k, v in recorder.history.items()},
        config=config,
        seconds=recorder.seconds,
    )


def _class_names(logits_model: keras.Model, class_names: Sequence[str] | None) -> Sequence[str]:
    """`class_names`, checked against the model's number of classes; `None`: ImageNet's or the indices."""
    num_classes = int(logits_model.outputs[0].shape[-1])
    if class_names is None:
        return classes_lib.class_names_for_model(None, num_classes)
    if len(class_names) != num_classes:
        raise ValueError(f"The model has {num_classes} classes but {len(class_names)} class names were given.")
    return class_names


def _octaves(config: VisualizationConfig, size: int) -> list[tuple[int, int]]:
    """(image side, steps) of each octave, coarse to fine; the last octave takes the remainder of the steps."""
    sizes = [max(8, round(size / config.octave_scale ** (config.octaves - 1 - k))) for k in range(config.octaves)]
    steps = [config.steps // config.octaves] * config.octaves
    steps[-1] += config.steps - sum(steps)
    return list(zip(sizes, steps))


@dataclasses.dataclass
class _Recorder:
    """What happens after each step, outside the compiled step: checks, history, TensorBoard, progress, callbacks."""

    total_steps: int
    labels: list[str]
    callbacks: tuple[Callback, ...]
    writer: tf.summary.SummaryWriter | None
    image_every: int
    progbar: keras.utils.Progbar | None
    history: dict[str, list[np.ndarray]] = dataclasses.field(default_factory=dict)
    seconds: float = 0.0  # in the steps, after the first step of each octave (which traces it)

    def chunk_end(self, step: int, end: int) -> int:
        """Where a chunk of steps starting at `step` (0-based) must stop: at `end`, or earlier where TensorBoard
        shows the images of a step (they exist only between chunks)."""
        end = min(end, step + CHUNK_STEPS)
        if self.writer is None:
            return end
        return min(end, (step // self.image_every + 1) * self.image_every)

    def record(self, step: int, logs: dict[str, np.ndarray], render: Callable[[], np.ndarray]) -> None:
        """Records step `step` (0-based); `render` gives the current images when TensorBoard shows them."""
        _check_finite(logs, step)
        for key, value in logs.items():
            self.history.setdefault(key, []).append(value)
        done = step + 1
        if self.writer is not None:
            show = done % self.image_every == 0 or done == self.total_steps
            _write_summaries(self.writer, done, logs, self.labels, render() if show else None)
        if self.progbar is not None:
            self.progbar.update(done, [(key, float(np.mean(logs[key]))) for key in ("loss", "probability")])
        for callback in self.callbacks:
            callback(step, logs)


def _optimize_octave(
    model: keras.Model,
    param: PixelImage | FourierImage,
    start: np.ndarray,
    targets: tf.Tensor,
    config: VisualizationConfig,
    model_size: int,
    *,
    first_step: int,
    steps: int,
    recorder: _Recorder,
) -> np.ndarray:
    """Optimizes `param` from `start` for `steps` steps (a fresh Adam); returns the images in [0, 1]."""
    variable = tf.Variable(start, trainable=True, name="image_parameters")
    optimizer = keras.optimizers.Adam(learning_rate=config.effective_learning_rate)
    optimizer.build([variable])
    run_steps = _make_steps(model, param, variable, optimizer, targets, config, model_size)
    step, end = first_step, first_step + steps
    while step < end:
        # The first step alone: it traces (its time is left out of `seconds`).
        stop = step + 1 if step == first_step else recorder.chunk_end(step, end)
        started = time.perf_counter()
        stacked = {key: value.numpy() for key, value in run_steps(tf.constant(step), tf.constant(stop - step)).items()}
        if step > first_step:
            recorder.seconds += time.perf_counter() - started
        for i in range(stop - step):
            recorder.record(step + i, {key: value[i] for key, value in stacked.items()},
                            lambda: param.render(variable).numpy())
        step = stop
    return param.render(variable).numpy()


def _make_steps(
    model: keras.Model,
    param: PixelImage | FourierImage,
    variable: tf.Variable,
    optimizer: keras.optimizers.Optimizer,
    targets: tf.Tensor,
    config: VisualizationConfig,
    model_size: int,
) -> Callable[[tf.Tensor, tf.Tensor], dict[str, tf.Tensor]]:
    """`run_steps(first, count)`: `count` steps from global step `first`, each log stacked `(count, ...)`."""
    tv_weight = config.effective_tv_weight

    def step(seed: tf.Tensor) -> dict[str, tf.Tensor]:
        with tf.GradientTape() as tape:
            # In the parameterization's own layout: the resampling takes
            # any, and gives the model channels last on its [0, 255] scale.
            images = param.render_planes(variable)
            seen = random_affine(
                images,
                output_size=model_size,
                seed=seed,
                jitter=config.jitter,
                scale=config.scale,
                rotation=config.rotation,
                # XLA cannot compile the sparse product.
                sparse=not config.jit_compile,
                gain=255.0,
                channels_first=param.channels_first,
            )
            logits = tf.cast(model(seen, training=False), tf.float32)
            objective = class_score(
                logits, targets, objective=config.objective, log_prob_weight=config.log_prob_weight
            )
            tv = total_variation(images, channels_first=param.channels_first)
            l1 = image_norm(images, p=1)
            l2 = image_norm(images, p=2)
            # Terms with weight 0 are logged but kept out of the gradient.
            terms = ((tv_weight, tv), (config.l1_weight, l1), (config.l2_weight, l2))
            weighted = [weight * term for weight, term in terms if weight]
            penalty = tf.add_n(weighted) if weighted else tf.zeros_like(tv)
            loss = penalty - objective
            # Images are independent (the model runs in inference mode), so
            # the sum gives each image the gradient of its own loss.
            total = tf.reduce_sum(loss)
        gradient = tape.gradient(total, variable)
        gradient_finite = tf.reduce_all(tf.math.is_finite(gradient))
        optimizer.apply_gradients([(gradient, variable)])
        if isinstance(param, PixelImage):
            variable.assign(param.project(variable))
        probability = tf.gather(keras.ops.softmax(logits, axis=-1), targets, axis=1, batch_dims=1)
        return {
            "loss": loss,
            "objective": objective,
            "penalty": penalty,
            "tv": tv,
            "l1": l1,
            "l2": l2,
            "probability": probability,
            "gradient_finite": gradient_finite,
        }

    # The steps of a chunk run in the graph: a return to Python per step (the
    # call, its outputs, the bookkeeping) cost about a tenth of a step at batch 8.
    @tf.function(jit_compile=config.jit_compile, reduce_retracing=True)
    def run_steps(first: tf.Tensor, count: tf.Tensor) -> dict[str, tf.Tensor]:
        logs = {key: tf.TensorArray(dtype, size=count) for key, dtype in _LOG_DTYPES.items()}
        for i in tf.range(count):
            # Each step's random transform is drawn from (seed, global step).
            outputs = step(tf.stack([tf.constant(config.seed % 2**31, tf.int32), first + i]))
            logs = {key: logs[key].write(i, outputs[key]) for key in _LOG_DTYPES}
        return {key: log.stack() for key, log in logs.items()}

    return run_steps


_LOG_DTYPES = {key: tf.float32 for key in ("loss", "objective", "penalty", "tv", "l1", "l2", "probability")}
_LOG_DTYPES["gradient_finite"] = tf.bool
# Steps run in the graph before the logs return to Python (progress bar, TensorBoard, callbacks).
CHUNK_STEPS = 16


def _check_finite(logs: dict[str, np.ndarray], step: int) -> None:
    """Raises NonFiniteLossError (and pops the gradient flag) unless every value is finite."""
    gradient_finite = bool(logs.pop("gradient_finite"))
    bad = {k: v.tolist() for k, v in logs.items() if not np.all(np.isfinite(v))}
    if bad or not gradient_finite:
        what = f"non-finite terms: {bad}" if bad else "the gradient is not finite"
        raise NonFiniteLossError(
            f"The loss became NaN or infinite at step {step} ({what}). Lower the learning rate or check "
            "that the model's outputs are finite for inputs in [0, 255]; no image was returned."
        )


def _write_summaries(writer, step: int, logs: Mapping[str, np.ndarray], tags: Sequence[str], images) -> None:
    with writer.as_default(step=step):
        for key, values in logs.items():
            for tag, value in zip(tags, values):
                tf.summary.scalar(f"{key}/{tag}", float(value))
        if images is not None:
            for tag, image in zip(tags, images):
                tf.summary.image(f"image/{tag}", image[None])
