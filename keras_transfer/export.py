"""Exporting a classifier for serving: a TensorFlow SavedModel and a TFLite file.

`export_saved_model(model, path)` writes a SavedModel with two signatures,
each returning `{"logits": float32 (n, num_classes), "probabilities": ...}`:

- `serving_default`: `images`, a 1-D string tensor of encoded image files
  (JPEG, PNG, GIF, BMP, WebP). They are decoded and resized inside the graph
  by the functions the package's loaders and `keras_transfer.inference.predict`
  use (`keras_transfer.data.decode_and_resize`), so a served
  prediction equals a local one. An undecodable image fails the request.
- `serve_pixels`: `images`, uint8 `(n, size, size, 3)` RGB pixels already at
  the model's input size.

`export_tflite(model, path)` writes a float32 TFLite model with the pixel
signature (`serve_pixels`, uint8 `(n, size, size, 3)` in, logits and
probabilities out). uint8 input was chosen because it is what a decoded
photo or a camera frame is, and what `serve_pixels` takes: the float
conversion, which the Keras model does on its [0, 255] input, happens inside,
and TFLite's builtin ops cannot decode image bytes. The computation is
float32 (no quantization), so the logits match the Keras model's to ~1e-5.

Both are written crash-safely: into a temporary sibling (a folder for the
SavedModel) renamed into place when complete, so a kill leaves the previous
export or the new one, never half of one.

Example::

    model = kt.load_model("runs/pets/model.keras")
    export_saved_model(model, "serving/pets")
    served = tf.saved_model.load("serving/pets").signatures["serving_default"]
    served(images=tf.constant([open("cat.jpg", "rb").read()]))["probabilities"]
"""

from __future__ import annotations

import os
import tempfile

import keras
import numpy as np
import tensorflow as tf

from keras_transfer import data as data_lib
from keras_transfer import files
from keras_transfer import models as models_lib

BYTES_SIGNATURE = "serving_default"
PIXELS_SIGNATURE = "serve_pixels"
INPUT_NAME = "images"
OUTPUT_NAMES = ("logits", "probabilities")
SAVED_MODEL_FILE = "saved_model.pb"


def _input_size(model: keras.Model, image_size: int | None) -> int:
    """The square side the exported signatures take: the model's input size."""
    if not isinstance(model, keras.Model):
        raise TypeError(f"Expected a keras.Model. Received: model={model!r}")
    models_lib.as_logits_model(model)  # checks: one (batch, num_classes) output
    size = models_lib.image_size_of(model)
    if image_size is not None and image_size != size:
        raise ValueError(
            f"Expected image_size to be None or the model's input size {size}. Received: image_size={image_size!r}"
        )
    return size


def _archive(model: keras.Model, size: int, *, resize: str | None) -> keras.export.ExportArchive:
    """An `ExportArchive` of `model` with the pixel signature, and the bytes one when `resize` is given."""
    # A final softmax is dropped: `logits` are logits, `probabilities` not a second softmax.
    model = models_lib.as_logits_model(model)
    archive = keras.export.ExportArchive()
    archive.track(model)

    def outputs(pixels):
        logits = tf.cast(model(tf.cast(pixels, tf.float32), training=False), tf.float32)
        return {"logits": logits, "probabilities": tf.nn.softmax(logits, axis=-1)}

    if resize is not None:
        def from_bytes(images):
            def decode(contents):
                return data_lib.decode_and_resize(contents, image_size=size, resize=resize)

            pixels = tf.map_fn(decode, images, fn_output_signature=tf.TensorSpec([size, size, 3], tf.uint8))
            return outputs(pixels)

        # Registered first: Keras makes the first endpoint `serving_default` too.
        archive.add_endpoint(
            BYTES_SIGNATURE, from_bytes, input_signature=[tf.TensorSpec([None], tf.string, name=INPUT_NAME)]
        )
    archive.add_endpoint(
        PIXELS_SIGNATURE, outputs, input_signature=[tf.TensorSpec([None, size, size, 3], tf.uint8, name=INPUT_NAME)]
    )
    return archive


def _is_saved_model(path: str) -> bool:
    return os.path.isfile(os.path.join(path, SAVED_MODEL_FILE))


def _check_destination(path: str) -> None:
    """Refuses a `path` that exists and is not an earlier export (it is the user's), or the working folder."""
    files.check_replaceable_dir(path)
    if os.path.exists(path) and not (os.path.isdir(path) and _is_saved_model(path)):
        raise FileExistsError(f"{path!r} exists and is not a SavedModel folder; choose another path or remove it.")


