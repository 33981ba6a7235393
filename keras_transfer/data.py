"""Image datasets as tf.data pipelines of RGB uint8 images and int32 labels.

Three sources:

- tensorflow-datasets `oxford_iiit_pet` and `cats_vs_dogs` (the default);
- a manually downloaded Oxford-IIIT Pet folder (`images/`, optionally
  `annotations/list.txt`, `trainval.txt`, `test.txt`);
- any class-per-folder tree (`root/<class>/**/<image>`).

Images are decoded by content (JPEG, PNG, GIF, BMP, whatever the extension
says), converted to RGB, resized to a square and cached as uint8 in one
parallel pass, which also finds the files that cannot be decoded (zero bytes,
truncated, not an image): they are skipped and counted in the `DataReport`, so
the count is known when a `load_*` function returns. The train/validation split
is then drawn, stratified by class, from a seed among the images that decoded.

Large JPEGs are decoded at 1/2, 1/4 or 1/8 scale by libjpeg's DCT scaling when
the reduced image keeps 1.5x the target side (saves part of the decoding, with
the same accuracy), and shrinking uses the area filter.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import numbers
import os
import re
import time
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from keras_transfer._downloads import DatasetUnavailableError, probe

logger = logging.getLogger(__name__)

AUTOTUNE = tf.data.AUTOTUNE
RESIZE_MODES = ("stretch", "crop", "pad")
# Files with these extensions (any case) are decoded; anything else in a data
# folder (Thumbs.db, .mat, README, ...) is counted as `ignored`. The extension
# only selects candidates: the format is always read from the content.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp")
MAX_LISTED_SKIPS = 1000
_SHUFFLE_BUFFER_CAP = 10_000

_OXFORD_NAME = re.compile(r"^(?P<breed>.+)_\d+$")

_TFDS_SOURCES = {
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
            names), at most `MAX_LISTED_SKIPS` of them.
        ignored: files deliberately not decoded: extensions not in
            `IMAGE_EXTENSIONS`, files outside class folders, Oxford images
            absent from the annotation lists or not named `<breed>_<n>`.
        per_class: `{class_name: {split: count}}`.
    """

    source: str
    found: int
    used: dict[str, int]
    skipped: int
    skipped_files: list[str]
    ignored: int
    per_class: dict[str, dict[str, int]]

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

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


# ---------------------------------------------------------------------------
# Decoding and resizing (graph functions, no Python in the tf.data map).


def decode_image(contents: tf.Tensor) -> tf.Tensor:
    """Decodes JPEG, PNG, GIF or BMP bytes, by content, to RGB uint8.

    Grayscale and CMYK become RGB, the alpha channel of RGBA is dropped, and
    an animated GIF gives its first frame.

    Args:
        contents: scalar string tensor, the bytes of an image file.

    Returns:
        uint8 tensor `[height, width, 3]`.

    Raises:
        tf.errors.InvalidArgumentError: when the bytes are not a decodable
            image (eagerly; inside tf.data the error reaches the pipeline).
    """
    image = tf.io.decode_image(contents, channels=3, expand_animations=False, dtype=tf.uint8)
    image.set_shape([None, None, 3])
    return image


def _check_resize_args(image_size, resize) -> None:
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 1:
        raise ValueError(f"Expected image_size to be a positive integer. Received: image_size={image_size!r}")
    if resize not in RESIZE_MODES:
        raise ValueError(f"Expected resize to be one of {RESIZE_MODES}. Received: resize={resize!r}")


# A JPEG is decoded at 1/r scale only when the reduced image still has 1.5x
# the target side: closer to 1x, the reduced IDCT followed by a small resize
# is measurably less accurate than a full decode (mean absolute error vs. a
# Lanczos resize of the full image, 41 large Oxford photos at 224: 2.8 at
# 1.0x, 1.8 at 1.5x, 1.8 for the full decode).
_DCT_MARGIN = 1.5


