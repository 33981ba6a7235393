"""Classifying new photos with a trained classifier: load, predict, score.

- `load_images(paths_or_dir, image_size=...)` decodes image files into one
  uint8 array at a model's input size, skipping (and listing) the files that
  cannot be decoded, as the dataset loaders do.
- `predict(model, images_or_dir, top_k=...)` streams files through `tf.data`
  in batches (a folder of thousands is never decoded into memory at once)
  and returns `Predictions`: logits, probabilities and the top-k class names
  and probabilities of every decoded image.
- `score(model, data_dir)` does the same on a class-per-folder tree
  (`data_dir/<class>/**/<image>`, as `keras_transfer.data.load_folder`
  reads it) and keeps the labels, so accuracy, top-k accuracy and the
  confusion matrix come with the predictions (`Predictions.metrics()`).

Images are decoded exactly as for training (`keras_transfer.data`: by
content, RGB, large JPEGs decoded at a reduced DCT scale, then resized to the
model's square input), so a prediction here equals `model.predict` on the
images a loader gives, and the SavedModel of `keras_transfer.export` decodes
the same way.

A folder is searched recursively (hidden files and folders excepted), in the
order `load_folder` uses: each folder's files sorted by name, then its
subfolders sorted by name. Files whose extension is not in
`keras_transfer.data.IMAGE_EXTENSIONS` are not decoded; they are returned as
`ignored`.
"""

from __future__ import annotations

import csv
import dataclasses
import os
from collections.abc import Callable, Sequence
from functools import cached_property

import keras
import numpy as np
import tensorflow as tf

from keras_transfer import classes as classes_lib
from keras_transfer import data as data_lib
from keras_transfer import files
from keras_transfer import models as models_lib
from keras_transfer.evaluation import Evaluation
from keras_transfer.run_folder import METRICS_FILE
from keras_transfer.settings import Int

_BATCH_SIZE = Int(min=1)
DEFAULT_TOP_K = 5
_FOLDER = "a folder of image files (searched recursively)"


@dataclasses.dataclass(frozen=True, eq=False)
class LoadedImages:
    """Decoded image files at one square size.

    Attributes:
        images: uint8 `(len(paths), image_size, image_size, 3)`, RGB.
        paths: the files that decoded, in the order of `images`.
        skipped: the files that could not be read or decoded.
        ignored: `(path relative to the folder, why)` of the files of a
            folder that were not decoded on purpose (not an image
            extension). Defaults to `()`.
    """

    images: np.ndarray
    paths: list[str]
    skipped: list[str]
    ignored: Sequence[tuple[str, str]] = ()


def list_images(folder: str | os.PathLike) -> tuple[list[str], list[tuple[str, str]]]:
    """The image files under `folder`, recursively, and the other files.

    Args:
        folder: the folder.

    Returns:
        `(paths, ignored)`: the image files (extensions in
        `keras_transfer.data.IMAGE_EXTENSIONS`, any case) as `folder`-joined
        paths in the order described in the module docstring, and
        `(path relative to folder, why)` of the other files. Hidden files and
        folders are left out of both.

    Raises:
        FileNotFoundError / NotADirectoryError: `folder` does not exist / is
            a file.
    """
    data_lib.check_dir(folder, _FOLDER)
    # `class_files(root, "")` walks `root` itself, exactly as load_folder
    # walks one class folder.
    return data_lib.class_files(os.fspath(folder), "")


def _resolve_paths(paths_or_dir) -> tuple[list[str], list[tuple[str, str]]]:
    """`(paths, ignored)` of a folder, one file or a sequence of files."""
    if isinstance(paths_or_dir, (str, os.PathLike)):
        path = os.fspath(paths_or_dir)
        if os.path.isdir(path):
            paths, ignored = list_images(path)
            if not paths:
                others = [p for p, _ in ignored[:3]]
                extra = f"; it holds {len(ignored)} other file(s), e.g. {others}" if ignored else ""
                raise ValueError(
                    f"Found no image files (extensions {data_lib.IMAGE_EXTENSIONS}) in {path!r}{extra}."
                )
            return paths, ignored
        paths_or_dir = [path]
    if not isinstance(paths_or_dir, Sequence) or isinstance(paths_or_dir, bytes):
        raise TypeError(
            "Expected a folder, an image file or a sequence of image files. "
            f"Received: {type(paths_or_dir).__name__}"
        )
    paths = []
    for item in paths_or_dir:
        if not isinstance(item, (str, os.PathLike)):
            raise TypeError(f"Expected image file paths. Received: {item!r}")
        path = os.fspath(item)
        # A missing file is a typo, not a bad image: say so instead of skipping it.
        if not os.path.isfile(path):
            raise FileNotFoundError(f"No image file at {path!r}.")
        paths.append(path)
    if not paths:
        raise ValueError("Expected at least one image file. Received: an empty sequence")
    return paths, []