def export_saved_model(
    model: keras.Model,
    path: str | os.PathLike,
    *,
    image_size: int | None = None,
    resize: str = "stretch",
) -> str:
    """Writes `model` as a TensorFlow SavedModel for serving (see the module docstring).

    Args:
        model: a classifier from RGB [0, 255] images to logits (any model
            built by this package; a final softmax layer is dropped, see
            `keras_transfer.models.as_logits_model`).
        path: the SavedModel folder; an earlier export there is replaced,
            anything else is refused.
        image_size: side of the squares images are resized to; must be the
            model's input size (the argument only documents it). Defaults to
            `None` (the model's input size).
        resize: how `serving_default` makes squares of encoded images:
            `"stretch"`, `"crop"` or `"pad"`, as the model was trained
            (`keras_transfer.inference.resize_of_run`). Defaults to
            `"stretch"`.

    Returns:
        The path written.

    Raises:
        FileExistsError: `path` exists and is not a SavedModel folder.
        ValueError: an empty `path` or the working folder (or one above
            it), a bad `image_size` or `resize`, or a
            model without a square RGB input and one logits output.
    """
    size = _input_size(model, image_size)
    data_lib.check_resize_args(size, resize)
    path = os.fspath(path)
    _check_destination(path)  # before the (slow) tracing
    archive = _archive(model, size, resize=resize)
    _check_destination(path)
    with files.atomic_dir(path) as tmp:
        archive.write_out(tmp, verbose=False)
    return path


def export_tflite(model: keras.Model, path: str | os.PathLike) -> str:
    """Writes `model` as a float32 TFLite file with the `serve_pixels` signature.

    The input is uint8 `(n, size, size, 3)` RGB pixels at the model's input
    size (a dynamic batch; `n` is 1 until the interpreter resizes it, which
    a signature runner does by itself); the outputs are `logits` and
    `probabilities`. See the module docstring for why uint8.

    Args:
        model: a classifier from RGB [0, 255] images to logits.
        path: the `.tflite` file, written atomically.

    Returns:
        The path written.

    Raises:
        ValueError: `path` does not end in `.tflite`, or a model without a
            square RGB input and one logits output.
    """
    path = os.fspath(path)
    if not path.endswith(".tflite"):
        raise ValueError(f"Expected a path ending in `.tflite`. Received: path={path!r}")
    size = _input_size(model, None)
    archive = _archive(model, size, resize=None)
    # The converter reads a SavedModel: Keras 3 models are not accepted by
    # TFLiteConverter.from_keras_model.
    with tempfile.TemporaryDirectory(prefix="keras_transfer_tflite_") as folder:
        archive.write_out(folder, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(folder, signature_keys=[PIXELS_SIGNATURE])
        content = converter.convert()
    with files.atomic_path(path, suffix=".tflite") as tmp, open(tmp, "wb") as f:
        f.write(content)
    return path


def saved_model_outputs(path: str | os.PathLike, images, *, signature: str = BYTES_SIGNATURE) -> dict[str, np.ndarray]:
    """Runs a signature of an exported SavedModel, as a client would.

    Args:
        path: the SavedModel folder.
        images: encoded image files (`bytes` each) for `serving_default`,
            uint8 pixels `(n, size, size, 3)` for `serve_pixels`.
        signature: `"serving_default"` or `"serve_pixels"`. Defaults to
            `"serving_default"`.

    Returns:
        `{"logits": ..., "probabilities": ...}` as NumPy arrays.
    """
    loaded = tf.saved_model.load(os.fspath(path))
    if signature not in loaded.signatures:
        raise ValueError(f"Expected signature in {sorted(loaded.signatures)}. Received: signature={signature!r}")
    dtype = tf.string if signature == BYTES_SIGNATURE else tf.uint8
    outputs = loaded.signatures[signature](**{INPUT_NAME: tf.constant(images, dtype=dtype)})
    return {name: outputs[name].numpy() for name in OUTPUT_NAMES}


def tflite_outputs(path: str | os.PathLike, pixels: np.ndarray) -> dict[str, np.ndarray]:
    """Runs an exported TFLite file on uint8 pixels `(n, size, size, 3)`.

    Uses `tf.lite.Interpreter`, which TensorFlow marks deprecated in favour
    of the `ai-edge-litert` package's interpreter (same API) and warns about.

    Returns:
        `{"logits": ..., "probabilities": ...}` as NumPy arrays.
    """
    interpreter = tf.lite.Interpreter(model_path=os.fspath(path))
    runner = interpreter.get_signature_runner(PIXELS_SIGNATURE)
    outputs = runner(**{INPUT_NAME: np.asarray(pixels, dtype=np.uint8)})
    return {name: np.asarray(outputs[name]) for name in OUTPUT_NAMES}
