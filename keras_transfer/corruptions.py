"""Common image corruptions at 5 severities (ImageNet-C), and a classifier's accuracy under them.

Six of the corruptions of ImageNet-C (Hendrycks & Dietterich, "Benchmarking
Neural Network Robustness to Common Corruptions and Perturbations", ICLR
2019), with that benchmark's parameters, written in TensorFlow ops so that
they run inside `tf.data.Dataset.map`:

| name               | severity 1 → 5                     | what                                   |
|--------------------|------------------------------------|----------------------------------------|
| `gaussian_noise`   | σ = .08, .12, .18, .26, .38        | `x/255 + N(0, σ²)` per pixel, clipped  |
| `gaussian_blur`    | σ = 1, 2, 3, 4, 6 pixels           | Gaussian filter, edges replicated      |
| `jpeg_compression` | quality = 25, 18, 15, 10, 7        | JPEG encode + decode                   |
| `brightness`       | +c = .1, .2, .3, .4, .5            | HSV value + c, clipped                 |
| `contrast`         | c = .4, .3, .2, .1, .05            | `(x - mean) * c + mean`, per channel   |
| `pixelate`         | c = .6, .5, .4, .3, .25            | box down to `int(size * c)`, back up   |

Every corruption takes an image `(h, w, 3)` or a batch `(n, h, w, 3)` of
uint8 pixels (or floats in [0, 255]) and returns uint8 of the same shape,
rounded to nearest. ImageNet-C's parameters are for 224 px images; images of
another size keep the same parameters (as ImageNet-C applies them to its one
size), so a blur of σ = 2 px blurs a 64 px image relatively more than a 224
px one, while pixelate, whose parameter is a fraction of the size, scales.

Gaussian noise is the only random one. It is deterministic given `seed`: the
noise of an image is drawn with the stateless seed `(seed, index)`, `index`
being the image's position in the data, so it does not depend on how the
images are batched (see `corrupt`).

Differences from ImageNet-C's reference code (NumPy, scikit-image, PIL),
which corrupts a 224 px centre crop and then saves each image as a JPEG of
quality 85 after truncating to uint8: here the result is rounded to uint8
and not re-encoded; JPEG uses TensorFlow's libjpeg (4:2:0 chroma
subsampling, accurate integer DCT on decoding), which gives PIL's bytes;
pixelate reproduces PIL's BOX filter but not its rounding to uint8 between
its horizontal and vertical passes.

`corruption_accuracy(model, data)` streams a labelled set through every
corruption and severity (`tf.data` map, batch, prefetch) and returns a
`CorruptionResult`: the clean accuracy, the accuracy table, the mean per
corruption and overall (ImageNet-C's mean corruption accuracy) and the drop
relative to clean.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from keras_transfer.settings import Int

SEVERITIES = (1, 2, 3, 4, 5)
SOURCE = (
    "Hendrycks & Dietterich (2019), Benchmarking Neural Network Robustness to Common Corruptions and "
    "Perturbations, ICLR; parameters of ImageNet-C (for 224 px images)"
)

# The parameter of each corruption at severities 1..5 (ImageNet-C's).
PARAMETERS: dict[str, tuple[float, ...]] = {
    "gaussian_noise": (0.08, 0.12, 0.18, 0.26, 0.38),
    "gaussian_blur": (1.0, 2.0, 3.0, 4.0, 6.0),
    "jpeg_compression": (25, 18, 15, 10, 7),
    "brightness": (0.1, 0.2, 0.3, 0.4, 0.5),
    "contrast": (0.4, 0.3, 0.2, 0.1, 0.05),
    "pixelate": (0.6, 0.5, 0.4, 0.3, 0.25),
}
# What the parameter of each corruption is.
PARAMETER_MEANINGS = {
    "gaussian_noise": "standard deviation of the noise, on pixels scaled to [0, 1]",
    "gaussian_blur": "standard deviation of the Gaussian filter, in pixels (kernel radius int(4 * sigma + 0.5))",
    "jpeg_compression": "JPEG quality",
    "brightness": "added to the HSV value channel (in [0, 1]), then clipped",
    "contrast": "factor of the deviations from each channel's mean",
    "pixelate": "fraction of the size the image is box-downsampled to",
}
# An index of the image (its position in the data) seeds its noise.
_INDEX_DTYPE = tf.int64
_SEED = Int(min=0)
_BATCH_SIZE = Int(min=1)
_JPEG_DCT = "INTEGER_ACCURATE"
_BLUR_TRUNCATE = 4.0  # kernel radius in standard deviations, as scipy's gaussian_filter
# Plain TensorFlow ops, no Python control flow on tensors: autograph, which would
# convert them again in every tf.data map (seconds per map), is not needed.
_no_autograph = tf.autograph.experimental.do_not_convert


def check_severity(severity) -> int:
    """`severity` as an int when it is one of `SEVERITIES`, else a `ValueError` saying so."""
    plain = severity.item() if isinstance(severity, np.generic) else severity
    if isinstance(plain, bool) or not isinstance(plain, int) or plain not in SEVERITIES:
        raise ValueError(
            f"Expected severity to be one of {', '.join(map(str, SEVERITIES))}. Received: severity={severity!r}"
        )
    return int(plain)


def check_name(name) -> str:
    """`name` when it is a corruption of `CORRUPTIONS`, else a `ValueError` listing them."""
    if not isinstance(name, str) or name not in PARAMETERS:
        raise ValueError(
            f"Unknown corruption {name!r}. Expected one of {', '.join(map(repr, PARAMETERS))}. Received: name={name!r}"
        )
    return name


def parameter(name: str, severity: int) -> float:
    """The parameter of corruption `name` at `severity` (see `PARAMETERS`)."""
    return PARAMETERS[check_name(name)][check_severity(severity) - 1]


# ---------------------------------------------------------------------------
# Pixels in and out.


def _as_batch(images) -> tuple[tf.Tensor, bool]:
    """`(float32 batch in [0, 1], whether one image was given)`."""
    x = tf.convert_to_tensor(images)
    if x.shape.rank not in (3, 4) or (x.shape[-1] is not None and x.shape[-1] != 3):
        raise ValueError(
            f"Expected an RGB image (h, w, 3) or a batch (n, h, w, 3). Received: images of shape {x.shape}"
        )
    if not (x.dtype == tf.uint8 or x.dtype.is_floating or x.dtype.is_integer):
        raise TypeError(f"Expected uint8 or [0, 255] float pixels. Received: images of dtype {x.dtype.name}")
    single = x.shape.rank == 3
    x = tf.clip_by_value(tf.cast(x, tf.float32), 0.0, 255.0) / 255.0
    return (x[None] if single else x), single


def _to_uint8(x: tf.Tensor, single: bool) -> tf.Tensor:
    """`[0, 1]` floats back to uint8 pixels, rounded to nearest."""
    out = tf.cast(tf.round(tf.clip_by_value(x, 0.0, 1.0) * 255.0), tf.uint8)
    return out[0] if single else out


def _indices(index, n: tf.Tensor) -> tf.Tensor:
    """`(n,)` positions of the images: `index` (a vector, or a scalar: the first image's), default `0..n-1`."""
    if index is None:
        return tf.range(n, dtype=_INDEX_DTYPE)
    index = tf.cast(tf.convert_to_tensor(index), _INDEX_DTYPE)
    if index.shape.rank == 0:
        return index + tf.range(n, dtype=_INDEX_DTYPE)
    if index.shape.rank != 1:
        raise ValueError(f"Expected index to be a scalar or a vector of one index per image. Received: {index!r}")
    return index


def _each_image(function: Callable[[tf.Tensor], tf.Tensor], x: tf.Tensor) -> tf.Tensor:
    """`function` applied to each `(h, w, 3)` image of `x` apart.

    Sums computed over a whole batch may be ordered differently for another
    batch size, which moves a value lying on a rounding boundary by one
    level; image by image, the result does not depend on the batching.
    """
    if x.shape[0] == 1:  # one image (as in a tf.data map): no loop to trace
        return tf.ensure_shape(function(x[0])[None], x.shape)
    out = tf.map_fn(function, x, fn_output_signature=tf.TensorSpec(x.shape[1:], tf.float32))
    return tf.ensure_shape(out, x.shape)


# ---------------------------------------------------------------------------
# The corruptions.


@_no_autograph
def gaussian_noise(images, severity: int, *, seed: int = 0, index=None) -> tf.Tensor:
    """Adds Gaussian noise: `clip(x / 255 + N(0, σ²), 0, 1) * 255`, independently per pixel and channel.

    ImageNet-C's `gaussian_noise`: σ = 0.08, 0.12, 0.18, 0.26, 0.38 at
    severities 1 to 5 (for [0, 1] pixels: 20 to 97 levels of 255). The noise
    of image `i` is `tf.random.stateless_normal` with seed `(seed,
    index[i])`, the same at every severity (scaled by σ), whatever the
    batching.

    Args:
        images: uint8 (or [0, 255] float) `(h, w, 3)` or `(n, h, w, 3)`.
        severity: 1 to 5.
        seed: seed of the noise, an int >= 0. Defaults to `0`.
        index: the position of each image in the data: a scalar (the first
            image's; the others follow) or a vector of `n`. Defaults to
            `None` (0, 1, ..., n - 1).

    Returns:
        uint8 images of the input's shape.
    """
    sigma = parameter("gaussian_noise", severity)
    seed = _SEED.check("seed", seed)
    x, single = _as_batch(images)
    n = tf.shape(x)[0]
    seeds = tf.stack([tf.fill([n], tf.constant(seed, _INDEX_DTYPE)), _indices(index, n)], axis=1)
    shape = tf.shape(x)[1:]
    noise = tf.map_fn(
        lambda s: tf.random.stateless_normal(shape, seed=s, dtype=tf.float32),
        seeds,
        fn_output_signature=tf.TensorSpec(x.shape[1:], tf.float32),
    )
    return _to_uint8(x + sigma * noise, single)


def _gaussian_kernel(sigma: float) -> np.ndarray:
    radius = int(_BLUR_TRUNCATE * sigma + 0.5)
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    weights = np.exp(-0.5 * (offsets / sigma) ** 2)
    return (weights / weights.sum()).astype(np.float32)


def _blur_matrix(size: tf.Tensor, kernel: np.ndarray) -> tf.Tensor:
    """`(size, size)`: the 1-D filter `kernel` along an axis of `size` pixels, edge pixels repeated.

    Row `i` spreads the kernel around `i`; the taps that fall outside the
    image land on the nearest edge pixel (scipy's `mode="nearest"`).
    """
    radius = len(kernel) // 2
    taps = tf.clip_by_value(tf.range(size)[:, None] + tf.range(-radius, radius + 1)[None, :], 0, size - 1)
    return tf.tensordot(tf.one_hot(taps, size, dtype=tf.float32), tf.constant(kernel), [[1], [0]])


def _separable(image: tf.Tensor, rows: tf.Tensor, columns: tf.Tensor) -> tf.Tensor:
    """`rows @ image @ columns.T` on each channel of an `(h, w, c)` image: one matrix per axis."""
    planes = tf.transpose(image, [2, 0, 1])  # (c, h, w)
    planes = tf.matmul(tf.matmul(rows, planes), columns, transpose_b=True)
    return tf.transpose(planes, [1, 2, 0])


@_no_autograph
def gaussian_blur(images, severity: int) -> tf.Tensor:
    """Blurs with a Gaussian filter of standard deviation σ = 1, 2, 3, 4, 6 pixels (severities 1 to 5).

    ImageNet-C's `gaussian_blur` (scikit-image's `gaussian`, i.e. scipy's
    `gaussian_filter`): separable, each channel apart, kernel radius
    `int(4 * σ + 0.5)`, the image extended by repeating its edge pixels.
    σ is in pixels whatever the image size.

    Args:
        images: uint8 (or [0, 255] float) `(h, w, 3)` or `(n, h, w, 3)`.
        severity: 1 to 5.

    Returns:
        uint8 images of the input's shape.
    """
    kernel = _gaussian_kernel(parameter("gaussian_blur", severity))
    x, single = _as_batch(images)
    shape = tf.shape(x)
    rows, columns = _blur_matrix(shape[1], kernel), _blur_matrix(shape[2], kernel)
    return _to_uint8(_each_image(lambda image: _separable(image, rows, columns), x), single)


@_no_autograph
def jpeg_compression(images, severity: int) -> tf.Tensor:
    """Encodes as JPEG of quality 25, 18, 15, 10, 7 (severities 1 to 5) and decodes.

    ImageNet-C's `jpeg_compression` (PIL, quality `q`, default 4:2:0 chroma
    subsampling); here `tf.io.encode_jpeg` (libjpeg's standard quantization
    tables scaled by quality, 4:2:0) and `tf.io.decode_jpeg` with the
    accurate integer DCT.

    Args:
        images: uint8 (or [0, 255] float, rounded first) `(h, w, 3)` or
            `(n, h, w, 3)`.
        severity: 1 to 5.

    Returns:
        uint8 images of the input's shape.
    """
    quality = int(parameter("jpeg_compression", severity))
    x, single = _as_batch(images)
    pixels = _to_uint8(x, False)

    def round_trip(image):
        encoded = tf.io.encode_jpeg(image, quality=quality)
        return tf.io.decode_jpeg(encoded, channels=3, dct_method=_JPEG_DCT)

    out = tf.map_fn(round_trip, pixels, fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8))
    out = tf.ensure_shape(tf.reshape(out, tf.shape(pixels)), pixels.shape)
    return out[0] if single else out