def load_images(
    paths_or_dir: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    image_size: int,
    resize: str = "stretch",
) -> LoadedImages:
    """Decodes image files, or the images of a folder, at one square size.

    Files that cannot be decoded (zero bytes, truncated, not an image) are
    skipped and listed, with a logged warning that gives the reason, as the
    dataset loaders do. All images are held in memory: to classify a large
    folder, pass it to `predict` instead, which streams it.

    Args:
        paths_or_dir: a folder (searched recursively, see the module
            docstring), one image file, or a sequence of image files.
        image_size: side of the output squares (a classifier's
            `keras_transfer.models.image_size_of(model)`).
        resize: `"stretch"`, `"crop"` or `"pad"` (see
            `keras_transfer.data.resize_image`); use the resize the model was
            trained with. Defaults to `"stretch"`.

    Returns:
        A `LoadedImages`.

    Raises:
        FileNotFoundError: a folder or listed file that does not exist.
        ValueError: a bad `image_size` or `resize`, a folder without image
            files, an empty sequence.
    """
    data_lib.check_resize_args(image_size, resize)
    paths, ignored = _resolve_paths(paths_or_dir)
    images, kept, skipped = data_lib.load_image_files(paths, image_size=image_size, resize=resize)
    return LoadedImages(images=images, paths=kept, skipped=skipped, ignored=ignored)


@dataclasses.dataclass(frozen=True, eq=False)
class Predictions:
    """A classifier's outputs on a set of images, with the top-k classes.

    Attributes:
        logits: float32 `(n, num_classes)`, one row per decoded image.
        class_names: the model's class names, in output order.
        top_k: how many classes `top_k_*` and `to_rows` give per image.
        paths: the files of the rows, or `None` for images given as an
            array. Defaults to `None`.
        skipped: the files that could not be decoded (no row). Defaults to
            `()`.
        ignored: `(path, why)` of the files of a folder not decoded on
            purpose. Defaults to `()`.
        labels: int64 `(n,)` true classes (indices into `class_names`), for
            images of a class-per-folder tree (`score`), else `None`.
            Defaults to `None`.
    """

    logits: np.ndarray
    class_names: tuple[str, ...]
    top_k: int
    paths: list[str] | None = None
    skipped: Sequence[str] = ()
    ignored: Sequence[tuple[str, str]] = ()
    labels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.logits)

    @cached_property
    def probabilities(self) -> np.ndarray:
        """float32 `(n, num_classes)`: the softmax of the logits."""
        return np.asarray(keras.ops.softmax(self.logits, axis=-1), dtype=np.float32)

    @cached_property
    def top_k_indices(self) -> np.ndarray:
        """int64 `(n, top_k)`: classes by decreasing logit (ties: lower index first)."""
        # A stable sort, as Evaluation.top_k_accuracy, so both agree on ties.
        return np.argsort(-self.logits, axis=-1, kind="stable")[:, : self.top_k].astype(np.int64)

    @property
    def top_k_probabilities(self) -> np.ndarray:
        """float32 `(n, top_k)`: the probabilities of `top_k_indices`."""
        return np.take_along_axis(self.probabilities, self.top_k_indices, axis=-1)

    @property
    def top_k_names(self) -> list[list[str]]:
        """The class names of `top_k_indices`."""
        return [[self.class_names[j] for j in row] for row in self.top_k_indices.tolist()]

    @cached_property
    def evaluation(self) -> Evaluation:
        """The `Evaluation` (accuracy, confusion, ...) of images with labels.

        Raises:
            ValueError: when the images have no labels (use `score`).
        """
        if self.labels is None:
            raise ValueError(
                "These predictions have no labels: score a class-per-folder tree with "
                "keras_transfer.inference.score (or --labels-from-folders)."
            )
        return Evaluation(logits=self.logits, labels=self.labels, class_names=tuple(self.class_names))

    def metrics(self) -> dict:
        """Accuracy, top-k accuracy, per-class accuracy and confusion matrix of labelled images.

        The confusion matrix (rows: true classes, columns: predicted) is
        restricted to the classes that occur as a label or a prediction,
        listed in `confusion_matrix["classes"]` in model order, so a
        1000-class ImageNet model scored on three folders gives a small matrix.

        Raises:
            ValueError: when the images have no labels.
        """
        evaluation = self.evaluation
        present = np.union1d(evaluation.labels, evaluation.predictions).astype(np.int64)
        return {
            "count": len(self),
            "accuracy": evaluation.accuracy,
            "top_k": self.top_k,
            # Top-k of all the classes is 1 whatever the model: not reported.
            "top_k_accuracy": (evaluation.top_k_accuracy(self.top_k)
                               if self.top_k < len(self.class_names) else None),
            "per_class_accuracy": {
                name: value for name, value in evaluation.per_class_accuracy.items() if value is not None
            },
            "confusion_matrix": {
                "classes": [self.class_names[i] for i in present],
                "matrix": evaluation.confusion[np.ix_(present, present)].tolist(),
            },
        }

    def to_rows(self) -> list[dict]:
        """One dict per image: `path` (or `index`), `class_1`, `probability_1`, ... `class_<k>`, `probability_<k>`.

        Images with labels also get `label` (the true class name) and
        `correct` (whether `class_1` is it).
        """
        rows = []
        names, probabilities = self.top_k_names, self.top_k_probabilities
        for i in range(len(self)):
            row: dict = {"path": self.paths[i]} if self.paths is not None else {"index": i}
            for rank in range(self.top_k):
                row[f"class_{rank + 1}"] = names[i][rank]
                row[f"probability_{rank + 1}"] = float(probabilities[i, rank])
            if self.labels is not None:
                row["label"] = self.class_names[int(self.labels[i])]
                row["correct"] = bool(self.top_k_indices[i, 0] == self.labels[i])
            rows.append(row)
        return rows

    def write_csv(self, path: str | os.PathLike) -> str:
        """Writes `to_rows()` as CSV with a header, atomically; returns the path."""
        rows = self.to_rows()
        fields = list(rows[0]) if rows else ["path"]
        with files.atomic_path(path, suffix=".csv") as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            for row in rows:
                writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        return os.fspath(path)


