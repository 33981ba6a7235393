"""Classifiers built around Keras Applications backbones.

A classifier is a functional `keras.Model`::

    image (RGB, 0-255) -> augmentation (training only) -> preprocessing
      -> backbone (always inference mode) -> pooling -> feature standardization
      -> dropout -> logits (float32)

Its layers have fixed names (`"augmentation"`, `"preprocessing"`,
`"backbone"`, `"pooling"`, `"feature_standardization"`, `"dropout"`,
`"logits"`), so the helpers below and
the training loop can find the parts of a loaded model.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import math
import numbers
import os
import random
import zipfile
from collections.abc import Sequence

import keras
import numpy as np

from keras_transfer import backbones as backbones_lib
from keras_transfer import files
from keras_transfer.errors import CorruptFileError
from keras_transfer.layers import (
    FeatureStandardization,
    ImagePreprocessing,
    InferenceBackbone,
    build_augmentation,
)

INPUT_NAME = "image"
AUGMENTATION_NAME = "augmentation"
PREPROCESSING_NAME = "preprocessing"
BACKBONE_NAME = "backbone"
POOLING_NAME = "pooling"
STANDARDIZATION_NAME = "feature_standardization"
DROPOUT_NAME = "dropout"
LOGITS_NAME = "logits"
ENSEMBLE_COMBINES = ("probabilities", "logits")


def build_classifier(
    backbone: str = "mobilenet_v2",
    *,
    num_classes: int,
    image_size: int | None = None,
    alpha: float | None = None,
    weights: str | os.PathLike | None = "imagenet",
    pooling: str = "avg",
    dropout: float = 0.0,
    augmentation: bool | keras.Layer = False,
    standardize_features: bool = True,
    kernel_l2: float = 0.0,
    name: str | None = None,
) -> keras.Model:
    """Builds a transfer-learning classifier; the backbone starts frozen.

    Args:
        backbone: registry name of the backbone (see
            `keras_transfer.backbones.available_backbones()`). Defaults to
            `"mobilenet_v2"`.
        num_classes: number of output classes (logits).
        image_size: side of the square RGB input. Defaults to the backbone's
            default size.
        alpha: width multiplier of MobileNet families. Defaults to `None`
            (the family default, 1.0).
        weights: `"imagenet"`, a path to a weights file of the backbone, or
            `None`. Defaults to `"imagenet"`.
        pooling: `"avg"` or `"max"` global pooling. Defaults to `"avg"`.
        dropout: dropout rate before the logits; 0 adds no `dropout` layer.
            Defaults to `0.0` (as `TrainConfig`).
        augmentation: `True` for `keras_transfer.layers.build_augmentation()`,
            a Keras layer of your own, or `False` for none. Active only in
            training. Defaults to `False`.
        standardize_features: put a `FeatureStandardization` layer between
            pooling and the head (identity until its statistics are set,
            e.g. by `set_feature_statistics`). Defaults to `True`.
        kernel_l2: the raw Keras L2 factor of the logits kernel `W`: the
            training loss (a mean over the batch) gets
            `kernel_l2 * sum(W ** 2)` (`keras.regularizers.L2`). 0 adds no
            regularizer. This is not `TrainConfig.head_l2`, which is on
            scikit-learn's `1 / C` scale: `train` passes
            `kernel_l2=head_l2 / (2 * n_train)`. Defaults to `0.0`.
        name: model name. Defaults to `"<backbone>_classifier"`.

    Returns:
        A functional `keras.Model` from RGB images in [0, 255] to float32
        logits, with the backbone frozen (`trainable=False`).
    """
    spec = backbones_lib.get_backbone_spec(backbone)
    size = backbones_lib.check_image_size(spec, image_size)
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 2:
        raise ValueError(f"Expected num_classes to be an int >= 2. Received: num_classes={num_classes!r}")
    num_classes = int(num_classes)
    if pooling not in ("avg", "max"):
        raise ValueError(f"Expected pooling in ('avg', 'max'). Received: pooling={pooling!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"Expected 0 <= dropout < 1. Received: dropout={dropout!r}")
    if isinstance(kernel_l2, bool) or not isinstance(kernel_l2, numbers.Real) or not kernel_l2 >= 0.0:
        raise ValueError(f"Expected kernel_l2 to be a number >= 0. Received: kernel_l2={kernel_l2!r}")

    base = backbones_lib.build_backbone(spec.name, image_size=size, alpha=alpha, weights=weights)
    base.trainable = False

    inputs = keras.Input(shape=(size, size, 3), name=INPUT_NAME)
    x = inputs
    if augmentation is True:
        augmentation = build_augmentation(name=AUGMENTATION_NAME)
    if augmentation is not False and augmentation is not None and augmentation.name != AUGMENTATION_NAME:
        # The layer is found by its name (e.g. by phase 2's train steps): a layer of your own gets wrapped.
        augmentation = keras.Sequential([augmentation], name=AUGMENTATION_NAME)
    if augmentation:
        x = augmentation(x)
    x = ImagePreprocessing(spec.preprocessing, name=PREPROCESSING_NAME)(x)
    x = InferenceBackbone(base, name=BACKBONE_NAME)(x)
    pool_cls = keras.layers.GlobalAveragePooling2D if pooling == "avg" else keras.layers.GlobalMaxPooling2D
    x = pool_cls(name=POOLING_NAME)(x)
    if standardize_features:
        x = FeatureStandardization(name=STANDARDIZATION_NAME)(x)
    if dropout:
        x = keras.layers.Dropout(dropout, name=DROPOUT_NAME)(x)
    # float32 logits even under a mixed precision policy: softmax and loss
    # stay numerically safe, and attacks get exact logits.
    regularizer = keras.regularizers.L2(kernel_l2) if kernel_l2 else None
    # A zero-initialized linear head (as in BiT) starts from uniform
    # predictions instead of random logits of the size of the standardized
    # features, which would dominate a head trained on few images.
    outputs = keras.layers.Dense(
        num_classes, dtype="float32", kernel_initializer="zeros", kernel_regularizer=regularizer, name=LOGITS_NAME
    )(x)
    return keras.Model(inputs, outputs, name=name or f"{spec.name}_classifier")


def build_imagenet_classifier(
    backbone: str = "mobilenet",
    *,
    alpha: float | None = None,
    image_size: int | None = None,
    weights: str | os.PathLike | None = "imagenet",
) -> keras.Model:
    """The backbone's own 1000-class ImageNet classifier, as RGB [0, 255] -> logits.

    Used to look at what a pretrained network learned (class visualization)
    and to attack it. The classifier's activation is removed so the output is
    logits, and the preprocessing is inside the model like in
    `build_classifier`.

    Args:
        backbone: registry name. Defaults to `"mobilenet"`.
        alpha: width multiplier of MobileNet families. Defaults to `None`
            (the family default, 1.0).
        image_size: input size; ImageNet weights with the top exist only at
            the family's default size. Defaults to that size.
        weights: `"imagenet"`, a path to a full-model weights file, or `None`.
            Defaults to `"imagenet"`.
    """
    spec = backbones_lib.get_backbone_spec(backbone)
    size = backbones_lib.check_image_size(spec, image_size)
    base = backbones_lib.build_backbone(
        spec.name, image_size=size, alpha=alpha, weights=weights, include_top=True, classifier_activation=None
    )
    base.trainable = False
    inputs = keras.Input(shape=(size, size, 3), name=INPUT_NAME)
    x = ImagePreprocessing(spec.preprocessing, name=PREPROCESSING_NAME)(inputs)
    x = InferenceBackbone(base, name=BACKBONE_NAME)(x)
    outputs = keras.layers.Identity(dtype="float32", name=LOGITS_NAME)(x)
    return keras.Model(inputs, outputs, name=f"{spec.name}_imagenet")


def get_backbone(model: keras.Model) -> keras.Model:
    """The Keras Applications model inside a classifier built here."""
    try:
        layer = model.get_layer(BACKBONE_NAME)
    except ValueError:
        raise ValueError(
            f"Model {model.name!r} has no layer named {BACKBONE_NAME!r}; expected a model built by "
            f"keras_transfer.models. Its layers: {[l.name for l in model.layers]}"
        ) from None
    return layer.backbone if isinstance(layer, InferenceBackbone) else layer


def find_layer(model: keras.Model, layer: str | int) -> keras.layers.Layer:
    """A layer of a backbone by name or index, with close names suggested on error.

    Args:
        model: a backbone (any `keras.Model`: its own top-level layers are
            searched) or a classifier built here (its backbone's layers are
            searched, as `fine_tune_at`, `unfreeze_backbone(from_layer=...)`
            and `plot_feature_maps(layer=...)` mean).
        layer: a layer name, or an index into the layers (negative counts
            from the end, as in Python).

    Raises:
        ValueError: for an unknown name (naming it and suggesting close
            names) or an index out of range (naming it and the layer count).
    """
    if is_classifier(model):
        model = get_backbone(model)
    return _pick_layer(model.name, list(model.layers), layer)


def check_layer_name(
    backbone: str,
    layer: str | int,
    *,
    alpha: float | None = None,
    image_size: int | None = None,
) -> str:
    """Checks a backbone layer name or index without building a classifier.

    The backbone is built once per `(backbone, alpha, image_size)` with
    `weights=None` (no download, about a second for MobileNetV2) and its
    layer names are cached, so a mistyped `fine_tune_at` or feature-map layer
    is reported before any data is read. The build leaves Keras' automatic
    layer names and Python's random state as they were, so a model built
    afterwards is the same as without the check.

    Args:
        backbone: registry name of the backbone.
        layer: a layer name, or an index (negative counts from the end).
        alpha: width multiplier of MobileNet families. Defaults to `None`.
        image_size: input size. Defaults to the backbone's default size.

    Returns:
        The layer's name.

    Raises:
        ValueError: for an unknown name (with close names) or an index out
            of range, or a bad backbone/alpha/size.
    """
    spec = backbones_lib.get_backbone_spec(backbone)
    size = backbones_lib.check_image_size(spec, image_size)
    alpha = backbones_lib.resolve_alpha(spec, alpha)
    model_name, names = _backbone_layer_names(spec.name, alpha, size)
    return _pick_layer(model_name, names, layer)


@functools.lru_cache(maxsize=16)
def _backbone_layer_names(name: str, alpha: float | None, size: int) -> tuple[str, tuple[str, ...]]:
    with _unchanged_keras_state():
        model = backbones_lib.build_backbone(name, image_size=size, alpha=alpha, weights=None)
    return model.name, tuple(layer.name for layer in model.layers)


@contextlib.contextmanager
def _unchanged_keras_state():
    """Restores Keras' automatic-name counters and Python's random state on exit.

    Keras numbers unnamed layers from global counters, and unseeded
    initializers draw their seeds from Python's `random`: a throwaway build
    must touch neither, or the next real model would differ.
    """
    from keras.src.backend.common import global_state

    uids = global_state.get_global_attribute("object_name_uids")
    saved_uids = None if uids is None else uids.copy()
    saved_random = random.getstate()
    try:
        yield
    finally:
        random.setstate(saved_random)
        if saved_uids is None:
            global_state.set_global_attribute("object_name_uids", None)
        else:
            uids.clear()
            uids.update(saved_uids)
            global_state.set_global_attribute("object_name_uids", uids)


def _pick_layer(model_name: str, layers: Sequence, layer: str | int):
    """`layers[layer]` by index or name; `layers` are Layers or names."""
    names = [item if isinstance(item, str) else item.name for item in layers]
    if isinstance(layer, numbers.Integral) and not isinstance(layer, bool):
        if not -len(names) <= layer < len(names):
            raise ValueError(
                f"Layer index out of range: backbone {model_name!r} has {len(names)} layers "
                f"(indices {-len(names)} to {len(names) - 1}). Received: layer={layer}"
            )
        return layers[int(layer)]
    if not isinstance(layer, str):
        raise ValueError(f"Expected a layer name (str) or index (int). Received: layer={layer!r}")
    if layer not in names:
        close = difflib.get_close_matches(layer, names, n=5)
        hint = f"Close matches: {close}. " if close else ""
        raise ValueError(
            f"Backbone {model_name!r} has no layer {layer!r}. {hint}"
            f"It has {len(names)} layers, from {names[0]!r} to {names[-1]!r}."
        )
    return layers[names.index(layer)]


def is_classifier(model: keras.Model) -> bool:
    """Whether `model` is a classifier built here (its backbone wrapped as `InferenceBackbone`)."""
    return any(layer.name == BACKBONE_NAME and isinstance(layer, InferenceBackbone) for layer in model.layers)


def freeze_backbone(model: keras.Model) -> None:
    """Makes the whole backbone non-trainable (phase 1: train the head only)."""
    get_backbone(model).trainable = False


def unfreeze_backbone(
    model: keras.Model,
    *,
    top_n: int | None = None,
    from_layer: str | int | None = None,
    train_batchnorm: bool = False,
) -> int:
    """Makes the top of the backbone trainable for fine-tuning (phase 2).

    The backbone always runs in inference mode (see `InferenceBackbone`), so
    BatchNormalization uses its moving statistics either way; with
    `train_batchnorm=False` its scale and offset also stay fixed, which is the
    usual advice for small data sets.

    Args:
        model: a classifier from `build_classifier`.
        top_n: unfreeze the last `top_n` layers of the backbone. Defaults to
            `None`.
        from_layer: unfreeze from this backbone layer (a name or an index,
            see `find_layer`; inclusive) to the end. Defaults to `None`. With neither argument the whole backbone is
            unfrozen.
        train_batchnorm: also train BatchNormalization scale and offset.
            Defaults to `False`.

    Returns:
        The number of backbone layers with weights that are now trainable.
    """
    if top_n is not None and from_layer is not None:
        raise ValueError(
            f"Pass top_n or from_layer, not both. Received: top_n={top_n!r}, from_layer={from_layer!r}"
        )
    backbone = get_backbone(model)
    layers = backbone.layers
    start = 0
    if top_n is not None:
        if not isinstance(top_n, int) or top_n < 0:
            raise ValueError(f"Expected top_n to be an int >= 0. Received: top_n={top_n!r}")
        start = max(len(layers) - top_n, 0)
    elif from_layer is not None:
        chosen = find_layer(backbone, from_layer)
        start = next(index for index, layer in enumerate(layers) if layer is chosen)
    backbone.trainable = True
    count = 0
    for index, layer in enumerate(layers):
        trainable = index >= start
        if isinstance(layer, keras.layers.BatchNormalization) and not train_batchnorm:
            trainable = False
        layer.trainable = trainable
        if trainable and layer.weights:
            count += 1
    return count


def split_below_trainable(model: keras.Model) -> tuple[keras.Model, keras.Model]:
    """`(bottom, top)` of a classifier unfrozen for phase 2, sharing its layers.

    `bottom` maps images to the highest tensor of the backbone below its
    lowest trainable layer through which the whole rest of the backbone
    passes (a residual block's skip connection cannot be cut, so the cut
    moves down to the block's input); it has no trainable weights.
    `top` maps that tensor to the logits: the rest of the backbone (in
    inference mode, as in the classifier) and the head. Training `top`
    trains the classifier itself. The augmentation layer is in neither.

    Args:
        model: a classifier from `build_classifier` with a trainable part
            of its backbone (`unfreeze_backbone`).

    Raises:
        ValueError: no layer of the backbone is trainable, or no tensor
            below the lowest trainable one carries the whole graph.
    """
    base = get_backbone(model)
    layers = base.layers
    first = next((i for i, layer in enumerate(layers) if layer.trainable and layer.trainable_weights), None)
    if first is None:
        raise ValueError(f"Expected a classifier with trainable backbone layers (unfreeze_backbone). Received: "
                         f"model {model.name!r} with a frozen backbone")
    for index in range(first - 1, -1, -1):
        cut = layers[index].output
        try:
            upper = keras.Model(cut, base.output, name=f"{base.name}_top")
        except ValueError:  # a tensor the rest of the graph bypasses (a skip connection)
            continue
        break
    else:
        raise ValueError(f"No tensor below the lowest trainable layer {layers[first].name!r} of the backbone "
                         f"carries the whole graph above it; fine-tune from a higher layer.")
    images = keras.Input(shape=tuple(model.input.shape[1:]), name=INPUT_NAME)
    x = model.get_layer(PREPROCESSING_NAME)(images)
    lower = keras.Model(base.input, cut, name=f"{base.name}_bottom")
    bottom = keras.Model(images, InferenceBackbone(lower, name="backbone_bottom")(x), name=f"{model.name}_bottom")
    features = keras.Input(shape=tuple(cut.shape[1:]), name="bottom_features")
    x = InferenceBackbone(upper, name="backbone_top")(features)
    names = [layer.name for layer in model.layers]
    for name in (POOLING_NAME, STANDARDIZATION_NAME, DROPOUT_NAME, LOGITS_NAME):
        if name in names:
            x = model.get_layer(name)(x)
    return bottom, keras.Model(features, x, name=f"{model.name}_top")


def pooled_from_bottom(top: keras.Model, model: keras.Model) -> keras.Model:
    """The bottom's outputs -> the pooled backbone features, sharing the layers of `top` and `model`.

    Args:
        top: the `top` of `split_below_trainable(model)`.
        model: the classifier.
    """
    pooled = model.get_layer(POOLING_NAME)(top.get_layer("backbone_top").output)
    return keras.Model(top.input, pooled, name=f"{model.name}_pooled_from_bottom")


def layer_rate_factors(model: keras.Model, *, lowest: float) -> dict[str, float]:
    """Learning-rate factors of the backbone's trainable variables, by variable path (discriminative fine-tuning).

    The backbone's trainable layers with weights, from its top down, get
    factors spaced geometrically from 1 (the top layer) to `lowest` (the
    lowest trainable layer); the head's variables are not named (factor 1).

    Args:
        model: a classifier from `build_classifier`, unfrozen for phase 2.
        lowest: the factor of the lowest trainable layer, in (0, 1].

    Returns:
        `{variable.path: factor}` for `phases.LayerwiseAdam`.
    """
    if not 0.0 < lowest <= 1.0:
        raise ValueError(f"Expected lowest to be in (0, 1]. Received: lowest={lowest}")
    layers = [layer for layer in get_backbone(model).layers if layer.trainable and layer.trainable_weights]
    factors = {}
    for depth, layer in enumerate(reversed(layers)):
        factor = lowest ** (depth / (len(layers) - 1)) if len(layers) > 1 else 1.0
        factors.update({v.path: float(factor) for v in layer.trainable_weights})
    return factors


def feature_extractor(model: keras.Model) -> keras.Model:
    """Image -> pooled backbone features, sharing the classifier's layers."""
    return keras.Model(model.input, model.get_layer(POOLING_NAME).output, name=f"{model.name}_features")


def head(model: keras.Model) -> keras.Model:
    """Pooled features -> logits, sharing the classifier's head layers.

    Training this model trains the classifier's own standardization, `dropout` and `logits`
    layers, so no weights need to be copied back.
    """
    pooled = model.get_layer(POOLING_NAME).output
    features = keras.Input(shape=tuple(pooled.shape[1:]), name="features")
    x = features
    names = [layer.name for layer in model.layers]
    for name in (STANDARDIZATION_NAME, DROPOUT_NAME):
        if name in names:
            x = model.get_layer(name)(x)
    outputs = model.get_layer(LOGITS_NAME)(x)
    return keras.Model(features, outputs, name=f"{model.name}_head")


def set_feature_statistics(model: keras.Model, features) -> bool:
    """Sets the classifier's feature standardization from pooled training features.

    Returns False (and does nothing) for a model built without it.
    """
    if STANDARDIZATION_NAME not in [layer.name for layer in model.layers]:
        return False
    model.get_layer(STANDARDIZATION_NAME).set_statistics(features)
    return True


def image_size_of(model: keras.Model) -> int:
    """The square input size of a classifier."""
    shape = model.input_shape
    if len(shape) != 4 or shape[1] is None or shape[1] != shape[2] or shape[3] != 3:
        raise ValueError(f"Expected a model with a square RGB input. Received: input_shape={shape}")
    return int(shape[1])


def logits_model_and_size(model: keras.Model) -> tuple[keras.Model, int]:
    """`(as_logits_model(model), its square input size)`; a TypeError for anything but a Keras model."""
    if not isinstance(model, keras.Model):
        raise TypeError(f"Expected a keras.Model. Received: model of type {type(model).__name__}")
    logits_model = as_logits_model(model)
    return logits_model, image_size_of(logits_model)


def class_probabilities(model: keras.Model, images, *, batch_size: int = 16) -> np.ndarray:
    """Softmax class probabilities of `images` (pixels in [0, 255], any dtype).

    Images of another size than the model's input are resized bilinearly
    (as `keras_transfer.visualization.visualize_classes` shows its images
    to the model).

    Args:
        model: a classifier from RGB pixels in [0, 255] to class scores
            (logits, or probabilities from a final softmax layer).
        images: `(batch, height, width, 3)` or one `(height, width, 3)` image.
        batch_size: images per forward pass. Defaults to `16`.

    Returns:
        `(batch, num_classes)` float32 probabilities.
    """
    logits_model, size = logits_model_and_size(model)
    x = keras.ops.cast(keras.ops.convert_to_tensor(images), "float32")
    if len(x.shape) == 3:
        x = x[None]
    if x.shape[1] != size or x.shape[2] != size:
        x = keras.ops.image.resize(x, (size, size), interpolation="bilinear", antialias=False)
        x = keras.ops.clip(x, 0.0, 255.0)
    # Direct calls: `predict` would build a new function for every model.
    logits = [logits_model(x[i : i + batch_size], training=False) for i in range(0, x.shape[0], batch_size)]
    logits = keras.ops.cast(keras.ops.concatenate(logits, axis=0), "float32")
    return keras.ops.convert_to_numpy(keras.ops.softmax(logits, axis=-1))


def save_class_names(class_names: Sequence[str], path: str | os.PathLike) -> None:
    """Writes the class names as a JSON list, atomically."""
    files.write_json(path, list(class_names))


def load_class_names(path: str | os.PathLike) -> list[str]:
    """Reads a JSON list of class names; an unreadable file raises `CorruptFileError`."""
    names = files.read_json(path, what="class names file")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise CorruptFileError(f"Expected {os.fspath(path)!r} to hold a JSON list of class names.")
    return names


def save_model(model: keras.Model, path: str | os.PathLike) -> str:
    """Saves `model` as a `.keras` file, atomically (a kill never leaves half a file).

    Returns:
        The path written.
    """
    path = os.fspath(path)
    if not path.endswith(".keras"):
        raise ValueError(f"Expected a path ending in `.keras`. Received: path={path!r}")
    with files.atomic_path(path, suffix=".keras") as tmp:
        model.save(tmp)
    return path


def load_model(path: str | os.PathLike, *, compile: bool = False) -> keras.Model:
    """Loads a `.keras` model saved by this package (custom layers registered).

    Args:
        path: the `.keras` file.
        compile: also restore the optimizer, loss and metrics, to go on
            training. Prediction, visualization and attacks do not need them,
            and skipping them avoids Keras' warning about optimizer variables
            that a finished run never built. Defaults to `False`.

    Raises:
        FileNotFoundError: no file at `path`.
        ValueError: `path` does not end in `.keras`.
        keras_transfer.errors.CorruptFileError: the file is not a readable
            `.keras` archive (truncated, empty, another format renamed).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"No model file at {path!r}.")
    if not path.endswith(".keras") or os.path.isdir(path):
        raise ValueError(
            f"Expected a `.keras` model file saved by keras_transfer (e.g. a run's model.keras). "
            f"Received: path={path!r}"
        )
    if not os.access(path, os.R_OK):
        raise PermissionError(f"Cannot read the model file {path!r}: permission denied.")
    if not zipfile.is_zipfile(path):
        raise CorruptFileError(
            f"The model file {path!r} is not a `.keras` archive (empty, truncated or another format); "
            "save it again or use another copy."
        )
    try:
        return keras.saving.load_model(path, compile=compile)
    except (zipfile.BadZipFile, OSError, EOFError, KeyError, ValueError) as error:
        raise CorruptFileError(
            f"The model file {path!r} cannot be read ({type(error).__name__}: {_first_line(error)}); "
            "save it again or use another copy."
        ) from error


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else ""


def as_logits_model(model: keras.Model) -> keras.Model:
    """A model with the same input that returns logits.

    Attacks and class visualization need logits: gradients of a saturated
    softmax vanish, which silently weakens attacks. A model whose last layer
    is a `Softmax`/`Activation("softmax")` layer, or a `Dense` with a softmax
    activation, is rebuilt to return the pre-softmax values (sharing its
    weights). Other models are returned unchanged.

    Raises:
        ValueError: when the model does not output one vector of class scores
            per image.
    """
    if len(model.outputs) != 1 or len(model.outputs[0].shape) != 2:
        shapes = [tuple(o.shape) for o in model.outputs]
        raise ValueError(
            "Expected a classifier with one output of shape (batch, num_classes). "
            f"Received a model {model.name!r} with outputs of shapes {shapes}."
        )
    if model.outputs[0].shape[-1] is None or model.outputs[0].shape[-1] < 2:
        raise ValueError(
            f"Expected at least 2 class scores per image. Received: output shape {tuple(model.outputs[0].shape)}"
        )
    last = model.layers[-1]
    activation = getattr(last, "activation", None)
    is_softmax_layer = isinstance(last, keras.layers.Softmax) or (
        isinstance(last, keras.layers.Activation) and _is_softmax(activation)
    )
    if is_softmax_layer:
        pre = last.input
        outputs = keras.layers.Identity(dtype="float32", name="logits_from_softmax_input")(pre)
        return keras.Model(_single_input(model), outputs, name=f"{model.name}_logits")
    if isinstance(last, keras.layers.Dense) and _is_softmax(activation):
        # Re-apply the Dense kernel without its activation, on the same input.
        x = last.input
        logits = keras.layers.Lambda(
            lambda t, layer=last: keras.ops.cast(
                keras.ops.matmul(keras.ops.cast(t, layer.kernel.dtype), layer.kernel)
                + (layer.bias if layer.use_bias else 0.0),
                "float32",
            ),
            name="logits_from_dense",
        )(x)
        return keras.Model(_single_input(model), logits, name=f"{model.name}_logits")
    return model


def _is_softmax(activation) -> bool:
    if activation is None:
        return False
    name = getattr(activation, "__name__", "") or str(activation)
    return "softmax" in name.lower()


def _single_input(model: keras.Model):
    return model.inputs[0] if len(model.inputs) == 1 else model.inputs


# --------------------------------------------------------------------------
# Ensembles: several classifiers as one model.
# --------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="keras_transfer")
class EnsembleLogits(keras.layers.Layer):
    """Combines the logits of the members of an ensemble into its logits.

    With `combine="probabilities"` the output is the log of the mean of the
    members' softmax, `logsumexp_i(log_softmax(z_i)) - log(n)`: its softmax
    is exactly the mean probability, and it is computed without
    exponentiating raw logits, so it neither overflows nor saturates (an
    attack gets the gradient of the mean probability's log). With
    `combine="logits"` it is the mean of the logits.

    The layer computes in float32 whatever the global dtype policy.

    Args:
        combine: `"probabilities"` or `"logits"`. Defaults to
            `"probabilities"`.
    """

    def __init__(self, combine: str = "probabilities", **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if combine not in ENSEMBLE_COMBINES:
            raise ValueError(f"Expected combine in {ENSEMBLE_COMBINES}. Received: combine={combine!r}")
        self.combine = combine

    def call(self, inputs):
        if not isinstance(inputs, (list, tuple)):
            inputs = [inputs]
        stacked = keras.ops.stack([keras.ops.cast(x, self.compute_dtype) for x in inputs], axis=1)
        if self.combine == "logits":
            return keras.ops.mean(stacked, axis=1)
        log_probabilities = keras.ops.log_softmax(stacked, axis=-1)
        return keras.ops.logsumexp(log_probabilities, axis=1) - math.log(len(inputs))

    def compute_output_shape(self, input_shape):
        if isinstance(input_shape, (list, tuple)) and input_shape and isinstance(input_shape[0], (list, tuple)):
            return tuple(input_shape[0])
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config["combine"] = self.combine
        return config


def build_ensemble(
    members: Sequence[keras.Model],
    *,
    combine: str = "probabilities",
    name: str = "ensemble",
) -> keras.Model:
    """One functional classifier made of several: the lesson's defence, attacked as a whole.

    Every member sees the same image (each applies its own preprocessing)
    and the `EnsembleLogits` layer (named `"logits"`) combines their logits.
    Members that end in a softmax are used through `as_logits_model`. The
    members are nested models, kept under their own names (a name used
    twice gets a suffix, `_2`, `_3`, ...), and share their weights with the
    models passed in. The ensemble saves and loads as `.keras`
    (`save_model`, `load_model`), and the attacks of
    `keras_transfer.adversarial` differentiate its logits like any
    classifier's.

    Args:
        members: the classifiers, each from RGB images in [0, 255] of one
            common size to scores of one common number of classes.
        combine: `"probabilities"`: the ensemble's softmax is the mean of the
            members' softmax (its logits are the log of that mean);
            `"logits"`: the mean of the members' logits. Defaults to
            `"probabilities"`.
        name: model name. Defaults to `"ensemble"`.

    Returns:
        A functional `keras.Model` from RGB images in [0, 255] to float32
        logits.

    Raises:
        TypeError: `members` is not a sequence of `keras.Model`.
        ValueError: no member, members of different input sizes or numbers
            of classes (the message lists every member's), a bad `combine`
            or `name`.
    """
    if isinstance(members, keras.Model) or not isinstance(members, Sequence):
        raise TypeError(f"Expected a sequence of keras.Model. Received: members={members!r}")
    if not members:
        raise ValueError("Expected at least one member. Received: members=[]")
    for index, member in enumerate(members):
        if not isinstance(member, keras.Model):
            raise TypeError(f"Expected keras.Model members. Received: members[{index}] of type {type(member).__name__}")
    if combine not in ENSEMBLE_COMBINES:
        raise ValueError(f"Expected combine in {ENSEMBLE_COMBINES}. Received: combine={combine!r}")
    if not isinstance(name, str) or not name:
        raise ValueError(f"Expected a non-empty model name. Received: name={name!r}")
    _check_no_shared_weights(members)
    logits_members = _uniquely_named([as_logits_model(member) for member in members])
    shapes = [(member.name, image_size_of(member), int(member.outputs[0].shape[-1])) for member in logits_members]
    described = "[" + ", ".join(f"{n!r} ({s} px, {c} classes)" for n, s, c in shapes) + "]"
    if len({size for _, size, _ in shapes}) > 1:
        raise ValueError(f"Expected members that take the same input size. Received: members={described}")
    if len({classes for _, _, classes in shapes}) > 1:
        raise ValueError(f"Expected members with the same number of classes. Received: members={described}")
    size = shapes[0][1]
    inputs = keras.Input(shape=(size, size, 3), name=INPUT_NAME)
    outputs = EnsembleLogits(combine, name=LOGITS_NAME)([member(inputs) for member in logits_members])
    return keras.Model(inputs, outputs, name=name)


def _check_no_shared_weights(members: Sequence[keras.Model]) -> None:
    """Members must be separate models: shared layers cannot be saved and restored as such."""
    owner: dict[int, int] = {}
    for index, member in enumerate(members):
        for variable in member.weights:
            first = owner.setdefault(id(variable), index)
            if first != index:
                raise ValueError(
                    f"Expected members that share no weights (the same model passed twice, or one inside "
                    f"another?). Received: members[{first}] ({members[first].name!r}) and members[{index}] "
                    f"({member.name!r}) share the variable {variable.path!r}"
                )


def _uniquely_named(members: Sequence[keras.Model]) -> list[keras.Model]:
    """The members, each one whose name is taken renamed by a wrapper (sharing its layers)."""
    taken = {INPUT_NAME, LOGITS_NAME}
    unique = []
    for member in members:
        new_name, k = member.name, 2
        while new_name in taken:
            new_name, k = f"{member.name}_{k}", k + 1
        taken.add(new_name)
        if new_name != member.name:
            member = keras.Model(_single_input(member), member.outputs[0], name=new_name)
        unique.append(member)
    return unique