@_no_autograph
def brightness(images, severity: int) -> tf.Tensor:
    """Brightens: adds c = 0.1, 0.2, 0.3, 0.4, 0.5 (severities 1 to 5) to the HSV value, clipped to 1.

    ImageNet-C's `brightness`: RGB in [0, 1] to HSV, `V = clip(V + c, 0,
    1)`, back to RGB (hue and saturation kept).

    Args:
        images: uint8 (or [0, 255] float) `(h, w, 3)` or `(n, h, w, 3)`.
        severity: 1 to 5.

    Returns:
        uint8 images of the input's shape.
    """
    c = parameter("brightness", severity)
    x, single = _as_batch(images)
    hsv = tf.image.rgb_to_hsv(x)
    value = tf.clip_by_value(hsv[..., 2:] + c, 0.0, 1.0)
    return _to_uint8(tf.image.hsv_to_rgb(tf.concat([hsv[..., :2], value], axis=-1)), single)


@_no_autograph
def contrast(images, severity: int) -> tf.Tensor:
    """Lowers the contrast: `(x - mean) * c + mean`, c = 0.4, 0.3, 0.2, 0.1, 0.05 (severities 1 to 5).

    ImageNet-C's `contrast`: `mean` is each channel's mean over the image's
    pixels (`np.mean(x, axis=(0, 1))` in its code), so the standard
    deviation of every channel is multiplied by c and its mean kept (no
    clipping happens: the result lies between the pixel and the mean).

    Args:
        images: uint8 (or [0, 255] float) `(h, w, 3)` or `(n, h, w, 3)`.
        severity: 1 to 5.

    Returns:
        uint8 images of the input's shape.
    """
    c = parameter("contrast", severity)
    x, single = _as_batch(images)

    def reduce(image):
        means = tf.reduce_mean(image, axis=[0, 1], keepdims=True)
        return (image - means) * c + means

    return _to_uint8(_each_image(reduce, x), single)