def _decode_for_size(contents: tf.Tensor, image_size: int, resize: str) -> tf.Tensor:
    """`decode_image`, but a large JPEG is decoded at a reduced scale.

    The largest libjpeg scale 1/r (r in 8, 4, 2) is chosen that keeps the side
    the resize maps to `image_size` (the shorter side for stretch and crop, the
    longer one for pad) at least `_DCT_MARGIN * image_size` pixels, so the
    resize that follows still shrinks.
    """

    def jpeg():
        shape = tf.io.extract_jpeg_shape(contents)
        sides = shape[:2]
        side = tf.reduce_max(sides) if resize == "pad" else tf.reduce_min(sides)
        side = tf.cast(side, tf.float32)

        def decode(ratio):
            return lambda: tf.io.decode_jpeg(contents, channels=3, ratio=ratio)

        image = tf.case(
            [(side >= ratio * _DCT_MARGIN * image_size, decode(ratio)) for ratio in (8, 4, 2)],
            default=decode(1),
            exclusive=False,
        )
        image.set_shape([None, None, 3])
        return image

    return tf.cond(tf.io.is_jpeg(contents), jpeg, lambda: decode_image(contents))


def _resize_to(image: tf.Tensor, size: tf.Tensor) -> tf.Tensor:
    """Resizes to `size` ([height, width]) with a filter fit for the scale.

    Shrinking uses the area filter (pixel averages; closest to a Lanczos
    resize and cheaper than anti-aliased bilinear), enlarging uses bilinear,
    and the rare mix of both uses anti-aliased bilinear.
    """
    shape = tf.shape(image)[:2]
    shrink = tf.reduce_all(shape >= size)
    enlarge = tf.reduce_all(shape <= size)
    return tf.case(
        [
            (shrink, lambda: tf.image.resize(image, size, method="area")),
            (enlarge, lambda: tf.image.resize(image, size, method="bilinear")),
        ],
        default=lambda: tf.image.resize(image, size, method="bilinear", antialias=True),
        exclusive=False,
    )


def _to_uint8(image: tf.Tensor) -> tf.Tensor:
    return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


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
    _check_resize_args(image_size, resize)
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


def _decode_and_resize(contents: tf.Tensor, image_size: int, resize: str) -> tf.Tensor:
    return resize_image(_decode_for_size(contents, image_size, resize), image_size=image_size, resize=resize)


def _decoded_images(
    paths: Sequence[str], *, image_size: int, resize: str
) -> tf.data.Dataset:
    """`(index, image)` for every path that decodes, in path order."""
    indices = tf.range(len(paths), dtype=tf.int64)
    files = tf.data.Dataset.from_tensor_slices((indices, tf.constant(list(paths), tf.string)))
    return files.map(
        lambda i, path: (i, _decode_and_resize(tf.io.read_file(path), image_size, resize)),
        num_parallel_calls=AUTOTUNE,
        deterministic=True,
    ).ignore_errors()


def _why_undecodable(path: str) -> str:
    """The error one skipped file gives, for the log."""
    try:
        decode_image(tf.io.read_file(path))
    except (tf.errors.OpError, ValueError) as error:
        message = getattr(error, "message", None) or str(error)
        # Drop TF's "{{function_node ...}}" prefix and " [Op:...]" suffix.
        message = re.sub(r"\{\{[^}]*\}\}|\[Op:.*$", "", message, flags=re.S).strip()
        return message or type(error).__name__
    return "decodes when read alone"  # e.g. it changed on disk meanwhile


def _log_skips(skipped: Sequence[str], *, root: str | None) -> None:
    if not skipped:
        return
    shown = []
    for name in skipped[:10]:
        reason = _why_undecodable(os.path.join(root, name) if root else name)
        shown.append(f"  {name}: {reason}")
    more = f"\n  ... and {len(skipped) - 10} more" if len(skipped) > 10 else ""
    logger.warning(
        "Skipped %d file(s) that could not be decoded as images:\n%s%s",
        len(skipped), "\n".join(shown), more,
    )


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
    _check_resize_args(image_size, resize)
    paths = [os.fspath(p) for p in paths]
    if not paths:
        return np.zeros((0, image_size, image_size, 3), np.uint8), [], []
    kept_indices, batches = [], []
    for indices, images in _decoded_images(paths, image_size=image_size, resize=resize).batch(256):
        kept_indices.extend(indices.numpy().tolist())
        batches.append(images.numpy())
    images = np.concatenate(batches) if batches else np.zeros((0, image_size, image_size, 3), np.uint8)
    kept_set = set(kept_indices)
    kept = [paths[i] for i in kept_indices]
    skipped = [p for i, p in enumerate(paths) if i not in kept_set]
    _log_skips(skipped, root=None)
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
    _check_val_split(val_split)
    _check_seed(seed)
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