def _model_and_names(model, class_names) -> tuple[keras.Model, tuple[str, ...]]:
    """The model (loaded from a `.keras` path) and its class names, checked."""
    path = None
    if isinstance(model, (str, os.PathLike)):
        path = os.fspath(model)
        model = models_lib.load_model(path)
    if not isinstance(model, keras.Model):
        raise TypeError(f"Expected a keras.Model or the path of a .keras file. Received: model={model!r}")
    # Checks: one (batch, num_classes) output; a final softmax is dropped, so
    # `Predictions.logits` are logits and `probabilities` not a second softmax.
    model = models_lib.as_logits_model(model)
    num_classes = int(model.outputs[0].shape[-1])
    if class_names is None:
        return model, tuple(classes_lib.class_names_for_model(path, num_classes))
    if isinstance(class_names, str) or len(class_names) != num_classes:
        raise ValueError(
            f"Expected class_names to be a sequence of {num_classes} names (the model's outputs). "
            f"Received: class_names={class_names!r}"
        )
    return model, tuple(str(name) for name in class_names)


def _prepare(model, class_names, *, top_k, batch_size, resize) -> tuple[keras.Model, tuple[str, ...], int]:
    """`(model, class names, top_k)` with every argument checked before any image is read."""
    model, names = _model_and_names(model, class_names)
    top_k = check_top_k(top_k, len(names))
    _BATCH_SIZE.check("batch_size", batch_size)
    data_lib.check_resize_args(models_lib.image_size_of(model), resize)
    return model, names, top_k


def check_top_k(top_k, num_classes: int, *, default: int = DEFAULT_TOP_K) -> int:
    """`top_k` when it is an int from 1 to `num_classes`, else a `ValueError` saying so.

    An explicit value above the number of classes is an error, not clipped:
    the caller asked for more classes than there are. `None` means
    `min(default, num_classes)`, so a default fits a 2-class model too.
    """
    if top_k is None:
        return min(default, num_classes)
    if not Int(min=1, max=num_classes).accepts(top_k):
        raise ValueError(
            f"Expected top_k to be an int from 1 to {num_classes} (the model's number of classes). "
            f"Received: top_k={top_k!r}"
        )
    return int(top_k)