def _box_weights(size_in: tf.Tensor, size_out: tf.Tensor) -> tf.Tensor:
    """`(size_out, size_in)` weights of PIL's BOX resampling along one axis, computed as PIL does.

    Output pixel `j` covers `centre ± support` with `centre = (j + 0.5) *
    scale`, `scale = size_in / size_out` and `support = max(scale, 1) / 2`;
    it is the plain mean of the input pixels `i` with `(i + 0.5 - centre) /
    max(scale, 1)` in `(-0.5, 0.5]`: the pixels whose centres fall in its box
    when shrinking, the nearest pixel when enlarging.
    """
    scale = tf.cast(size_in, tf.float64) / tf.cast(size_out, tf.float64)
    filter_scale = tf.maximum(scale, 1.0)
    support = 0.5 * filter_scale
    centres = (tf.cast(tf.range(size_out), tf.float64)[:, None] + 0.5) * scale
    pixels = tf.cast(tf.range(size_in), tf.float64)[None, :]
    first = tf.maximum(tf.floor(centres - support + 0.5), 0.0)
    end = tf.minimum(tf.floor(centres + support + 0.5), tf.cast(size_in, tf.float64))
    offsets = (pixels - centres + 0.5) * (1.0 / filter_scale)
    inside = (offsets > -0.5) & (offsets <= 0.5) & (pixels >= first) & (pixels < end)
    weights = tf.cast(inside, tf.float32)
    return weights / tf.maximum(tf.reduce_sum(weights, axis=1, keepdims=True), 1.0)