def _check_val_split(val_split) -> None:
    if isinstance(val_split, bool) or not isinstance(val_split, numbers.Real) or not 0.0 <= val_split < 1.0:
        raise ValueError(f"Expected 0 <= val_split < 1. Received: val_split={val_split!r}")


def _check_seed(seed) -> None:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"Expected seed to be a non-negative integer. Received: seed={seed!r}")


# ---------------------------------------------------------------------------
# Pools: every image of a split group decoded once into the uint8 cache.


@dataclasses.dataclass
class _Pool:
    """Decoded examples of one split group (train+val, or test)."""

    dataset: tf.data.Dataset  # (index int64, image uint8, label int32), cached
    indices: np.ndarray  # indices of the examples that decoded, in order
    labels: np.ndarray  # their labels
    skipped: list[int]  # indices of the examples that did not decode


def _cache(ds: tf.data.Dataset, cache: bool | str | os.PathLike, key: str) -> tf.data.Dataset:
    if cache is True:
        return ds.cache()
    if not isinstance(cache, bool):
        # The key names the exact inputs, so a file cache left by another run
        # is only reused for the same files, size and resize mode.
        filename = f"{os.fspath(cache)}-{key}"
        os.makedirs(os.path.dirname(os.path.abspath(filename)), exist_ok=True)
        return ds.cache(filename)
    return ds


def _check_cache(cache) -> None:
    if not (isinstance(cache, bool) or (isinstance(cache, (str, os.PathLike)) and os.fspath(cache))):
        raise ValueError(
            "Expected cache to be True (memory), False (none) or a file path prefix. "
            f"Received: cache={cache!r}"
        )


def _fill_pool(examples: tf.data.Dataset, *, cache, key: str) -> _Pool:
    """Runs the decode pass of `examples` ((index, image, label), errors
    ignored) through the cache and records which indices survived."""
    pool = _cache(examples, cache, key)
    indices, labels = [], []
    # Only indices and labels come back to Python; the images stay in the cache.
    for i, label in pool.map(lambda i, image, label: (i, label)).batch(4096):
        indices.append(i.numpy())
        labels.append(label.numpy())
    indices = np.concatenate(indices) if indices else np.zeros(0, np.int64)
    labels = np.concatenate(labels) if labels else np.zeros(0, np.int32)
    return _Pool(pool, indices, labels, skipped=[])


def _file_pool(
    paths: Sequence[str], labels: Sequence[int], *, image_size: int, resize: str, cache, tag: str
) -> _Pool:
    labels_t = tf.constant(np.asarray(labels, np.int32))
    examples = _decoded_images(paths, image_size=image_size, resize=resize).map(
        lambda i, image: (i, image, tf.gather(labels_t, i))
    )
    key = "" if isinstance(cache, bool) else _cache_key(tag, image_size, resize, paths)
    pool = _fill_pool(examples, cache=cache, key=key)
    kept = set(pool.indices.tolist())
    pool.skipped = [i for i in range(len(paths)) if i not in kept]
    return pool


def _cache_key(tag: str, image_size: int, resize: str, paths: Sequence[str]) -> str:
    digest = hashlib.sha1(f"{tag}|{image_size}|{resize}".encode())
    for path in paths:
        try:
            stat = os.stat(path)
            digest.update(f"|{path}|{stat.st_size}|{stat.st_mtime_ns}".encode())
        except OSError:
            digest.update(f"|{path}|missing".encode())
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
    ignored: int,
    skipped_names: list[str],
    image_size: int,
    empty_hint: str,
) -> ImageData:
    counts = np.bincount(trainval.labels, minlength=len(class_names))
    empty = [name for name, n in zip(class_names, counts) if n == 0]
    if empty:
        raise ValueError(
            f"{source}: no image of class(es) {empty} could be decoded{empty_hint}. "
            f"{len(skipped_names)} file(s) were skipped as undecodable, e.g. {skipped_names[:5]}."
        )
    train_pos, val_pos = stratified_split(trainval.labels, val_split=val_split, seed=seed)
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
        skipped_files=skipped_names[:MAX_LISTED_SKIPS],
        ignored=ignored,
        per_class=per_class,
    )
    logger.info(
        "%s: %d found, used %s, %d skipped (undecodable), %d ignored",
        source, found, used, report.skipped, ignored,
    )
    return ImageData(
        train=train,
        val=val,
        test=test_ds,
        class_names=tuple(class_names),
        image_size=image_size,
        report=report,
    )


