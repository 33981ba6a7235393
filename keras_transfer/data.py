"""Image datasets as tf.data pipelines of RGB uint8 images and int32 labels.

Three sources:

- tensorflow-datasets `oxford_iiit_pet` and `cats_vs_dogs` (the default);
- a manually downloaded Oxford-IIIT Pet folder (`images/`, optionally
  `annotations/list.txt`, `trainval.txt`, `test.txt`);
- any class-per-folder tree (`root/<class>/**/<image>`).

Images are decoded by content (JPEG, PNG, GIF, BMP, WebP, whatever the
extension says), converted to RGB, resized to a square and cached as uint8 in
one parallel pass, which also finds the files that cannot be decoded (zero
bytes, truncated, not an image): they are skipped and listed in the
`DataReport`, so the count is known when a `load_*` function returns. Files not
decoded on purpose (other extensions, files beside the class folders, Oxford
images in no annotation list) are ignored and listed there too. The
train/validation split is then drawn, stratified by class, from a seed among
the images that decoded.

The cache is in memory, in tf.data cache files, or, with `cache="auto"` (the
default), in memory when the decoded images fit in a memory budget (half the
available memory, or `$KERAS_TRANSFER_MEMORY_LIMIT`) and else in files under
`$KERAS_TRANSFER_CACHE_DIR` (default `~/.cache/keras_transfer/images`), reused
by later loads of the same files. The first pass prints its progress for sets
of more than 2,000 images.

JPEGs are decoded with libjpeg's accurate IDCT (PIL's pixels, exactly). Large
ones are decoded at 1/2, 1/4 or 1/8 scale by libjpeg's DCT scaling when the
reduced image keeps `DCT_MARGIN` (1.5) times the target side (saves part of
the decoding, with the same accuracy), and shrinking uses the area filter.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import glob
import hashlib
import logging
import os
import re
import time
from collections.abc import Iterator, Sequence

import numpy as np
import tensorflow as tf

from keras_transfer import files as files_lib
from keras_transfer import settings
from keras_transfer._downloads import DatasetUnavailableError, probe
from keras_transfer.errors import CorruptFileError

logger = logging.getLogger(__name__)

AUTOTUNE = tf.data.AUTOTUNE
RESIZE_MODES = ("stretch", "crop", "pad")
# Files with these extensions (any case) are decoded; anything else in a data
# folder (Thumbs.db, .mat, README, ...) is ignored (counted and listed). The
# extension only selects candidates: the format is always read from the content.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")
# A DataReport lists at most this many skipped files and as many ignored ones
# (its counts are exact).
MAX_LISTED_FILES = 1000
# The shuffle buffer of `batch_dataset` holds the whole split up to this many
# examples and bytes (at 224 px, 256 MB is about 1,700 uint8 images), so its
# memory stops growing with the data set.
_SHUFFLE_BUFFER_CAP = 10_000
_DECODE_ORDER_STREAM = 20261129  # the decode order's draws, apart from the split's of the same seed
_SHUFFLE_BUFFER_BYTES = 256 * 10**6
# The first (decode) pass prints its progress for sets larger than this, at
# least every 10% and every `_PROGRESS_SECONDS`; it reads `_PASS_BATCH`
# indices and labels back to Python at a time.
_PROGRESS_MIN_IMAGES = 2000
_PROGRESS_SECONDS = 30.0
_PASS_BATCH = 256

# `cache="auto"`: the memory budget of the decoded images (default: half the
# available memory) and the folder of the file caches it falls back to.
MEMORY_LIMIT_ENV = "KERAS_TRANSFER_MEMORY_LIMIT"
CACHE_DIR_ENV = "KERAS_TRANSFER_CACHE_DIR"

_OXFORD_NAME = re.compile(r"^(?P<breed>.+)_\d+$")
_OXFORD_FORMAT = "Image CLASS-ID SPECIES BREED-ID"

# What the arguments of the loaders accept, checked as every setting of the
# package is (the error names the argument, the value and what is valid).
_IMAGE_SIZE = settings.Int(min=1)
_RESIZE = settings.Choice(RESIZE_MODES)
_VAL_SPLIT = settings.Real(min=0, max=1, max_open=True)
_SEED = settings.Int(min=0)
_BATCH_SIZE = settings.Int(min=1)
_TARGET = settings.Choice(("breed", "species"))
_DATA_DIR = settings.Path()


class _AutoCache:
    """`cache="auto"` before the loader knows how many images it decodes."""

    def __repr__(self) -> str:
        return "'auto'"


_AUTO = _AutoCache()
_CACHE_WORDS = {"memory": True, "none": False, "auto": _AUTO}


@dataclasses.dataclass(frozen=True)
class _CacheKind(settings.Either):
    """`cache`: True / "memory", False / "none", "auto", or a file cache's path prefix."""

    def valid(self) -> str:
        return (
            "True or 'memory' (in memory), False or 'none' (no cache), 'auto' (in memory when the images "
            "fit, else in files), or a path prefix for a file cache"
        )


_CACHE = _CacheKind((settings.Flag(), settings.Choice(tuple(_CACHE_WORDS)), settings.Path()))

# Where each tensorflow-datasets source comes from, and what to download by
# hand when it cannot be downloaded.
TFDS_SOURCES = {
    "oxford_iiit_pet": {
        "title": "Oxford-IIIT Pet dataset",
        "url": "https://thor.robots.ox.ac.uk/~vgg/data/pets/images.tar.gz",
        "how": (
            "download images.tar.gz and annotations.tar.gz from "
            "https://www.robots.ox.ac.uk/~vgg/data/pets/ and extract both into one folder "
            "(it then holds images/ and annotations/)"
        ),
        "name_key": "file_name",
    },
    "cats_vs_dogs": {
        "title": "Cats vs Dogs dataset",
        "url": (
            "https://download.microsoft.com/download/3/E/1/"
            "3E1C3F21-ECDB-4869-8368-6DEBA77B919F/kagglecatsanddogs_5340.zip"
        ),
        "how": (
            "download kagglecatsanddogs_5340.zip from "
            "https://www.microsoft.com/en-us/download/details.aspx?id=54765 and extract it "
            "(its PetImages/ folder holds Cat/ and Dog/; any folder with one subfolder per "
            "class works)"
        ),
        "name_key": "image/filename",
    },
}


class _DataDirNotFoundError(FileNotFoundError, ValueError):
    """`data_dir` does not exist (a `ValueError` too, as it was before)."""


class _DataDirNotADirectoryError(NotADirectoryError, ValueError):
    """`data_dir` is a file (a `ValueError` too, as it was before)."""


def check_resize_args(image_size, resize) -> None:
    _IMAGE_SIZE.check("image_size", image_size)
    _RESIZE.check("resize", resize)


def _check_split_args(val_split, seed) -> None:
    _VAL_SPLIT.check("val_split", val_split)
    _SEED.check("seed", seed)


def _cache_setting(cache) -> bool | str | _AutoCache:
    """`True` (in memory), `False` (no cache), `_AUTO` or the path prefix of a file cache."""
    if isinstance(cache, str) and cache in _CACHE_WORDS:
        return _CACHE_WORDS[cache]
    return _CACHE.check("cache", cache)


def _check_loader_args(
    image_size, resize, val_split, cache, seed, memory_limit
) -> tuple[bool | str | _AutoCache, int | None]:
    """Checks the arguments every loader takes; returns `cache` as `_cache_setting` and `memory_limit` in bytes."""
    check_resize_args(image_size, resize)
    _check_split_args(val_split, seed)
    limit = None if memory_limit is None else parse_bytes(memory_limit, name="memory_limit")
    return _cache_setting(cache), limit


# ---------------------------------------------------------------------------
# The memory budget of `cache="auto"`.


_BYTES = re.compile(r"(?P<number>\d+(?:\.\d*)?|\.\d+)\s*(?:(?P<unit>[KMGT])(?P<binary>i?)B?|B)?", re.I)
_BYTES_VALID = (
    "a number of bytes >= 0, optionally followed by K, M, G or T (powers of 1000) or Ki, Mi, Gi or Ti "
    "(powers of 1024), e.g. 2G or 512Mi"
)


def parse_bytes(value: int | str, *, name: str) -> int:
    """A byte count from an int or a string such as `"2G"`, `"1.5GB"` or `"512Mi"`.

    Args:
        value: a number >= 0, or a string: a number with an optional
            suffix K, M, G, T (powers of 1000) or Ki, Mi, Gi, Ti (powers of
            1024), in any case, optionally followed by `B`.
        name: what `value` is, for the error.

    Raises:
        ValueError: naming `name`, the value and what is valid.
    """
    if settings.Real(min=0).accepts(value.item() if isinstance(value, np.generic) else value):
        return int(value)
    match = _BYTES.fullmatch(value.strip()) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"Expected {name} to be {_BYTES_VALID}. Received: {name}={value!r}")
    unit = (match["unit"] or "").upper()
    power = "KMGT".index(unit) + 1 if unit else 0
    return int(float(match["number"]) * (1024 if match["binary"] else 1000) ** power)


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _stat_value(path: str, key: str) -> int:
    """A value of a cgroup `memory.stat` file, 0 when absent."""
    try:
        with open(path) as f:
            for line in f:
                name, _, value = line.partition(" ")
                if name == key:
                    return int(value)
    except (OSError, ValueError):
        pass
    return 0