@_no_autograph
def pixelate(images, severity: int) -> tf.Tensor:
    """Pixelates: box-downsamples to `int(size * c)`, c = 0.6, 0.5, 0.4, 0.3, 0.25, then back up.

    ImageNet-C's `pixelate`: PIL's BOX filter down to `int(224 * c)` (134,
    112, 89, 67, 56 px) and back to 224. Going down, each small pixel is the
    plain mean of the pixels whose centres fall in its box; going up, BOX
    copies the nearest pixel. Both are reproduced here on each side (`int(h *
    c)` by `int(w * c)`, at least 1); PIL's rounding to uint8 between its
    horizontal and vertical passes is not, which changes a pixel by at most
    one level. The distortion is not monotone in c on every image: when c
    divides the size (0.5 and 0.25 of 64 px), the boxes align with the pixel
    grid and change the image less than a slightly larger c that does not.

    Args:
        images: uint8 (or [0, 255] float) `(h, w, 3)` or `(n, h, w, 3)`.
        severity: 1 to 5.

    Returns:
        uint8 images of the input's shape.
    """
    c = parameter("pixelate", severity)
    x, single = _as_batch(images)
    size = tf.shape(x)[1:3]
    small = tf.maximum(tf.cast(tf.cast(size, tf.float64) * c, tf.int32), 1)  # int() truncates, as Python's
    # PIL's BOX filter down then up, along each axis (without PIL's intermediate rounding).
    down = (_box_weights(size[0], small[0]), _box_weights(size[1], small[1]))
    up = (_box_weights(small[0], size[0]), _box_weights(small[1], size[1]))
    return _to_uint8(_each_image(lambda image: _separable(_separable(image, *down), *up), x), single)