# ---------------------------------------------------------------------------
# Folder sources.


def _check_common(image_size, resize, val_split, cache, seed=0) -> None:
    _check_resize_args(image_size, resize)
    _check_val_split(val_split)
    _check_seed(seed)
    _check_cache(cache)


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _check_dir(data_dir, expected: str) -> str:
    if data_dir is None:
        raise ValueError(f"Expected {expected}. Received: data_dir=None")
    path = os.fspath(data_dir)
    if not os.path.isdir(path):
        what = "is not a folder" if os.path.exists(path) else "does not exist"
        raise ValueError(f"data_dir {what}. Expected {expected}. Received: data_dir={path!r}")
    return os.path.abspath(path)


_FOLDER_LAYOUT = "a folder with one subfolder of images per class (root/<class>/<image>)"


def load_folder(
    data_dir: str | os.PathLike,
    *,
    image_size: int = 224,
    val_split: float = 0.2,
    seed: int = 0,
    resize: str = "stretch",
    cache: bool | str | os.PathLike = True,
) -> ImageData:
    """Loads a class-per-folder tree of images.

    Class names are the sorted names of the subfolders of `data_dir`; each
    class folder is searched recursively. Hidden files and folders, files
    outside class folders and files whose extension is not in
    `IMAGE_EXTENSIONS` are ignored (counted in the report). Files that cannot
    be decoded are skipped (counted and listed). There is no test split.

    Args:
        data_dir: the root folder.
        image_size: side of the square images. Defaults to `224`.
        val_split: fraction of each class held out for validation, in [0, 1).
            Defaults to `0.2`.
        seed: seed of the train/validation split. Defaults to `0`.
        resize: `"stretch"`, `"crop"` or `"pad"` (see `resize_image`).
            Defaults to `"stretch"`.
        cache: `True` caches the decoded images in memory, a string is a
            file path prefix for a tf.data file cache, `False` decodes every
            epoch. Defaults to `True`.

    Returns:
        An `ImageData` with `train`, `val` (`None` when `val_split=0`) and
        `test=None`.
    """
    _check_common(image_size, resize, val_split, cache, seed)
    root = _check_dir(data_dir, _FOLDER_LAYOUT)
    entries = sorted(e for e in os.listdir(root) if not _is_hidden(e))
    class_names = [e for e in entries if os.path.isdir(os.path.join(root, e))]
    ignored = len(entries) - len(class_names)  # files beside the class folders
    if not class_names:
        raise ValueError(f"Found no class subfolders in {root}. Expected {_FOLDER_LAYOUT}.")
    paths, labels = [], []
    for label, name in enumerate(class_names):
        n_images = 0
        for folder, dirs, files in os.walk(os.path.join(root, name), followlinks=True):
            dirs[:] = sorted(d for d in dirs if not _is_hidden(d))
            for file in sorted(files):
                if _is_hidden(file):
                    continue
                if not _is_image_name(file):
                    ignored += 1
                    continue
                paths.append(os.path.join(folder, file))
                labels.append(label)
                n_images += 1
        if n_images == 0:
            raise ValueError(
                f"Class folder {os.path.join(root, name)!r} contains no image files "
                f"(extensions {IMAGE_EXTENSIONS}). Expected {_FOLDER_LAYOUT}."
            )
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
    )