def _cgroup_headroom() -> int | None:
    """Bytes left under this process's cgroup memory limit (v2, else v1), `None` without a limit.

    A container's limit is not in /proc/meminfo, which shows the host's
    memory. Reclaimable page cache (inactive files) counts as free, as in
    MemAvailable.
    """
    for folder, limit_file, usage_file, inactive in (
        ("/sys/fs/cgroup", "memory.max", "memory.current", "inactive_file"),
        ("/sys/fs/cgroup/memory", "memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file"),
    ):
        limit = _read_int(os.path.join(folder, limit_file))  # "max" (v2, no limit) reads as None
        usage = _read_int(os.path.join(folder, usage_file))
        if limit is not None and usage is not None and limit < 2**60:  # v1 spells "no limit" ~2**63
            return max(0, limit - usage + _stat_value(os.path.join(folder, "memory.stat"), inactive))
    return None


def available_memory() -> int | None:
    """Bytes of memory this process can still use, `None` when unknown.

    MemAvailable of /proc/meminfo (free memory plus reclaimable caches),
    else the free pages of `os.sysconf`, and at most what a cgroup memory
    limit (a container's) leaves.
    """
    available = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024  # in kB
    except (OSError, ValueError, IndexError):
        pass
    if available is None:
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            pass
    headroom = _cgroup_headroom()
    if headroom is not None:
        available = headroom if available is None else min(available, headroom)
    return available