def _progress_callback(progress, total: int) -> Callable[[int], None]:
    """`update(done)`: a Keras progress bar, the caller's `progress(done, total)`, or nothing."""
    if callable(progress):
        return lambda done: progress(done, total)
    if progress:
        bar = keras.utils.Progbar(total, unit_name="image")
        return bar.update
    return lambda done: None


def _run_batches(model: keras.Model, batches: tf.data.Dataset, total: int, progress) -> tuple[np.ndarray, np.ndarray]:
    """`(logits, indices)` of `(index, image)` batches; indices of the images that decoded."""
    update = _progress_callback(progress, total)
    logits, indices = [], []
    done = 0
    for index, images in batches:
        logits.append(np.asarray(model.predict_on_batch(images), dtype=np.float32))
        indices.append(index.numpy())
        done = int(indices[-1][-1]) + 1  # files read so far, skipped ones included
        update(done)
    if done < total:  # the last files were skipped
        update(total)
    num_classes = int(model.outputs[0].shape[-1])
    if not logits:
        return np.zeros((0, num_classes), np.float32), np.zeros(0, np.int64)
    return np.concatenate(logits), np.concatenate(indices)


def _stream_files(model, paths: Sequence[str], *, resize: str, batch_size: int, progress):
    """`(logits, kept indices)` of image files, decoded and classified batch by batch."""
    size = models_lib.image_size_of(model)
    decoded = data_lib.decoded_images(paths, image_size=size, resize=resize)
    batches = decoded.map(lambda i, image: (i, tf.cast(image, tf.float32))).batch(batch_size)
    return _run_batches(model, batches.prefetch(data_lib.AUTOTUNE), len(paths), progress)


def _array_logits(model, images, *, batch_size: int, progress) -> np.ndarray:
    """Logits of images already at the model's input size."""
    size = models_lib.image_size_of(model)
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1:] != (size, size, 3):
        raise ValueError(
            f"Expected images of shape (n, {size}, {size}, 3), the model's input, or image files. "
            f"Received: an array of shape {images.shape}. keras_transfer.inference.load_images decodes and "
            "resizes files to that size."
        )
    indices = np.arange(len(images), dtype=np.int64)
    batches = tf.data.Dataset.from_tensor_slices((indices, images.astype(np.float32))).batch(batch_size)
    return _run_batches(model, batches, len(images), progress)[0]


def predict(
    model: keras.Model | str | os.PathLike,
    images_or_dir,
    *,
    class_names: Sequence[str] | None = None,
    top_k: int | None = None,
    batch_size: int = 32,
    resize: str = "stretch",
    progress: bool | Callable[[int, int], None] = False,
) -> Predictions:
    """Classifies images: logits, probabilities and top-k classes of each.

    Files are decoded, resized and classified `batch_size` at a time through
    `tf.data` (never all in memory at once); undecodable files are skipped
    and listed in `Predictions.skipped` (a warning gives the reasons).

    Args:
        model: a classifier from RGB [0, 255] images to logits (any model
            built by this package; a final softmax layer is dropped, see
            `keras_transfer.models.as_logits_model`), or the path of a saved
            `.keras` model.
        images_or_dir: a folder (searched recursively, see the module
            docstring), an image file, a sequence of image files, a
            `LoadedImages`, or an array `(n, size, size, 3)` of pixels in
            [0, 255] at the model's input size.
        class_names: the model's class names. Defaults to `classes.json`
            beside a `model` given as a path, else the ImageNet names for a
            1000-class model, else the class indices as strings
            (`keras_transfer.classes.class_names_for_model`).
        top_k: classes kept per image, from 1 to the number of classes (a
            larger value is an error, not clipped). Defaults to `None`
            (5, or the number of classes if smaller).
        batch_size: images decoded and classified at once. Defaults to `32`.
        resize: `"stretch"`, `"crop"` or `"pad"`, how files become the
            model's squares; use the one the model was trained with
            (`resize_of_run`). Ignored for arrays. Defaults to `"stretch"`.
        progress: `True` for a Keras progress bar, a callable
            `(done, total)` called after each batch, or `False`. Defaults to
            `False`.

    Returns:
        `Predictions` (no labels; see `score`).

    Raises:
        FileNotFoundError: a missing model, folder or listed image file.
        ValueError: a bad argument (naming it), a folder without image
            files, an array not at the model's input size.
    """
    model, names, top_k = _prepare(model, class_names, top_k=top_k, batch_size=batch_size, resize=resize)
    if isinstance(images_or_dir, LoadedImages):
        logits = _array_logits(model, images_or_dir.images, batch_size=batch_size, progress=progress)
        return Predictions(
            logits, names, top_k, paths=list(images_or_dir.paths), skipped=list(images_or_dir.skipped),
            ignored=list(images_or_dir.ignored),
        )
    if isinstance(images_or_dir, (np.ndarray, tf.Tensor)):
        return Predictions(_array_logits(model, images_or_dir, batch_size=batch_size, progress=progress), names, top_k)
    paths, ignored = _resolve_paths(images_or_dir)
    logits, kept = _stream_files(model, paths, resize=resize, batch_size=batch_size, progress=progress)
    skipped = _skipped(paths, kept)
    return Predictions(logits, names, top_k, paths=[paths[i] for i in kept], skipped=skipped, ignored=ignored)