CORRUPTIONS: dict[str, Callable[..., tf.Tensor]] = {
    "gaussian_noise": gaussian_noise,
    "gaussian_blur": gaussian_blur,
    "jpeg_compression": jpeg_compression,
    "brightness": brightness,
    "contrast": contrast,
    "pixelate": pixelate,
}
# The corruptions that draw random numbers (and take `seed` and `index`).
RANDOM_CORRUPTIONS = frozenset({"gaussian_noise"})


@_no_autograph
def corrupt(images, name: str, severity: int, *, seed: int = 0, index=None) -> tf.Tensor:
    """Applies corruption `name` at `severity` (TensorFlow ops: works in `tf.data.Dataset.map`).

    Args:
        images: uint8 (or [0, 255] float) `(h, w, 3)` or `(n, h, w, 3)`.
        name: a key of `CORRUPTIONS` (`"gaussian_noise"`, `"gaussian_blur"`,
            `"jpeg_compression"`, `"brightness"`, `"contrast"`,
            `"pixelate"`).
        severity: 1 to 5 (`SEVERITIES`).
        seed: seed of the random corruptions (`RANDOM_CORRUPTIONS`), an int
            >= 0; ignored by the others. Defaults to `0`.
        index: the position of each image in the data, which with `seed`
            seeds its noise, so that an image gets the same noise whether it
            is corrupted alone (`index=i`), in a batch (a scalar: the first
            image's position, or one per image) or in a `tf.data` map after
            `enumerate`. Defaults to `None` (0, 1, ..., n - 1).

    Returns:
        uint8 images of the input's shape.

    Raises:
        ValueError: an unknown `name` or a bad `severity` (listing the valid
            ones), images that are not RGB.
    """
    function = CORRUPTIONS[check_name(name)]
    severity = check_severity(severity)
    if name in RANDOM_CORRUPTIONS:
        return function(images, severity, seed=seed, index=index)
    return function(images, severity)