def memory_budget(memory_limit: int | str | None = None) -> tuple[int | None, str]:
    """`(bytes, where it comes from)`: how much decoded images `cache="auto"` keeps in memory.

    Args:
        memory_limit: the budget (bytes, or a string `parse_bytes` reads).
            Defaults to `None`: `$KERAS_TRANSFER_MEMORY_LIMIT` when set, else
            half of `available_memory()` (`(None, ...)` when that is unknown).

    Raises:
        ValueError: a bad `memory_limit` or `$KERAS_TRANSFER_MEMORY_LIMIT`,
            named with the value and what is valid.
    """
    if memory_limit is not None:
        return parse_bytes(memory_limit, name="memory_limit"), "memory_limit"
    variable = os.environ.get(MEMORY_LIMIT_ENV, "")
    if variable.strip():
        return parse_bytes(variable, name=MEMORY_LIMIT_ENV), MEMORY_LIMIT_ENV
    available = available_memory()
    return (None if available is None else available // 2), "half the available memory"


def cache_dir() -> str:
    """The folder of the file caches `cache="auto"` writes.

    `$KERAS_TRANSFER_CACHE_DIR`, else `keras_transfer/images` in
    `$XDG_CACHE_HOME` (default `~/.cache`).
    """
    folder = os.environ.get(CACHE_DIR_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
        "keras_transfer",
        "images",
    )
    return os.path.abspath(folder)


def format_bytes(n: int) -> str:
    for unit, size in (("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def _cache_name(cache: bool | str) -> str:
    """How `DataReport.cache` names a cache setting."""
    if isinstance(cache, bool):
        return "memory" if cache else "none"
    return f"file:{os.path.abspath(os.fspath(cache))}"


def image_cache_bytes(images: int, image_size: int) -> int:
    """Bytes that `images` decoded images take in the uint8 cache at `image_size`."""
    return images * image_size * image_size * 3


def _resolve_cache(
    cache: bool | str | _AutoCache, *, images: int, image_size: int, memory_limit: int | None, name: str
) -> tuple[bool | str, str]:
    """`(cache, its DataReport name)`, with `_AUTO` decided by the size of `images` decoded images.

    `name` starts the names of the files of an automatic file cache.
    """
    if cache is not _AUTO:
        return cache, _cache_name(cache)
    need = image_cache_bytes(images, image_size)
    budget, why = memory_budget(memory_limit)
    if budget is None or need <= budget:
        return True, "memory"
    folder = cache_dir()
    try:
        files_lib.check_writable_dir(folder, what="image cache folder")
    except OSError as error:
        raise type(error)(
            f"{error} The decoded images ({format_bytes(need)}) do not fit in the memory budget "
            f"({format_bytes(budget)}, {why}): set {CACHE_DIR_ENV} to a writable folder for their cache "
            "files, or pass cache='memory' / 'none' / a path prefix (--data-cache)."
        ) from None
    prefix = os.path.join(folder, name or "data")
    logger.warning(
        "Data: the decoded images would take %s, more than the memory budget of %s (%s); caching them in "
        "files under %s instead (--data-cache memory, or cache='memory', to override).",
        format_bytes(need), format_bytes(budget), why, folder,
    )
    return prefix, _cache_name(prefix)


@dataclasses.dataclass
class DataReport:
    """What a `load_*` function found, used, skipped and ignored.

    `found == sum(used.values()) + skipped + ignored`.

    Attributes:
        source: where the data came from, e.g. `"folder:/path"`,
            `"oxford_folder:/path"`, `"tfds:oxford_iiit_pet"`.
        found: files (hidden files excepted) or tfds examples seen.
        used: images per split, `{"train": n, "val": n, "test": n}`.
        skipped: files that could not be decoded (zero bytes, truncated, not
            an image, unreadable).
        skipped_files: their paths relative to the data folder (tfds: file
            names), at most `MAX_LISTED_FILES` of them.
        ignored: files deliberately not decoded: extensions not in
            `IMAGE_EXTENSIONS`, files outside class folders, Oxford images
            absent from the annotation lists or not named `<breed>_<n>`.
        per_class: `{class_name: {split: count}}`.
        ignored_files: the paths of the ignored files relative to the data
            folder, at most `MAX_LISTED_FILES` of them. Defaults to `[]`.
        cache: where the decoded images are kept: `"memory"`, `"none"`, or
            `"file:PREFIX"` (a tf.data file cache; `cache="auto"` gives one of
            the first and last). Defaults to `"memory"`.
        first_pass_s: seconds of the first pass over the files (decode,
            resize, fill the cache; with `cache="none"`, the pass that finds
            the undecodable files). Defaults to `0.0`.
        files_digest: a digest of the image files (their paths relative to
            the data folder, sizes and labels), so that a run resumes only
            on the photos it started on; `""` for tfds (its version names
            its content). Defaults to `""`.
    """

    source: str
    found: int
    used: dict[str, int]
    skipped: int
    skipped_files: list[str]
    ignored: int
    per_class: dict[str, dict[str, int]]
    ignored_files: list[str] = dataclasses.field(default_factory=list)
    cache: str = "memory"
    first_pass_s: float = dataclasses.field(default=0.0, compare=False)  # a time, not a finding
    files_digest: str = ""

    def to_dict(self) -> dict:
        """A JSON-serializable copy."""
        return dataclasses.asdict(self)


@dataclasses.dataclass
class ImageData:
    """Decoded, resized, cached splits of one dataset.

    Each split is an unbatched `tf.data.Dataset` of `(image, label)` with
    `image` a uint8 `[image_size, image_size, 3]` RGB tensor and `label` an
    int32 scalar, in a fixed order (use `batch_dataset` to shuffle and batch).
    Its cardinality is known, so `len(split)` works.
    """

    train: tf.data.Dataset
    val: tf.data.Dataset | None
    test: tf.data.Dataset | None
    class_names: tuple[str, ...]
    image_size: int
    report: DataReport


# ---------------------------------------------------------------------------
# Decoding and resizing (graph functions, no Python in the tf.data map). Plain
# ops without Python control flow on tensors, so autograph, which would convert
# them again whenever a pipeline is built, is switched off.


@tf.autograph.experimental.do_not_convert
def decode_image(contents: tf.Tensor) -> tf.Tensor:
    """Decodes JPEG, PNG, GIF, BMP or WebP bytes, by content, to RGB uint8.

    Grayscale and CMYK become RGB, an alpha channel is dropped, and an
    animated GIF or WebP gives its first frame. (TensorFlow decodes an
    animated WebP only when it has an alpha channel; one without is an
    `InvalidArgumentError` that says so.)

    Args:
        contents: scalar string tensor, the bytes of an image file.

    Returns:
        uint8 tensor `[height, width, 3]`.

    Raises:
        tf.errors.InvalidArgumentError: when the bytes are not a decodable
            image (eagerly; inside tf.data the error reaches the pipeline).
    """
    return _decode(contents)


def _webp_features(contents: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """`(is WebP, has alpha, is animated)` from the first 32 bytes of `contents`.

    TensorFlow's WebP decoder fails unless the requested channels are those
    of the header (RGBA when it has alpha) and, asked for "as in the file"
    (`channels=0`), corrupts memory on an animation without alpha, so the
    channel count is read here as libwebp reads it: the alpha flag of a
    `VP8X` header (which also flags animation) or of a `VP8L` (lossless)
    bitstream; a plain `VP8` (lossy) image has none.
    """
    head = tf.strings.substr(tf.strings.join([tf.strings.substr(contents, 0, 32), b"\0" * 32]), 0, 32)
    raw = tf.io.decode_raw(head, tf.uint8)

    def tag(position: int) -> tf.Tensor:
        return tf.strings.substr(head, position, 4)

    def bit(index: int, mask: int) -> tf.Tensor:
        return tf.bitwise.bitwise_and(raw[index], mask) > 0

    is_webp = (tf.strings.length(contents) > 12) & tf.equal(tag(0), "RIFF") & tf.equal(tag(8), "WEBP")
    extended = tf.equal(tag(12), "VP8X")
    lossless = tf.equal(tag(12), "VP8L")
    has_alpha = (extended & bit(20, 0x10)) | (lossless & bit(24, 0x10))
    animated = extended & bit(20, 0x02)
    return is_webp, has_alpha, animated


# A JPEG is decoded at 1/r scale only when the reduced image still has
# DCT_MARGIN times the target side: closer to 1x, the reduced IDCT followed by
# a small resize is measurably less accurate than a full decode (mean absolute
# error vs. a Lanczos resize of the full image, 41 large Oxford photos at 224:
# 2.8 at 1.0x, 1.8 at 1.5x, 1.8 for the full decode).
DCT_MARGIN = 1.5
_DCT_RATIOS = (1, 2, 4, 8)
# libjpeg's accurate integer IDCT, the one PIL decodes with. TensorFlow's
# default is the fast one, 0.8 dB further from the Lanczos reference of
# bench_input_pipeline (PSNR 38.8 vs 39.6 dB, 1000 Oxford photos at 224 px)
# for about 0.1 ms more per photo.
JPEG_DCT = "INTEGER_ACCURATE"
# Bumped when the pixels a decode gives change, so file caches of older
# decodes are not reused.
_DECODER_VERSION = 2


def _decode_jpeg(contents: tf.Tensor, ratio: int = 1) -> tf.Tensor:
    image = tf.io.decode_jpeg(contents, channels=3, ratio=ratio, dct_method=JPEG_DCT)
    image.set_shape([None, None, 3])
    return image


def _dct_ratio_index(jpeg_shape: tf.Tensor, *, image_size: int, resize: str) -> tf.Tensor:
    """Index into `_DCT_RATIOS` of the scale a JPEG of `jpeg_shape` ([h, w, c]) is decoded at."""
    sides = jpeg_shape[:2]
    side = tf.reduce_max(sides) if resize == "pad" else tf.reduce_min(sides)
    ratios = tf.constant(_DCT_RATIOS[1:], tf.float32)
    return tf.reduce_sum(tf.cast(tf.cast(side, tf.float32) >= ratios * DCT_MARGIN * image_size, tf.int32))


@functools.cache
def _placeholder_jpeg() -> bytes:
    with tf.init_scope():  # eager, also when first called while tracing
        return tf.io.encode_jpeg(tf.zeros([1, 1, 3], tf.uint8)).numpy()


@tf.autograph.experimental.do_not_convert
def decode_for_size(contents: tf.Tensor, *, image_size: int, resize: str = "stretch") -> tf.Tensor:
    """`decode_image`, but a large JPEG is decoded at a reduced scale.

    What `decode_and_resize` decodes before it resizes. The largest libjpeg
    scale 1/r (r in 8, 4, 2) is chosen that keeps the side the resize maps to
    `image_size` (the shorter side for stretch and crop, the longer one for
    pad) at least `DCT_MARGIN * image_size` pixels, so the resize that
    follows still shrinks. Other formats and smaller JPEGs are decoded in full.

    Args:
        contents: scalar string tensor, the bytes of an image file.
        image_size: side of the square the image will be resized to.
        resize: `"stretch"`, `"crop"` or `"pad"` (see `resize_image`).
            Defaults to `"stretch"`.

    Returns:
        uint8 tensor `[height, width, 3]`.
    """
    check_resize_args(image_size, resize)
    return _decode(contents, image_size=image_size, resize=resize)


def _decode(contents: tf.Tensor, *, image_size: int | None = None, resize: str = "stretch") -> tf.Tensor:
    """Any supported image as RGB uint8; with `image_size`, a large JPEG at the scale `decode_for_size` says.

    One flat `switch_case`. Inside a tf.data map every op, taken or not,
    costs CPU time per image, and branches holding conditionals of their own
    more: decode and resize of a 500 x 375 photo took 4.2 ms of CPU this way
    and 4.4 ms with `decode_image` nested in a branch (15 rounds over 1,000
    Oxford photos), against 3.2 ms for a bare decode and area resize.
    """
    is_webp, has_alpha, animated = _webp_features(contents)
    check = tf.debugging.Assert(
        ~is_webp | has_alpha | ~animated,
        ["an animated WebP without alpha channel (TensorFlow decodes animated WebP as RGBA only)"],
    )
    is_jpeg = tf.io.is_jpeg(contents)
    jpeg = tf.constant(0)
    if image_size is not None:
        # Other bytes read a placeholder's header instead: no conditional needed.
        header = tf.io.extract_jpeg_shape(tf.where(is_jpeg, contents, _placeholder_jpeg()))
        jpeg = _dct_ratio_index(header, image_size=image_size, resize=resize)
    rgba, other = len(_DCT_RATIOS), len(_DCT_RATIOS) + 1
    index = tf.where(is_jpeg, jpeg, tf.where(is_webp & has_alpha, rgba, other))
    branches = [lambda r=r: _decode_jpeg(contents, r) for r in _DCT_RATIOS] + [
        lambda: tf.io.decode_image(contents, channels=4, expand_animations=False)[..., :3],
        lambda: tf.io.decode_image(contents, channels=3, expand_animations=False),
    ]
    with tf.control_dependencies([check]):
        image = tf.switch_case(index, branches)
    image.set_shape([None, None, 3])
    return image


def _resize_to(image: tf.Tensor, size: tf.Tensor) -> tf.Tensor:
    """Resizes to `size` ([height, width]) with a filter fit for the scale.

    Shrinking uses the area filter (pixel averages; closest to a Lanczos
    resize and cheaper than anti-aliased bilinear), enlarging uses bilinear,
    and the rare mix of both uses anti-aliased bilinear.
    """
    shape = tf.shape(image)[:2]
    shrink = tf.reduce_all(shape >= size)
    enlarge = tf.reduce_all(shape <= size)
    return tf.switch_case(
        tf.where(shrink, 0, tf.where(enlarge, 1, 2)),  # one branch op, not nested conditionals
        [
            lambda: tf.image.resize(image, size, method="area"),
            lambda: tf.image.resize(image, size, method="bilinear"),
            lambda: tf.image.resize(image, size, method="bilinear", antialias=True),
        ],
    )


def _to_uint8(image: tf.Tensor) -> tf.Tensor:
    return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


@tf.autograph.experimental.do_not_convert
def resize_image(image: tf.Tensor, *, image_size: int, resize: str = "stretch") -> tf.Tensor:
    """Resizes an RGB image to a uint8 square.

    Shrinking averages pixels (area filter), enlarging is bilinear.

    Args:
        image: `[height, width, 3]` tensor of pixels in [0, 255] (any real or
            integer dtype).
        image_size: side of the output square.
        resize: `"stretch"` (ignore the aspect ratio), `"crop"` (keep the
            aspect ratio, cut the central square) or `"pad"` (keep the aspect
            ratio, fit the whole image and pad with black). Defaults to
            `"stretch"`.

    Returns:
        uint8 tensor `[image_size, image_size, 3]`.
    """
    check_resize_args(image_size, resize)
    image = tf.convert_to_tensor(image)
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    square = tf.constant([image_size, image_size])
    if resize == "crop":
        side = tf.minimum(height, width)
        image = tf.image.crop_to_bounding_box(image, (height - side) // 2, (width - side) // 2, side, side)
        size = square
    elif resize == "pad":
        scale = image_size / tf.cast(tf.maximum(height, width), tf.float32)
        size = tf.cast(tf.round(tf.cast(tf.stack([height, width]), tf.float32) * scale), tf.int32)
        size = tf.clip_by_value(size, 1, image_size)
    else:
        size = square
    resized = _to_uint8(_resize_to(image, size))
    if resize == "pad":
        resized = tf.image.pad_to_bounding_box(
            resized, (image_size - size[0]) // 2, (image_size - size[1]) // 2, image_size, image_size
        )
    return tf.ensure_shape(resized, [image_size, image_size, 3])


@tf.autograph.experimental.do_not_convert
def decode_and_resize(contents: tf.Tensor, *, image_size: int, resize: str = "stretch") -> tf.Tensor:
    """Decodes image bytes (`decode_for_size`) and resizes them (`resize_image`).

    What the loaders, `keras_transfer.inference` and the exported bytes
    signature run on every file, so a served or predicted photo gets the
    pixels it was trained on.

    Args:
        contents: scalar string tensor, the bytes of an image file.
        image_size: side of the output square.
        resize: `"stretch"`, `"crop"` or `"pad"` (see `resize_image`).
            Defaults to `"stretch"`.

    Returns:
        uint8 tensor `[image_size, image_size, 3]`.
    """
    image = decode_for_size(contents, image_size=image_size, resize=resize)
    return resize_image(image, image_size=image_size, resize=resize)


def decoded_images(
    paths: Sequence[str], *, image_size: int, resize: str, order: Sequence[int] | None = None
) -> tf.data.Dataset:
    """`(index into paths, image)` for every path that decodes, in path order or in `order` (indices)."""
    return _decoded_files(paths, image_size=image_size, resize=resize, order=order)


def _decoded_files(
    paths: Sequence[str], *, image_size: int, resize: str, order: Sequence[int] | None = None,
    labels: tf.Tensor | None = None, check_only: bool = False,
) -> tf.data.Dataset:
    """`decoded_images`; with `labels` (int32, by path), `(index, image, label)` in one map.

    With `check_only`, `(index, label)` (or `(index,)`) of the same files:
    each is decoded as for its image (same errors, same skips) but not
    resized, for a pass that only finds the undecodable files.
    """
    indices = np.arange(len(paths)) if order is None else np.asarray(order)
    # As bytes: a name that is not UTF-8 (os.listdir gives it surrogate-escaped) is no valid tf.string text.
    files = tf.data.Dataset.from_tensor_slices(
        (tf.constant(indices, tf.int64), tf.constant([os.fsencode(paths[i]) for i in indices], tf.string)))

    @tf.autograph.experimental.do_not_convert
    def load(i, path):
        contents = tf.io.read_file(path)
        if check_only:
            out = (_once_decoded(i, contents, image_size=image_size, resize=resize),)
        else:
            out = (i, decode_and_resize(contents, image_size=image_size, resize=resize))
        return out + ((tf.gather(labels, i),) if labels is not None else ())

    return files.map(load, num_parallel_calls=AUTOTUNE, deterministic=True).ignore_errors()


def _once_decoded(value: tf.Tensor, contents: tf.Tensor, *, image_size: int, resize: str) -> tf.Tensor:
    """`value`, once `contents` is decoded as `decode_and_resize` decodes it (failing where it fails), not resized."""
    image = decode_for_size(contents, image_size=image_size, resize=resize)
    with tf.control_dependencies([image]):
        return tf.identity(value)


def _why_undecodable(path: str) -> str:
    """The error one skipped file gives, for the log."""
    try:
        decode_image(tf.io.read_file(os.fsencode(path)))
    except (tf.errors.OpError, ValueError) as error:
        message = getattr(error, "message", None) or str(error)
        # Drop TF's "{{function_node ...}}" prefix and " [Op:...]" suffix.
        message = re.sub(r"\{\{[^}]*\}\}|\[Op:.*$", "", message, flags=re.S).strip()
        # A failed tf.debugging.Assert: keep its message only.
        message = re.sub(r"^Expected .* to be true\. Summarized data: b'(.*)'$", r"\1", message, flags=re.S)
        return message or type(error).__name__
    return "decodes when read alone"  # e.g. it changed on disk meanwhile


def _printable(text: str) -> str:
    """`text` with the bytes of a name that is not UTF-8 (surrogate-escaped) spelled `\\xe9`, for any log or stream."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _log_listing(headline: str, lines: Sequence[str], total: int) -> None:
    more = f"\n  ... and {total - len(lines)} more" if total > len(lines) else ""
    logger.warning("%s:\n%s%s", headline, "\n".join(f"  {_printable(line)}" for line in lines), more)


def log_skips(skipped: Sequence[str], *, root: str | None) -> None:
    if not skipped:
        return
    shown = [f"{name}: {_why_undecodable(os.path.join(root, name) if root else name)}" for name in skipped[:10]]
    _log_listing(f"Skipped {len(skipped)} file(s) that could not be decoded as images", shown, len(skipped))


def _log_ignored(ignored: Sequence[tuple[str, str]]) -> None:
    """Names the ignored files `(path, why)` (not decoded on purpose)."""
    if not ignored:
        return
    shown = [f"{name}: {why}" for name, why in ignored[:10]]
    _log_listing(f"Ignored {len(ignored)} file(s), not decoded on purpose", shown, len(ignored))


def load_image_files(
    paths: Sequence[str | os.PathLike], *, image_size: int, resize: str = "stretch"
) -> tuple[np.ndarray, list[str], list[str]]:
    """Decodes and resizes image files into one array, skipping bad files.

    Args:
        paths: image files, in any format `decode_image` reads.
        image_size: side of the output squares.
        resize: `"stretch"`, `"crop"` or `"pad"` (see `resize_image`).
            Defaults to `"stretch"`.

    Returns:
        `(images, kept, skipped)`: uint8 array `[len(kept), image_size,
        image_size, 3]` in the order of `paths`, the paths that decoded, and
        those that could not be read or decoded (a warning names them).
    """
    check_resize_args(image_size, resize)
    paths = [os.fspath(p) for p in paths]
    if not paths:
        return np.zeros((0, image_size, image_size, 3), np.uint8), [], []
    kept_indices, batches = [], []
    for indices, images in decoded_images(paths, image_size=image_size, resize=resize).batch(256):
        kept_indices.extend(indices.numpy().tolist())
        batches.append(images.numpy())
    images = np.concatenate(batches) if batches else np.zeros((0, image_size, image_size, 3), np.uint8)
    kept_set = set(kept_indices)
    kept = [paths[i] for i in kept_indices]
    skipped = [p for i, p in enumerate(paths) if i not in kept_set]
    log_skips(skipped, root=None)
    return images, kept, skipped


# ---------------------------------------------------------------------------
# Splitting.


def stratified_split(
    labels: Sequence[int] | np.ndarray, *, val_split: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic, stratified train/validation split.

    In each class, `round(n * val_split)` examples, at least 1 when the class
    has 2 or more and `val_split > 0`, and at most `n - 1`, go to validation.
    They are drawn with the raw 64-bit stream of a PCG64 bit generator seeded
    by `seed` (bit streams are fixed across NumPy versions, unlike
    `Generator` methods), so the split only depends on `labels`, `val_split`
    and `seed`, on any machine.

    Args:
        labels: integer class of each example.
        val_split: fraction of each class for validation, in [0, 1).
        seed: seed of the draw (a non-negative integer).

    Returns:
        `(train_indices, val_indices)`, sorted int64 arrays into `labels`.
    """
    _check_split_args(val_split, seed)
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"Expected a 1-D sequence of labels. Received: labels with shape {labels.shape}")
    bits = np.random.PCG64(int(seed))
    is_val = np.zeros(len(labels), bool)
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        n = len(members)
        n_val = int(np.floor(n * val_split + 0.5))
        n_val = min(max(n_val, 1), n - 1) if val_split > 0 and n >= 2 else min(n_val, max(n - 1, 0))
        keys = bits.random_raw(n)  # one key per member, drawn even when n_val == 0
        is_val[members[np.argsort(keys, kind="stable")[:n_val]]] = True
    return np.flatnonzero(~is_val).astype(np.int64), np.flatnonzero(is_val).astype(np.int64)


# ---------------------------------------------------------------------------
# Pools: every image of a split group decoded once into the uint8 cache.


@dataclasses.dataclass
class _Pool:
    """Decoded examples of one split group (train+val, or test)."""

    dataset: tf.data.Dataset  # (index int64, image uint8, label int32), cached
    indices: np.ndarray  # indices of the examples that decoded, in order
    labels: np.ndarray  # their labels
    skipped: list[int]  # indices of the examples that did not decode
    seconds: float = 0.0  # the first pass: decode and resize (or read the file cache), fill the cache


def _fill_pool(
    examples: tf.data.Dataset, *, cache: bool | str, key: str, total: int, what: str,
    check: tf.data.Dataset | None = None,
) -> _Pool:
    """Runs the decode pass of `examples` ((index, image, label), errors
    ignored) through the cache and records which indices survived.

    `total` is the number of examples, `what` names them in the progress lines.
    `check` ((index, label), errors ignored where `examples` has them, without
    the images), when given, is the pass of `cache=False`, which keeps no image.
    """
    started = time.perf_counter()
    if isinstance(cache, bool):
        pool = examples.cache() if cache else examples
        found = _first_pass(pool if cache or check is None else check, total=total, what=f"Decoding {what}")
        return _Pool(pool, *found, skipped=[], seconds=time.perf_counter() - started)
    # The key names the exact inputs, so a file cache left by another run is
    # only reused for the same files, size and resize mode.
    filename = f"{os.fspath(cache)}-{key}"
    with _file_cache_writer(filename) as writing:
        if writing is not None:
            found = _first_pass(examples.cache(writing), total=total, what=f"Decoding {what}")
            _publish_file_cache(writing, filename)
    pool = examples.cache(filename)
    if writing is None:
        found = _first_pass(pool, total=total, what=f"Reading the cached images of {what}")
    return _Pool(pool, *found, skipped=[], seconds=time.perf_counter() - started)


def _first_pass(pool: tf.data.Dataset, *, total: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """`(indices, labels)` of the examples of one full pass over `pool` (which fills its cache).

    `pool` has `(index, image, label)` or `(index, label)` elements.
    """
    indices, labels = [], []
    progress = _Progress(total, what) if total > _PROGRESS_MIN_IMAGES else None
    # Only indices and labels come back to Python; the images stay in the cache.
    done = 0
    if len(pool.element_spec) == 3:
        pool = pool.map(lambda i, image, label: (i, label))
    for i, label in pool.batch(_PASS_BATCH):
        indices.append(i.numpy())
        labels.append(label.numpy())
        done += len(indices[-1])  # images decoded so far (files that fail to decode are not counted)
        if progress is not None:
            progress.update(done)
    if progress is not None:
        progress.update(total)
    indices = np.concatenate(indices) if indices else np.zeros(0, np.int64)
    labels = np.concatenate(labels) if labels else np.zeros(0, np.int32)
    return indices, labels


class _Progress:
    """Prints how far a pass is, every 10% of `total` and at least every `_PROGRESS_SECONDS`."""

    def __init__(self, total: int, what: str):
        self.total, self.what = total, _printable(what)
        self.started = self.shown_at = time.perf_counter()
        self.shown = 0

    def update(self, done: int) -> None:
        now = time.perf_counter()
        finished = done >= self.total
        if self.shown >= self.total or not (
            finished or done - self.shown >= self.total / 10 or now - self.shown_at >= _PROGRESS_SECONDS
        ):
            return
        elapsed = max(now - self.started, 1e-9)
        rate = done / elapsed
        when = (f"in {_format_seconds(elapsed)}" if finished
                else f"about {_format_seconds((self.total - done) / max(rate, 1e-9))} left")
        print(f"{self.what}: {done:,}/{self.total:,} images ({done / self.total:.0%}), {rate:,.0f} images/s, {when}",
              flush=True)
        self.shown, self.shown_at = done, now


def _format_seconds(seconds: float) -> str:
    minutes, seconds = divmod(int(round(seconds)), 60)
    return f"{minutes} min {seconds} s" if minutes else f"{seconds} s"


# tf.data writes a file cache `<prefix>` as `<prefix>_0.data-...tempstate...`
# behind a `<prefix>_0.lockfile`, then renames the data file and writes
# `<prefix>.index` (not atomically), whose existence alone makes later
# iterators read the cache. A writer killed mid-pass leaves the lockfile, and
# every later writer of that prefix then fails ("concurrent caching
# iterator"); one killed while writing the index leaves a cache that reads as
# complete but is corrupt. So the pass writes `<prefix>.writing` and renames
# its files into place once complete, and a `flock` on `<prefix>.lock` (which
# the kernel releases when its process dies) tells a live writer from the
# leftovers of a dead one.
_WRITING = ".writing"


@contextlib.contextmanager
def _file_cache_writer(filename: str) -> Iterator[str | None]:
    """The prefix to write the file cache `filename` through, or `None` when it is complete.

    Holds `filename.lock` for the block (waiting for another process that
    writes the same cache), and removes what a dead writer left.
    """
    import fcntl

    if os.path.exists(filename + ".index"):
        yield None
        return
    os.makedirs(os.path.dirname(os.path.abspath(filename)), exist_ok=True)
    fd = os.open(filename + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.warning("Waiting for another process that is writing the image cache %s.*", filename)
            fcntl.flock(fd, fcntl.LOCK_EX)
        if os.path.exists(filename + ".index"):  # written meanwhile by the process waited for
            yield None
            return
        leftovers = glob.glob(glob.escape(filename + _WRITING) + "*") + glob.glob(glob.escape(filename) + "_[0-9]*")
        if leftovers:
            logger.warning("Removing %d file(s) of an unfinished image cache %s.*, whose writer stopped: %s",
                           len(leftovers), filename, [os.path.basename(f) for f in leftovers])
            for leftover in leftovers:
                os.remove(leftover)
        yield filename + _WRITING
    finally:
        os.close(fd)  # releases the lock


def _publish_file_cache(writing: str, filename: str) -> None:
    """Moves the complete cache `writing` to `filename`, its index last."""
    if not os.path.exists(writing + ".index"):
        # e.g. an iterator that did not run to the end; nothing is published.
        raise RuntimeError(f"The image cache {writing!r} was not completed by the decode pass.")
    for data_file in glob.glob(glob.escape(writing) + ".data-*"):
        os.replace(data_file, filename + data_file[len(writing):])
    os.replace(writing + ".index", filename + ".index")


def _file_pool(
    paths: Sequence[str], labels: Sequence[int], *, image_size: int, resize: str, cache, tag: str, what: str,
    order_seed: int | None = None,
) -> _Pool:
    """The decoded files; with `order_seed`, decoded (and cached) in an order drawn from it.

    Files are listed class by class; a shuffle buffer smaller than a split
    (see `shuffle_buffer_size`) would then draw batches of one class. A
    seeded order makes every stretch of the cache a sample of all classes.
    """
    labels_t = tf.constant(np.asarray(labels, np.int32))
    order = None
    if order_seed is not None:
        order = np.random.default_rng([_DECODE_ORDER_STREAM, order_seed]).permutation(len(paths))
    examples = _decoded_files(paths, image_size=image_size, resize=resize, order=order, labels=labels_t)
    # cache=False: the pass only finds the undecodable files (decodes, does not resize).
    check = _decoded_files(paths, image_size=image_size, resize=resize, order=order, labels=labels_t,
                           check_only=True) if cache is False else None
    key = "" if isinstance(cache, bool) else _cache_key(
        tag, image_size, resize, paths, labels=labels, order_seed=order_seed)
    pool = _fill_pool(examples, cache=cache, key=key, total=len(paths), what=what, check=check)
    kept = set(pool.indices.tolist())
    pool.skipped = [i for i in range(len(paths)) if i not in kept]
    return pool


def _cache_key(
    tag: str, image_size: int, resize: str, paths: Sequence[str], *, labels: Sequence[int],
    order_seed: int | None = None,
) -> str:
    if order_seed is not None:
        tag = f"{tag}-order{order_seed}"  # the file cache holds the images in that order
    digest = hashlib.sha1(f"{tag}|{image_size}|{resize}|decoder{_DECODER_VERSION}".encode())
    # ... and their labels (the same Oxford files are breeds or species).
    digest.update(np.asarray(labels, np.int32).tobytes())
    for path in paths:
        try:
            stat = os.stat(path)
            digest.update(f"|{path}|{stat.st_size}|{stat.st_mtime_ns}".encode(errors="surrogateescape"))
        except OSError:
            digest.update(f"|{path}|missing".encode(errors="surrogateescape"))
    return f"{tag}-{image_size}-{resize}-{digest.hexdigest()[:16]}"


def _select(pool: _Pool, positions: np.ndarray) -> tf.data.Dataset:
    """The pool examples at `positions` (into pool.indices), as (image, label)."""
    if len(positions) == len(pool.indices):
        ds = pool.dataset.map(lambda i, image, label: (image, label))
        return ds.apply(tf.data.experimental.assert_cardinality(len(positions)))
    selected = np.zeros(int(pool.indices.max()) + 1 if len(pool.indices) else 1, bool)
    selected[pool.indices[positions]] = True
    selected_t = tf.constant(selected)
    ds = pool.dataset.filter(lambda i, image, label: tf.gather(selected_t, i))
    ds = ds.map(lambda i, image, label: (image, label))
    return ds.apply(tf.data.experimental.assert_cardinality(len(positions)))


def _assemble(
    *,
    source: str,
    class_names: Sequence[str],
    trainval: _Pool,
    test: _Pool | None,
    val_split: float,
    seed: int,
    found: int,
    ignored: Sequence[str],
    skipped_names: list[str],
    image_size: int,
    class_dirs: dict[str, str] | None,
    cache: str,
    files_digest: str = "",
) -> ImageData:
    """The splits and the report of decoded pools; `ignored` are the paths of the ignored files.

    `cache` and `files_digest` are the `DataReport`'s.
    """
    _check_every_class_decoded(source, class_names, trainval.labels, skipped_names, class_dirs)
    # The split is drawn on the files in listing order, whatever order they
    # were decoded in, so a seed always holds out the same files.
    listing = np.argsort(trainval.indices, kind="stable")
    train_pos, val_pos = (np.sort(listing[p]) for p in stratified_split(trainval.labels[listing],
                                                                         val_split=val_split, seed=seed))
    train = _select(trainval, train_pos)
    val = _select(trainval, val_pos) if val_split > 0 else None
    test_ds = _select(test, np.arange(len(test.indices))) if test is not None else None

    per_class = {
        name: {
            "train": int(np.sum(trainval.labels[train_pos] == c)),
            "val": int(np.sum(trainval.labels[val_pos] == c)),
            "test": int(np.sum(test.labels == c)) if test is not None else 0,
        }
        for c, name in enumerate(class_names)
    }
    used = {
        "train": len(train_pos),
        "val": len(val_pos),
        "test": len(test.indices) if test is not None else 0,
    }
    report = DataReport(
        source=source,
        found=found,
        used=used,
        skipped=len(skipped_names),
        skipped_files=skipped_names[:MAX_LISTED_FILES],
        ignored=len(ignored),
        per_class=per_class,
        ignored_files=list(ignored[:MAX_LISTED_FILES]),
        cache=cache,
        first_pass_s=trainval.seconds + (test.seconds if test is not None else 0.0),
        files_digest=files_digest,
    )
    logger.info(
        "%s: %d found, used %s, %d skipped (undecodable), %d ignored; cache: %s",
        source, found, used, report.skipped, report.ignored, cache,
    )
    return ImageData(
        train=train,
        val=val,
        test=test_ds,
        class_names=tuple(class_names),
        image_size=image_size,
        report=report,
    )


def _check_every_class_decoded(
    source: str,
    class_names: Sequence[str],
    labels: np.ndarray,
    skipped_names: Sequence[str],
    class_dirs: dict[str, str] | None,
) -> None:
    """Raises `ValueError` when a class has no decoded train/validation image."""
    counts = np.bincount(labels, minlength=len(class_names))
    empty = [name for name, n in zip(class_names, counts) if n == 0]
    if not empty:
        return
    where = f" (class folder(s) {[class_dirs[name] for name in empty]})" if class_dirs else ""
    raise ValueError(
        f"{source}: no image of class(es) {empty} could be decoded{where}; "
        f"{len(skipped_names)} file(s) were skipped as undecodable, e.g. {list(skipped_names[:5])}. "
        "Expected every class to have at least one image in a format decode_image reads "
        "(JPEG, PNG, GIF, BMP or WebP) for training."
    )


# ---------------------------------------------------------------------------
# Folder sources.


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _not_an_image_extension(name: str) -> str:
    extension = os.path.splitext(name)[1]
    return f"extension {extension!r} is not one of {IMAGE_EXTENSIONS}" if extension else "no file extension"


def check_dir(data_dir, expected: str) -> str:
    """The absolute path of the folder `data_dir`.

    Raises:
        ValueError: `data_dir` is not a path.
        FileNotFoundError / NotADirectoryError: it does not exist / is a
            file (both also `ValueError`s), with a message naming the path
            and `expected`.
    """
    if data_dir is None or not _DATA_DIR.accepts(data_dir):
        raise ValueError(f"Expected data_dir to be {expected}. Received: data_dir={data_dir!r}")
    path = os.fspath(data_dir)
    if not os.path.exists(path):
        raise _DataDirNotFoundError(f"The data folder {path!r} does not exist. Expected {expected}.")
    if not os.path.isdir(path):
        raise _DataDirNotADirectoryError(f"The data folder {path!r} is a file, not a folder. Expected {expected}.")
    return os.path.abspath(path)


FOLDER_LAYOUT = "a folder with one subfolder of images per class, at least 2 of them (root/<class>/<image>)"


def load_folder(
    data_dir: str | os.PathLike,
    *,
    image_size: int = 224,
    val_split: float = 0.2,
    seed: int = 0,
    resize: str = "stretch",
    cache: bool | str | os.PathLike = "auto",
    memory_limit: int | str | None = None,
) -> ImageData:
    """Loads a class-per-folder tree of images.

    Class names are the sorted names of the subfolders of `data_dir` (at
    least 2); each class folder is searched recursively. Hidden files and
    folders, files outside class folders and files whose extension is not in
    `IMAGE_EXTENSIONS` are ignored (counted and listed in the report). Files
    that cannot be decoded are skipped (counted and listed). There is no test
    split.

    Args:
        data_dir: the root folder.
        image_size: side of the square images. Defaults to `224`.
        val_split: fraction of each class held out for validation, in [0, 1).
            Defaults to `0.2`.
        seed: seed of the train/validation split. Defaults to `0`.
        resize: `"stretch"`, `"crop"` or `"pad"` (see `resize_image`).
            Defaults to `"stretch"`.
        cache: where the decoded images are kept. `True` or `"memory"`: in
            memory; `False` or `"none"`: nowhere, they are decoded every
            epoch; a path (`str` or `os.PathLike`; `"./auto"` for a file
            named so): the prefix of the files of a tf.data file cache
            (reused by later loads of the same files, size and resize mode);
            `"auto"`: in memory when they fit in the memory budget (they
            take `len(files) * image_size**2 * 3` bytes), else in a file
            cache under `$KERAS_TRANSFER_CACHE_DIR` (default
            `~/.cache/keras_transfer/images`), with a warning that says so.
            `DataReport.cache` records the choice. Defaults to `"auto"`.
        memory_limit: the memory budget of `cache="auto"`: bytes, or a
            string such as `"2G"` or `"512Mi"` (see `parse_bytes`). Defaults
            to `None`: `$KERAS_TRANSFER_MEMORY_LIMIT` (same format) when
            set, else half the available memory (`available_memory`).

    Returns:
        An `ImageData` with `train`, `val` (`None` when `val_split=0`) and
        `test=None`.

    Raises:
        FileNotFoundError / NotADirectoryError: `data_dir` does not exist /
            is a file.
        ValueError: a bad argument or `$KERAS_TRANSFER_MEMORY_LIMIT`, an
            empty `data_dir`, fewer than 2 class folders, a class folder
            without image files or whose every file is undecodable.
        PermissionError: `cache="auto"` needs a file cache and its folder
            is not writable.
    """
    cache, memory_limit = _check_loader_args(image_size, resize, val_split, cache, seed, memory_limit)
    return _load_folder(
        data_dir, image_size=image_size, val_split=val_split, seed=seed, resize=resize, cache=cache,
        memory_limit=memory_limit,
    )


def _load_folder(data_dir, *, image_size, val_split, seed, resize, cache, memory_limit) -> ImageData:
    root = check_dir(data_dir, FOLDER_LAYOUT)
    class_names, paths, labels, ignored = list_class_folders(root)
    return _load_files(
        source=f"folder:{root}",
        root=root,
        class_names=class_names,
        trainval=(paths, labels),
        test=None,
        ignored=ignored,
        image_size=image_size,
        val_split=val_split,
        seed=seed,
        resize=resize,
        cache=cache,
        class_dirs={name: os.path.join(root, name) for name in class_names},
        memory_limit=memory_limit,
    )


def list_class_folders(root: str) -> tuple[list[str], list[str], list[int], list[tuple[str, str]]]:
    """`(class_names, paths, labels, ignored)` of a class-per-folder tree.

    `ignored` holds `(path relative to root, why)` of the files not decoded.
    """
    entries = sorted(e for e in os.listdir(root) if not _is_hidden(e))
    class_names = [e for e in entries if os.path.isdir(os.path.join(root, e))]
    _check_class_folders(root, entries, class_names)
    folders = set(class_names)
    ignored = [(e, "a file beside the class folders") for e in entries if e not in folders]
    paths, labels = [], []
    for label, name in enumerate(class_names):
        images, others = class_files(root, name)
        ignored += others
        if not images:
            raise ValueError(
                f"Class folder {os.path.join(root, name)!r} contains no image files "
                f"(extensions {IMAGE_EXTENSIONS}; it holds {len(others)} other file(s), e.g. "
                f"{[path for path, _ in others[:3]]}). Expected {FOLDER_LAYOUT}."
            )
        paths += images
        labels += [label] * len(images)
    return class_names, paths, labels, ignored


def _check_class_folders(root: str, entries: Sequence[str], class_names: Sequence[str]) -> None:
    if not entries:
        raise ValueError(f"The data folder {root!r} is empty. Expected {FOLDER_LAYOUT}.")
    if not class_names:
        raise ValueError(
            f"Found no class subfolders in {root!r}: it holds {len(entries)} file(s), e.g. "
            f"{list(entries[:3])}. Expected {FOLDER_LAYOUT}."
        )
    if len(class_names) < 2:
        raise ValueError(
            f"Found only one class folder, {class_names[0]!r}, in {root!r}: a classifier needs at least "
            f"2 classes. Expected {FOLDER_LAYOUT}."
        )


def class_files(root: str, name: str) -> tuple[list[str], list[tuple[str, str]]]:
    """The image files under `root/name` (recursively, sorted) and the ignored `(path, why)`."""
    images, ignored = [], []
    top = os.path.join(root, name)
    walked = {os.path.realpath(top)}
    for folder, dirs, files in os.walk(top, followlinks=True):
        here = os.path.realpath(folder)
        kept = []
        for d in sorted(d for d in dirs if not _is_hidden(d)):
            real = os.path.realpath(os.path.join(folder, d))
            # A link to a folder walked already, or above this one, would list
            # the same files again (a loop: for ever).
            if real in walked or os.path.commonpath([real, here]) == real:
                logger.warning("Not following %s: it leads to %s, a folder listed already.",
                               _printable(os.path.join(folder, d)), _printable(real))
                continue
            walked.add(real)
            kept.append(d)
        dirs[:] = kept
        for file in sorted(files):
            if _is_hidden(file):
                continue
            path = os.path.join(folder, file)
            if _is_image_name(file):
                images.append(path)
            else:
                ignored.append((os.path.relpath(path, root), _not_an_image_extension(file)))
    return images, ignored


def _load_files(
    *, source, root, class_names, trainval, test, ignored, image_size, val_split, seed, resize, cache, class_dirs,
    memory_limit,
) -> ImageData:
    """Decodes `trainval` (and `test`), `(paths, labels)`, into an `ImageData`.

    `ignored` holds `(path relative to root, why)` of the files not decoded.
    """
    paths, labels = trainval
    found = len(paths) + (len(test[0]) if test else 0) + len(ignored)
    if not paths:
        raise ValueError(f"{source}: found no image files to train on.")
    cache, cache_name = _resolve_cache(
        cache, images=found - len(ignored), image_size=image_size, memory_limit=memory_limit,
        name=os.path.basename(root),
    )
    started = time.perf_counter()
    pool = _file_pool(paths, labels, image_size=image_size, resize=resize, cache=cache, tag="trainval",
                      what=source, order_seed=seed)
    skipped = [os.path.relpath(paths[i], root) for i in pool.skipped]
    test_pool = None
    if test:
        test_pool = _file_pool(*test, image_size=image_size, resize=resize, cache=cache, tag="test",
                               what=f"{source} (test)")
        skipped += [os.path.relpath(test[0][i], root) for i in test_pool.skipped]
    logger.info("Decoded %s in %.1f s", source, time.perf_counter() - started)
    log_skips(skipped, root=root)
    _log_ignored(ignored)
    return _assemble(
        source=source,
        class_names=class_names,
        trainval=pool,
        test=test_pool,
        val_split=val_split,
        seed=seed,
        found=found,
        ignored=[path for path, _ in ignored],
        skipped_names=skipped,
        image_size=image_size,
        class_dirs=class_dirs,
        cache=cache_name,
        files_digest=_files_digest(root, [trainval, *([test] if test else [])]),
    )


def _files_digest(root: str, splits: Sequence[tuple[Sequence[str], Sequence[int]]]) -> str:
    """`DataReport.files_digest` of `(paths, labels)` splits (sizes, not
    modification times, which copies and sync tools change)."""
    digest = hashlib.sha1()
    for paths, labels in splits:
        for path, label in zip(paths, labels):
            try:
                size = os.stat(path).st_size
            except OSError:
                size = -1
            digest.update(f"{os.path.relpath(path, root)}|{size}|{int(label)}\n".encode(errors="surrogateescape"))
        digest.update(b"--\n")
    return digest.hexdigest()[:16]


# ---------------------------------------------------------------------------
# Oxford-IIIT Pet folders.


_OXFORD_LAYOUT = (
    "an Oxford-IIIT Pet folder: images/ with the photos (<Breed>_<n>.jpg, capitalised breed = "
    "cat), optionally annotations/ with list.txt, trainval.txt, test.txt"
)


def _oxford_classes(breeds: Sequence[str]) -> list[str]:
    # The official class ids (and tfds' label names) are the breeds in
    # case-insensitive alphabetical order.
    return sorted(set(breeds), key=lambda b: (b.lower(), b))


def _read_annotations(path: str) -> dict[str, int]:
    """`{image name: species (1 cat, 2 dog)}` of an Oxford annotation list.

    Raises:
        CorruptFileError: (a `ValueError`) naming the file, the line number,
            the line and the format, for a line that is not
            `Image CLASS-ID SPECIES BREED-ID`; lines starting with `#` are
            comments.
    """
    entries = {}
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.readlines()
    except UnicodeDecodeError as error:
        raise CorruptFileError(
            f"The Oxford annotation list {path!r} is not a text file ({error}). "
            f"Expected lines '{_OXFORD_FORMAT}'."
        ) from None
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) != 4 or not all(re.fullmatch(r"\d+", v) for v in fields[1:]) or fields[2] not in ("1", "2"):
            raise CorruptFileError(
                f"Malformed line {number} of the Oxford annotation list {path!r}: {line!r}. "
                f"Expected '{_OXFORD_FORMAT}': an image name and three integers, SPECIES 1 (cat) or "
                "2 (dog); lines starting with '#' are comments."
            )
        entries[fields[0]] = int(fields[2])
    return entries


def _load_oxford_folder(data_dir, *, image_size, val_split, seed, resize, cache, target, memory_limit) -> ImageData:
    root = check_dir(data_dir, _OXFORD_LAYOUT)
    images_dir = os.path.join(root, "images")
    if not os.path.isdir(images_dir):
        raise ValueError(f"Found no images/ folder in {root!r}. Expected {_OXFORD_LAYOUT}.")
    ann_dir = os.path.join(root, "annotations")
    lists = {
        name: _read_annotations(os.path.join(ann_dir, f"{name}.txt"))
        for name in ("list", "trainval", "test")
        if os.path.isfile(os.path.join(ann_dir, f"{name}.txt"))
    }
    candidates, ignored = _oxford_candidates(images_dir)
    groups = _oxford_groups(candidates, lists, ignored)
    if not groups["trainval"]:
        raise ValueError(
            f"None of the images in {images_dir!r} is in the train/validation annotation list "
            f"(annotations/trainval.txt, else list.txt). Expected {_OXFORD_LAYOUT}."
        )
    class_names, label_of = _oxford_labels(groups["trainval"] + groups["test"], lists, target)
    if len(class_names) < 2:
        raise ValueError(
            f"Found images of only one class, {class_names[0]!r}, in {images_dir!r}: a classifier needs "
            f"at least 2 classes. Expected {_OXFORD_LAYOUT}."
        )

    def split(group):
        return [p for _, _, p in group], [label_of[s] for s, _, _ in group]

    return _load_files(
        source=f"oxford_folder:{root}",
        root=root,
        class_names=class_names,
        trainval=split(groups["trainval"]),
        test=split(groups["test"]) if groups["test"] else None,
        ignored=ignored,
        image_size=image_size,
        val_split=val_split,
        seed=seed,
        resize=resize,
        cache=cache,
        class_dirs=None,
        memory_limit=memory_limit,
    )


def _oxford_candidates(images_dir: str) -> tuple[list[tuple[str, str, str]], list[tuple[str, str]]]:
    """`(stem, breed, path)` of the `<Breed>_<n>` images, and the ignored `(path, why)`."""
    candidates, ignored = [], []
    for file in sorted(f for f in os.listdir(images_dir) if not _is_hidden(f)):
        stem = os.path.splitext(file)[0]
        match = _OXFORD_NAME.match(stem)
        path = os.path.join(images_dir, file)
        why = (
            _not_an_image_extension(file) if not _is_image_name(file)
            else "not named <Breed>_<n>" if not match
            else "not a file" if not os.path.isfile(path)
            else None
        )
        if why is None:
            candidates.append((stem, match["breed"], path))
        else:
            ignored.append((f"images/{file}", why))
    if not candidates:
        raise ValueError(f"Found no <Breed>_<n> image files in {images_dir!r}. Expected {_OXFORD_LAYOUT}.")
    return candidates, ignored


def _oxford_groups(
    candidates: Sequence[tuple[str, str, str]], lists: dict[str, dict[str, int]], ignored: list[tuple[str, str]]
) -> dict[str, list[tuple[str, str, str]]]:
    """The candidates of `"trainval"` and `"test"` by the annotation lists.

    Without lists every candidate is trainval; a candidate in none of the
    lists is appended to `ignored`.
    """
    if "test" in lists and ("trainval" in lists or "list" in lists):
        test_names = set(lists["test"])
        trainval_names = set(lists["trainval"]) if "trainval" in lists else set(lists["list"]) - test_names
    elif lists:
        test_names = set()
        trainval_names = set(lists.get("trainval") or lists.get("list") or lists["test"])
    else:
        test_names, trainval_names = set(), None  # no annotations: every image
    groups: dict[str, list[tuple[str, str, str]]] = {"trainval": [], "test": []}
    for stem, breed, path in candidates:
        if stem in test_names:
            groups["test"].append((stem, breed, path))
        elif trainval_names is None or stem in trainval_names:
            groups["trainval"].append((stem, breed, path))
        else:
            ignored.append((f"images/{os.path.basename(path)}", "in none of the annotation lists"))
    return groups


def _oxford_labels(
    used: Sequence[tuple[str, str, str]], lists: dict[str, dict[str, int]], target: str
) -> tuple[list[str], dict[str, int]]:
    """`(class_names, {stem: label})` of the used images, by breed or species."""
    species_of = {}
    for entries in lists.values():
        species_of.update(entries)

    def species(stem: str, breed: str) -> str:
        if stem in species_of:
            return "cat" if species_of[stem] == 1 else "dog"
        return "cat" if breed[:1].isupper() else "dog"

    if target == "species":
        class_names = ["cat", "dog"]
        return class_names, {stem: class_names.index(species(stem, breed)) for stem, breed, _ in used}
    class_names = _oxford_classes([breed for _, breed, _ in used])
    index = {name: i for i, name in enumerate(class_names)}
    return class_names, {stem: index[breed] for stem, breed, _ in used}


# ---------------------------------------------------------------------------
# tensorflow-datasets sources.


def _tfds_builder(name: str, tfds_data_dir):
    """The tfds builder of `name`, prepared; fails fast when offline."""
    import tensorflow_datasets as tfds

    info = TFDS_SOURCES[name]
    builder = tfds.builder(name, data_dir=os.fspath(tfds_data_dir) if tfds_data_dir else None)
    if not builder.is_prepared():
        reason = probe(info["url"])
        if reason is not None:
            raise DatasetUnavailableError(
                f"The {info['title']} is not prepared in {builder.data_dir} and cannot be "
                f"downloaded: {reason} (tried {info['url']}).\n"
                f"This machine seems to be offline. Either {info['how']}, and pass that folder as "
                f"data_dir (--data-dir PATH on the command line); or prepare the tfds dataset "
                f"'{name}' on a machine with internet and copy it into the tfds data dir "
                f"(tfds_data_dir, --tfds-data-dir PATH)."
            )
        builder.download_and_prepare()
    return builder


def _tfds_pool(builder, split: str, *, image_size, resize, cache, name_key) -> tuple[_Pool, int, list[str]]:
    import tensorflow_datasets as tfds

    features = builder.info.features
    decoders = {key: tfds.decode.SkipDecoding() for key in ("image", "segmentation_mask") if key in features}
    source = builder.as_dataset(split=split, decoders=decoders, shuffle_files=False)
    total = int(builder.info.splits[split].num_examples)
    examples = source.enumerate().map(
        lambda i, ex: (
            i, decode_and_resize(ex["image"], image_size=image_size, resize=resize), tf.cast(ex["label"], tf.int32)
        ),
        num_parallel_calls=AUTOTUNE,
        deterministic=True,
    ).ignore_errors()
    check = None
    if cache is False:  # the pass only finds the undecodable images (decodes, does not resize)
        check = source.enumerate().map(
            lambda i, ex: (
                _once_decoded(i, ex["image"], image_size=image_size, resize=resize), tf.cast(ex["label"], tf.int32)
            ),
            num_parallel_calls=AUTOTUNE,
            deterministic=True,
        ).ignore_errors()
    key = f"tfds-{builder.name}-{builder.version}-{split}-{image_size}-{resize}-decoder{_DECODER_VERSION}"
    pool = _fill_pool(examples, cache=cache, key=key, total=total, what=f"tfds:{builder.name} ({split})",
                      check=check)
    kept = set(pool.indices.tolist())
    pool.skipped = [i for i in range(total) if i not in kept]
    names = []
    if pool.skipped:
        wanted = set(pool.skipped)
        for i, file_name in source.map(lambda ex: ex[name_key]).enumerate():
            if int(i) in wanted:
                names.append(f"{split}/{file_name.numpy().decode()}")
    return pool, total, names


def _load_tfds(
    name: str, *, tfds_data_dir, image_size, val_split, seed, resize, cache, with_test: bool, memory_limit
) -> ImageData:
    builder = _tfds_builder(name, tfds_data_dir)
    info = TFDS_SOURCES[name]
    splits = ["train"] + (["test"] if with_test and "test" in builder.info.splits else [])
    cache, cache_name = _resolve_cache(
        cache, images=sum(int(builder.info.splits[split].num_examples) for split in splits),
        image_size=image_size, memory_limit=memory_limit, name=name,
    )
    pool, found, skipped = _tfds_pool(
        builder, "train", image_size=image_size, resize=resize, cache=cache, name_key=info["name_key"]
    )
    test_pool = None
    if "test" in splits:
        test_pool, n_test, test_skipped = _tfds_pool(
            builder, "test", image_size=image_size, resize=resize, cache=cache, name_key=info["name_key"]
        )
        found += n_test
        skipped += test_skipped
    if skipped:
        logger.warning("Skipped %d undecodable tfds example(s): %s", len(skipped), skipped[:10])
    return _assemble(
        source=f"tfds:{name}",
        class_names=list(builder.info.features["label"].names),
        trainval=pool,
        test=test_pool,
        val_split=val_split,
        seed=seed,
        found=found,
        ignored=[],
        skipped_names=skipped,
        image_size=image_size,
        class_dirs=None,
        cache=cache_name,
    )


# ---------------------------------------------------------------------------
# Public dataset loaders.


def load_oxford_pets(
    data_dir: str | os.PathLike | None = None,
    *,
    image_size: int = 224,
    val_split: float = 0.2,
    seed: int = 0,
    resize: str = "stretch",
    cache: bool | str | os.PathLike = "auto",
    tfds_data_dir: str | os.PathLike | None = None,
    target: str = "breed",
    memory_limit: int | str | None = None,
) -> ImageData:
    """Loads the Oxford-IIIT Pet dataset (37 breeds, or cat/dog).

    With `data_dir=None` the data comes from tensorflow-datasets
    (`oxford_iiit_pet`, downloaded and prepared on first use; when it is not
    prepared and the network is unreachable, `DatasetUnavailableError` comes
    within seconds and says what to download). Its train split gives `train`
    and `val`, its test split `test`.

    With a `data_dir` it is a manually downloaded folder: `images/` and
    optionally `annotations/` with `list.txt`, `trainval.txt`, `test.txt`.
    With annotations, `trainval.txt` (else `list.txt`) gives `train`/`val` and
    `test.txt` gives `test`; images in none of the lists are ignored
    (counted). Without annotations every `<Breed>_<n>` image is used, the
    breed is the file-name prefix and a capitalised breed is a cat. Classes
    are in the official order (breeds sorted case-insensitively, as tfds).

    Args:
        data_dir: the Oxford-IIIT Pet folder, or `None` for tfds. Defaults to
            `None`.
        image_size: side of the square images. Defaults to `224`.
        val_split: fraction of each class held out for validation, in [0, 1).
            Defaults to `0.2`.
        seed: seed of the train/validation split. Defaults to `0`.
        resize: `"stretch"`, `"crop"` or `"pad"` (see `resize_image`).
            Defaults to `"stretch"`.
        cache: `"auto"`, `True` or `"memory"`, `False` or `"none"`, or the
            path prefix of a file cache (see `load_folder`). Defaults to
            `"auto"`.
        tfds_data_dir: the tensorflow-datasets data folder. Defaults to
            `None` (tfds' default, `$TFDS_DATA_DIR` or
            `~/tensorflow_datasets`).
        target: `"breed"` (37 classes) or `"species"` (`("cat", "dog")`;
            folder sources only). Defaults to `"breed"`.
        memory_limit: the memory budget of `cache="auto"` (see
            `load_folder`). Defaults to `None`.

    Returns:
        An `ImageData`.
    """
    cache, memory_limit = _check_loader_args(image_size, resize, val_split, cache, seed, memory_limit)
    _TARGET.check("target", target)
    if data_dir is None:
        if target != "breed":
            raise ValueError(
                "target='species' needs a data_dir (the tfds labels are breeds). "
                f"Received: target={target!r}, data_dir=None"
            )
        return _load_tfds(
            "oxford_iiit_pet",
            tfds_data_dir=tfds_data_dir,
            image_size=image_size,
            val_split=val_split,
            seed=seed,
            resize=resize,
            cache=cache,
            with_test=True,
            memory_limit=memory_limit,
        )
    return _load_oxford_folder(
        data_dir, image_size=image_size, val_split=val_split, seed=seed, resize=resize, cache=cache,
        target=target, memory_limit=memory_limit,
    )


def load_cats_vs_dogs(
    data_dir: str | os.PathLike | None = None,
    *,
    image_size: int = 224,
    val_split: float = 0.2,
    seed: int = 0,
    resize: str = "stretch",
    cache: bool | str | os.PathLike = "auto",
    tfds_data_dir: str | os.PathLike | None = None,
    memory_limit: int | str | None = None,
) -> ImageData:
    """Loads Cats vs Dogs.

    With `data_dir=None` the data comes from tensorflow-datasets
    (`cats_vs_dogs`; its only split, train, gives `train` and `val`). With a
    `data_dir` it is a class-per-folder tree (e.g. Kaggle's `PetImages/` with
    `Cat/` and `Dog/`), loaded by `load_folder`; the undecodable files of the
    real download are skipped and reported.

    Args:
        data_dir: the class-per-folder root, or `None` for tfds. Defaults to
            `None`.
        image_size: side of the square images. Defaults to `224`.
        val_split: fraction of each class held out for validation, in [0, 1).
            Defaults to `0.2`.
        seed: seed of the train/validation split. Defaults to `0`.
        resize: `"stretch"`, `"crop"` or `"pad"` (see `resize_image`).
            Defaults to `"stretch"`.
        cache: `"auto"`, `True` or `"memory"`, `False` or `"none"`, or the
            path prefix of a file cache (see `load_folder`). Defaults to
            `"auto"`.
        tfds_data_dir: the tensorflow-datasets data folder. Defaults to
            `None` (tfds' default).
        memory_limit: the memory budget of `cache="auto"` (see
            `load_folder`). Defaults to `None`.

    Returns:
        An `ImageData` with `test=None`.
    """
    cache, memory_limit = _check_loader_args(image_size, resize, val_split, cache, seed, memory_limit)
    if data_dir is None:
        return _load_tfds(
            "cats_vs_dogs",
            tfds_data_dir=tfds_data_dir,
            image_size=image_size,
            val_split=val_split,
            seed=seed,
            resize=resize,
            cache=cache,
            with_test=False,
            memory_limit=memory_limit,
        )
    return _load_folder(
        data_dir, image_size=image_size, val_split=val_split, seed=seed, resize=resize, cache=cache,
        memory_limit=memory_limit,
    )


def batch_dataset(
    ds: tf.data.Dataset,
    *,
    batch_size: int,
    shuffle: bool = False,
    seed: int | None = None,
    drop_remainder: bool = False,
) -> tf.data.Dataset:
    """Shuffles (again every epoch), batches and prefetches a split.

    Args:
        ds: an unbatched dataset, e.g. `ImageData.train`.
        batch_size: examples per batch.
        shuffle: shuffle the examples, differently every epoch. The buffer
            holds the whole split up to 10,000 examples and 256 MB (see
            `shuffle_buffer_size`). Defaults to `False`.
        seed: seed of the shuffle. Defaults to `None`.
        drop_remainder: drop the last, smaller batch. Defaults to `False`.

    Returns:
        The batched dataset.
    """
    _BATCH_SIZE.check("batch_size", batch_size)
    if shuffle:
        ds = ds.shuffle(shuffle_buffer_size(ds), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size, drop_remainder=drop_remainder).prefetch(AUTOTUNE)


def shuffle_buffer_size(ds: tf.data.Dataset) -> int:
    """The shuffle buffer `batch_dataset` gives `ds`, in examples.

    The whole split (1,000 examples when its size is unknown), at most
    10,000 examples and at most 256 MB of them by the static shapes and
    dtypes of its elements (about 1,700 uint8 images of 224 x 224; elements
    of unknown size are bounded by the count only).

    Args:
        ds: an unbatched dataset.

    Returns:
        An int >= 1.
    """
    size = int(ds.cardinality())
    buffer = min(size, _SHUFFLE_BUFFER_CAP) if size > 0 else 1000
    element = 0
    for spec in tf.nest.flatten(ds.element_spec):
        shape, dtype = getattr(spec, "shape", None), getattr(spec, "dtype", None)
        if shape is None or not shape.is_fully_defined() or dtype is None or dtype == tf.string:
            return buffer
        element += shape.num_elements() * dtype.size
    return max(1, min(buffer, _SHUFFLE_BUFFER_BYTES // max(element, 1)))