def _skipped(paths: Sequence[str], kept: np.ndarray) -> list[str]:
    """The paths not in `kept`, logged with the reason of each (as the loaders do)."""
    kept_set = set(kept.tolist())
    skipped = [p for i, p in enumerate(paths) if i not in kept_set]
    data_lib.log_skips(skipped, root=None)
    return skipped


def _folder_labels(data_dir, names: Sequence[str]):
    """`(paths, labels, ignored)` of a class-per-folder tree, labels as indices into `names`."""
    root = data_lib.check_dir(data_dir, data_lib.FOLDER_LAYOUT)
    folders, paths, folder_labels, ignored = data_lib.list_class_folders(os.fspath(data_dir))
    mapping = classes_lib.class_mapping(folders, names, labels=[os.path.join(root, f) for f in folders],
                                        noun="class folder")
    return paths, mapping[np.asarray(folder_labels, np.int64)], ignored


def score(
    model: keras.Model | str | os.PathLike,
    data_dir: str | os.PathLike,
    *,
    class_names: Sequence[str] | None = None,
    top_k: int | None = None,
    batch_size: int = 32,
    resize: str = "stretch",
    progress: bool | Callable[[int, int], None] = False,
) -> Predictions:
    """Classifies a class-per-folder tree and keeps the true classes.

    `data_dir/<class>/**/<image>` as `keras_transfer.data.load_folder` reads
    it (at least 2 class folders); each class folder must name a class of the
    model (ignoring case, spaces, underscores and hyphens; a number is a
    class index; see `keras_transfer.classes.resolve_class`). The returned
    `Predictions` have `labels`: see `Predictions.metrics()` and
    `Predictions.evaluation`.

    Args:
        model: a classifier, or the path of a saved `.keras` model.
        data_dir: the class-per-folder root, e.g. a test set kept apart.
        class_names: the model's class names. Defaults to those of
            `predict`.
        top_k: classes kept per image, and the k of the top-k accuracy, from
            1 to the number of classes. Defaults to `None` (5, or the number
            of classes if smaller).
        batch_size: images decoded and classified at once. Defaults to `32`.
        resize: `"stretch"`, `"crop"` or `"pad"`. Defaults to `"stretch"`.
        progress: `True`, a callable `(done, total)`, or `False` (see
            `predict`). Defaults to `False`.

    Returns:
        `Predictions` with `labels`.

    Raises:
        FileNotFoundError / NotADirectoryError: `data_dir` does not exist /
            is a file.
        ValueError: fewer than 2 class folders, an empty class folder, a
            class folder that names no class of the model, a bad argument.
    """
    model, names, top_k = _prepare(model, class_names, top_k=top_k, batch_size=batch_size, resize=resize)
    paths, labels, ignored = _folder_labels(data_dir, names)
    logits, kept = _stream_files(model, paths, resize=resize, batch_size=batch_size, progress=progress)
    return Predictions(
        logits, names, top_k, paths=[paths[i] for i in kept], skipped=_skipped(paths, kept), ignored=ignored,
        labels=labels[kept],
    )


def resize_of_run(model_path: str | os.PathLike) -> str | None:
    """The `resize` a saved run was trained with (its `metrics.json`), or `None` when unknown.

    Photos must be resized as the training images were: a model trained on
    stretched images sees cropped ones differently.
    """
    path = os.path.join(os.path.dirname(os.path.abspath(os.fspath(model_path))), METRICS_FILE)
    try:
        resize = files.read_json(path, what="metrics file")["config"]["data"]["resize"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return resize if resize in data_lib.RESIZE_MODES else None