# ---------------------------------------------------------------------------
# Accuracy under corruption.


@dataclasses.dataclass(frozen=True)
class CorruptionResult:
    """A classifier's accuracy on clean and corrupted copies of the same images.

    Attributes:
        clean_accuracy: accuracy on the unmodified images.
        accuracy: `accuracy[name][severity]`, the table.
        num_images: images evaluated (per corruption and severity).
        seconds: wall time of the whole sweep, clean pass included.
        seed: seed of the random corruptions. Defaults to `0`.
        corruption_seconds: wall time per corruption (all its severities).
            Defaults to `None` (unknown).
    """

    clean_accuracy: float
    accuracy: dict[str, dict[int, float]]
    num_images: int
    seconds: float
    seed: int = 0
    corruption_seconds: dict[str, float] | None = None

    @property
    def corruptions(self) -> tuple[str, ...]:
        return tuple(self.accuracy)

    @property
    def severities(self) -> tuple[int, ...]:
        return tuple(next(iter(self.accuracy.values()))) if self.accuracy else ()

    @property
    def mean_by_corruption(self) -> dict[str, float]:
        """The mean accuracy of each corruption over its severities."""
        return {name: float(np.mean(list(row.values()))) for name, row in self.accuracy.items()}

    @property
    def mean_by_severity(self) -> dict[int, float]:
        """The mean accuracy over the corruptions at each severity."""
        return {s: float(np.mean([row[s] for row in self.accuracy.values()])) for s in self.severities}

    @property
    def mean_accuracy(self) -> float:
        """The mean over every corruption and severity (ImageNet-C's mean corruption accuracy)."""
        return float(np.mean(list(self.mean_by_corruption.values())))

    @property
    def accuracy_drop(self) -> float:
        """`clean_accuracy - mean_accuracy`."""
        return self.clean_accuracy - self.mean_accuracy

    @property
    def relative_drop(self) -> float | None:
        """`(clean_accuracy - mean_accuracy) / clean_accuracy`, `None` when the clean accuracy is 0."""
        return self.accuracy_drop / self.clean_accuracy if self.clean_accuracy > 0 else None

    def curve(self, name: str) -> tuple[float, ...]:
        """The accuracy of corruption `name` at severity 0 (clean) then at each of `severities`."""
        if name not in self.accuracy:
            raise ValueError(f"Expected one of {', '.join(map(repr, self.accuracy))}. Received: name={name!r}")
        return (self.clean_accuracy, *self.accuracy[name].values())

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable summary: the table (severities as strings), means, drops, parameters."""
        return {
            "clean_accuracy": self.clean_accuracy,
            "accuracy": {name: {str(s): a for s, a in row.items()} for name, row in self.accuracy.items()},
            "mean_by_corruption": self.mean_by_corruption,
            "mean_by_severity": {str(s): a for s, a in self.mean_by_severity.items()},
            "mean_accuracy": self.mean_accuracy,
            "accuracy_drop": self.accuracy_drop,
            "relative_drop": self.relative_drop,
            "num_images": self.num_images,
            "severities": list(self.severities),
            "seed": self.seed,
            "seconds": self.seconds,
            "corruption_seconds": self.corruption_seconds,
            "parameters": {
                name: {"meaning": PARAMETER_MEANINGS[name],
                       **{str(s): PARAMETERS[name][s - 1] for s in self.severities}}
                for name in self.accuracy
            },
            "source": SOURCE,
        }


def check_names(corruptions) -> tuple[str, ...]:
    """The corruption names asked for (`None`: all; one name or several), checked, without repeats."""
    if corruptions is None:
        return tuple(CORRUPTIONS)
    if isinstance(corruptions, str):
        corruptions = (corruptions,)
    names = tuple(dict.fromkeys(check_name(name) for name in corruptions))
    if not names:
        raise ValueError(f"Expected at least one corruption. Received: corruptions={corruptions!r}")
    return names


def check_severities(severities) -> tuple[int, ...]:
    """The severities asked for (one or several), checked, sorted, without repeats."""
    if isinstance(severities, (int, np.integer)):
        severities = (severities,)
    checked = tuple(sorted(set(check_severity(s) for s in severities)))
    if not checked:
        raise ValueError(f"Expected at least one severity of {SEVERITIES}. Received: severities={severities!r}")
    return checked


def _check_model(model) -> tuple[int | None, int | None, int]:
    """`(height, width, num_classes)` of a classifier with one `(batch, num_classes)` output."""
    if not isinstance(model, keras.Model):
        raise TypeError(f"Expected a keras.Model. Received: model={model!r}")
    if len(model.outputs) != 1 or len(model.outputs[0].shape) != 2:
        raise ValueError(
            "Expected a classifier with one output of shape (batch, num_classes). "
            f"Received: outputs of shapes {[tuple(o.shape) for o in model.outputs]}"
        )
    shape = model.input_shape
    if isinstance(shape, list) or len(shape) != 4:
        raise ValueError(f"Expected a model with one image input (batch, h, w, 3). Received: input_shape={shape}")
    return shape[1], shape[2], int(model.outputs[0].shape[-1])


def _array_dataset(data, labels) -> tf.data.Dataset:
    if labels is None:
        raise ValueError("Pass labels with an image array (or a tf.data.Dataset of (images, labels)).")
    images = np.asarray(data)
    labels = np.asarray(labels).reshape(-1)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"Expected images of shape (n, h, w, 3). Received: an array of shape {images.shape}")
    if len(images) != len(labels):
        raise ValueError(f"Expected one label per image. Received: {len(images)} images and {len(labels)} labels")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"Expected integer class labels. Received: labels of dtype {labels.dtype}")
    return tf.data.Dataset.from_tensor_slices((images, labels))


def _examples(model, data, labels) -> tf.data.Dataset:
    """`(index, image, label)` one image at a time, checked against the model's input."""
    height, width, _ = _check_model(model)
    if isinstance(data, tf.data.Dataset):
        if labels is not None:
            raise ValueError("Pass labels only with an image array; a dataset yields (images, labels) itself.")
        spec = data.element_spec
        if not isinstance(spec, tuple) or len(spec) != 2:
            raise ValueError(f"Expected a dataset of (images, labels) pairs. Received elements of spec {spec}")
        if spec[0].shape.rank == 4:
            data = data.unbatch()
    else:
        data = _array_dataset(data, labels)
    shape = data.element_spec[0].shape
    if shape.rank != 3 or shape[-1] not in (None, 3):
        raise ValueError(f"Expected RGB images (h, w, 3) or batches of them. Received: images of shape {shape}")
    if (height is not None and shape[0] not in (None, height)) or (width is not None and shape[1] not in (None, width)):
        raise ValueError(
            f"Expected images at the model's input size {height}x{width}. Received: images of shape {shape}; "
            "resize them first (keras_transfer.inference.load_images)."
        )
    return data.enumerate().map(lambda i, pair: (i, pair[0], tf.reshape(tf.cast(pair[1], tf.int64), [])))