def _load_files(
    *, source, root, class_names, trainval, test, ignored, image_size, val_split, seed, resize, cache
) -> ImageData:
    paths, labels = trainval
    found = len(paths) + (len(test[0]) if test else 0) + ignored
    if not paths:
        raise ValueError(f"{source}: found no image files to train on.")
    started = time.perf_counter()
    pool = _file_pool(paths, labels, image_size=image_size, resize=resize, cache=cache, tag="trainval")
    skipped = [os.path.relpath(paths[i], root) for i in pool.skipped]
    test_pool = None
    if test:
        test_pool = _file_pool(*test, image_size=image_size, resize=resize, cache=cache, tag="test")
        skipped += [os.path.relpath(test[0][i], root) for i in test_pool.skipped]
    logger.info("Decoded %s in %.1f s", source, time.perf_counter() - started)
    _log_skips(skipped, root=root)
    return _assemble(
        source=source,
        class_names=class_names,
        trainval=pool,
        test=test_pool,
        val_split=val_split,
        seed=seed,
        found=found,
        ignored=ignored,
        skipped_names=skipped,
        image_size=image_size,
        empty_hint=" (every file of the class was skipped)",
    )


def _oxford_classes(breeds: Sequence[str]) -> list[str]:
    # The official class ids (and tfds' label names) are the breeds in
    # case-insensitive alphabetical order.
    return sorted(set(breeds), key=lambda b: (b.lower(), b))


def _read_annotations(path: str) -> dict[str, int]:
    """`{image name: species (1 cat, 2 dog)}` of an Oxford annotation list."""
    entries = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            fields = line.split()
            if len(fields) < 3:
                raise ValueError(
                    f"{path}:{number}: expected 'Image CLASS-ID SPECIES BREED-ID'. Received: {line!r}"
                )
            entries[fields[0]] = int(fields[2])
    return entries


def _load_oxford_folder(
    data_dir, *, image_size, val_split, seed, resize, cache, target
) -> ImageData:
    layout = (
        "an Oxford-IIIT Pet folder: images/ with the photos (<Breed>_<n>.jpg, capitalised breed = "
        "cat), optionally annotations/ with list.txt, trainval.txt, test.txt"
    )
    root = _check_dir(data_dir, layout)
    images_dir = os.path.join(root, "images")
    if not os.path.isdir(images_dir):
        raise ValueError(f"Found no images/ folder in {root}. Expected {layout}.")
    ann_dir = os.path.join(root, "annotations")
    lists = {
        name: _read_annotations(os.path.join(ann_dir, f"{name}.txt"))
        for name in ("list", "trainval", "test")
        if os.path.isfile(os.path.join(ann_dir, f"{name}.txt"))
    }
    files = sorted(f for f in os.listdir(images_dir) if not _is_hidden(f))
    ignored = 0
    candidates: list[tuple[str, str, str]] = []  # (stem, breed, path)
    for file in files:
        stem = os.path.splitext(file)[0]
        match = _OXFORD_NAME.match(stem)
        if not _is_image_name(file) or not match or not os.path.isfile(os.path.join(images_dir, file)):
            ignored += 1
            continue
        candidates.append((stem, match["breed"], os.path.join(images_dir, file)))
    if not candidates:
        raise ValueError(f"Found no <Breed>_<n> image files in {images_dir}. Expected {layout}.")

    if "test" in lists and ("trainval" in lists or "list" in lists):
        test_names = set(lists["test"])
        trainval_names = set(lists["trainval"]) if "trainval" in lists else set(lists["list"]) - test_names
    elif lists:
        test_names = set()
        trainval_names = set(lists.get("trainval") or lists.get("list") or lists["test"])
    else:
        test_names, trainval_names = set(), None  # no annotations: every image
    species_of = {}
    for entries in lists.values():
        species_of.update(entries)

    groups: dict[str, list[tuple[str, str, str]]] = {"trainval": [], "test": []}
    for stem, breed, path in candidates:
        if stem in test_names:
            groups["test"].append((stem, breed, path))
        elif trainval_names is None or stem in trainval_names:
            groups["trainval"].append((stem, breed, path))
        else:
            ignored += 1  # not in the annotation lists
    if not groups["trainval"]:
        raise ValueError(f"None of the images in {images_dir} is in the train/validation annotation list.")

    def species(stem: str, breed: str) -> str:
        if stem in species_of:
            return "cat" if species_of[stem] == 1 else "dog"
        return "cat" if breed[:1].isupper() else "dog"

    used = groups["trainval"] + groups["test"]
    if target == "species":
        class_names = ["cat", "dog"]
        label_of = {stem: class_names.index(species(stem, breed)) for stem, breed, _ in used}
    else:
        class_names = _oxford_classes([breed for _, breed, _ in used])
        index = {name: i for i, name in enumerate(class_names)}
        label_of = {stem: index[breed] for stem, breed, _ in used}

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
    )


# ---------------------------------------------------------------------------
# tensorflow-datasets sources.


def _tfds_builder(name: str, tfds_data_dir):
    """The tfds builder of `name`, prepared; fails fast when offline."""
    import tensorflow_datasets as tfds

    info = _TFDS_SOURCES[name]
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
        lambda i, ex: (i, _decode_and_resize(ex["image"], image_size, resize), tf.cast(ex["label"], tf.int32)),
        num_parallel_calls=AUTOTUNE,
        deterministic=True,
    ).ignore_errors()
    key = f"tfds-{builder.name}-{builder.version}-{split}-{image_size}-{resize}"
    pool = _fill_pool(examples, cache=cache, key=key)
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
    name: str, *, tfds_data_dir, image_size, val_split, seed, resize, cache, with_test: bool
) -> ImageData:
    builder = _tfds_builder(name, tfds_data_dir)
    info = _TFDS_SOURCES[name]
    pool, found, skipped = _tfds_pool(
        builder, "train", image_size=image_size, resize=resize, cache=cache, name_key=info["name_key"]
    )
    test_pool = None
    if with_test and "test" in builder.info.splits:
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
        ignored=0,
        skipped_names=skipped,
        image_size=image_size,
        empty_hint="",
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
    cache: bool | str | os.PathLike = True,
    tfds_data_dir: str | os.PathLike | None = None,
    target: str = "breed",
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
        cache: `True` (memory), a file path prefix, or `False` (see
            `load_folder`). Defaults to `True`.
        tfds_data_dir: the tensorflow-datasets data folder. Defaults to
            `None` (tfds' default, `$TFDS_DATA_DIR` or
            `~/tensorflow_datasets`).
        target: `"breed"` (37 classes) or `"species"` (`("cat", "dog")`;
            folder sources only). Defaults to `"breed"`.

    Returns:
        An `ImageData`.
    """
    _check_common(image_size, resize, val_split, cache, seed)
    if target not in ("breed", "species"):
        raise ValueError(f"Expected target to be 'breed' or 'species'. Received: target={target!r}")
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
        )
    return _load_oxford_folder(
        data_dir, image_size=image_size, val_split=val_split, seed=seed, resize=resize, cache=cache,
        target=target,
    )


def load_cats_vs_dogs(
    data_dir: str | os.PathLike | None = None,
    *,
    image_size: int = 224,
    val_split: float = 0.2,
    seed: int = 0,
    resize: str = "stretch",
    cache: bool | str | os.PathLike = True,
    tfds_data_dir: str | os.PathLike | None = None,
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
        cache: `True` (memory), a file path prefix, or `False` (see
            `load_folder`). Defaults to `True`.
        tfds_data_dir: the tensorflow-datasets data folder. Defaults to
            `None` (tfds' default).

    Returns:
        An `ImageData` with `test=None`.
    """
    _check_common(image_size, resize, val_split, cache, seed)
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
        )
    return load_folder(
        data_dir, image_size=image_size, val_split=val_split, seed=seed, resize=resize, cache=cache
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
            holds the whole split up to 10,000 examples. Defaults to `False`.
        seed: seed of the shuffle. Defaults to `None`.
        drop_remainder: drop the last, smaller batch. Defaults to `False`.

    Returns:
        The batched dataset.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"Expected batch_size to be a positive integer. Received: batch_size={batch_size!r}")
    if shuffle:
        size = int(ds.cardinality())
        buffer = min(size, _SHUFFLE_BUFFER_CAP) if size > 0 else 1000
        ds = ds.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size, drop_remainder=drop_remainder).prefetch(AUTOTUNE)