def _correct(model, examples: tf.data.Dataset, corruption, *, batch_size: int, seed: int):
    """`(correct, labels)`: whether each image is classified as its label, after `corruption` (or clean)."""

    @_no_autograph
    def prepare(index, image, label):
        if corruption is not None:
            image = corrupt(image, corruption[0], corruption[1], seed=seed, index=index)
        return tf.cast(image, tf.float32), label

    batches = (
        examples.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .batch(batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )
    correct, labels = [], []
    for images, y in batches:
        scores = np.asarray(model.predict_on_batch(images))
        correct.append(np.argmax(scores, axis=-1) == y.numpy())
        labels.append(y.numpy())
    if not correct:
        return np.zeros(0, bool), np.zeros(0, np.int64)
    return np.concatenate(correct), np.concatenate(labels)


def corruption_accuracy(
    model: keras.Model,
    data,
    labels=None,
    *,
    corruptions: Sequence[str] | None = None,
    severities: Sequence[int] = SEVERITIES,
    batch_size: int = 32,
    seed: int = 0,
    verbose: int = 0,
) -> CorruptionResult:
    """Accuracy of `model` on clean images and under each corruption at each severity.

    The corrupted copies are made on the fly by a `tf.data` map (then batch
    and prefetch) and classified with `predict_on_batch`: nothing but the
    source images is held in memory. Image `i` of `data` (in its order) gets
    the noise seeded by `(seed, i)`, so the result does not depend on
    `batch_size` or on how a dataset is batched.

    Args:
        model: a classifier from RGB [0, 255] images to class scores (logits
            or probabilities: the prediction is their argmax).
        data: uint8 images `(n, h, w, 3)` (or [0, 255] floats) at the
            model's input size, with `labels`; or a `tf.data.Dataset` of
            `(image, label)` or of batches of them.
        labels: the true classes `(n,)` of an image array. Defaults to
            `None` (required with an array, not with a dataset).
        corruptions: names of `CORRUPTIONS`, or one name. Defaults to `None`
            (all six).
        severities: severities from 1 to 5. Defaults to `(1, 2, 3, 4, 5)`.
        batch_size: images classified at once. Defaults to `32`.
        seed: seed of the random corruptions, an int >= 0. Defaults to `0`.
        verbose: `1` prints one line per corruption. Defaults to `0`.

    Returns:
        A `CorruptionResult`.

    Raises:
        ValueError: an unknown corruption or a bad severity (listing the
            valid ones), a bad `batch_size` or `seed`, images not at the
            model's input size, labels missing, of another length or out of
            the model's classes, no images.
    """
    start = time.perf_counter()
    names, severities = check_names(corruptions), check_severities(severities)
    _BATCH_SIZE.check("batch_size", batch_size)
    seed = _SEED.check("seed", seed)
    examples = _examples(model, data, labels)
    num_classes = _check_model(model)[2]
    clean, y = _correct(model, examples, None, batch_size=batch_size, seed=seed)
    if not len(clean):
        raise ValueError("Expected at least one image. Received: no images")
    if y.min() < 0 or y.max() >= num_classes:
        bad = int(y[(y < 0) | (y >= num_classes)][0])
        raise ValueError(f"Expected labels from 0 to {num_classes - 1} (the model's classes). Received: label {bad}")
    if verbose:
        print(f"clean: accuracy {float(clean.mean()):.4f} on {len(clean)} images", flush=True)
    table, timing = {}, {}
    for name in names:
        began = time.perf_counter()
        table[name] = {
            s: float(_correct(model, examples, (name, s), batch_size=batch_size, seed=seed)[0].mean())
            for s in severities
        }
        timing[name] = time.perf_counter() - began
        if verbose:
            row = ", ".join(f"{s}: {a:.4f}" for s, a in table[name].items())
            print(f"{name}: {row} (mean {np.mean(list(table[name].values())):.4f}, {timing[name]:.1f} s)", flush=True)
    return CorruptionResult(
        clean_accuracy=float(clean.mean()),
        accuracy=table,
        num_images=int(len(clean)),
        seconds=time.perf_counter() - start,
        seed=seed,
        corruption_seconds=timing,
    )
