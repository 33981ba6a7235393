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

import json
import os
from collections.abc import Sequence

import keras

from keras_transfer import backbones as backbones_lib
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


def build_classifier(
    backbone: str = "mobilenet_v2",
    *,
    num_classes: int,
    image_size: int | None = None,
    alpha: float | None = None,
    weights: str | os.PathLike | None = "imagenet",
    pooling: str = "avg",
    dropout: float = 0.2,
    augmentation: bool | keras.Layer = False,
    standardize_features: bool = True,
    head_l2: float = 0.0,
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
        dropout: dropout rate before the logits; 0 disables it. Defaults to
            `0.2`.
        augmentation: `True` for `keras_transfer.layers.build_augmentation()`,
            a Keras layer of your own, or `False` for none. Active only in
            training. Defaults to `False`.
        standardize_features: put a `FeatureStandardization` layer between
            pooling and the head (identity until its statistics are set,
            e.g. by `set_feature_statistics`). Defaults to `True`.
        head_l2: L2 factor on the logits kernel (Keras `L2` regularizer,
            added to the mean loss); 0 disables it. Defaults to `0.0`.
        name: model name. Defaults to `"<backbone>_classifier"`.

    Returns:
        A functional `keras.Model` from RGB images in [0, 255] to float32
        logits, with the backbone frozen (`trainable=False`).
    """
    spec = backbones_lib.get_backbone_spec(backbone)
    size = backbones_lib.check_image_size(spec, image_size)
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"Expected num_classes to be an int >= 2. Received: num_classes={num_classes!r}")
    if pooling not in ("avg", "max"):
        raise ValueError(f"Expected pooling in ('avg', 'max'). Received: pooling={pooling!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"Expected 0 <= dropout < 1. Received: dropout={dropout!r}")
    if not head_l2 >= 0.0:
        raise ValueError(f"Expected head_l2 >= 0. Received: head_l2={head_l2!r}")

    base = backbones_lib.build_backbone(spec.name, image_size=size, alpha=alpha, weights=weights)
    base.trainable = False

    inputs = keras.Input(shape=(size, size, 3), name=INPUT_NAME)
    x = inputs
    if augmentation is True:
        augmentation = build_augmentation(name=AUGMENTATION_NAME)
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
    regularizer = keras.regularizers.L2(head_l2) if head_l2 else None
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


def freeze_backbone(model: keras.Model) -> None:
    """Makes the whole backbone non-trainable (phase 1: train the head only)."""
    get_backbone(model).trainable = False


def unfreeze_backbone(
    model: keras.Model,
    *,
    top_n: int | None = None,
    from_layer: str | None = None,
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
        from_layer: unfreeze from this backbone layer (inclusive) to the end.
            Defaults to `None`. With neither argument the whole backbone is
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
        names = [layer.name for layer in layers]
        if from_layer not in names:
            import difflib

            close = difflib.get_close_matches(from_layer, names, n=5)
            raise ValueError(
                f"Backbone {backbone.name!r} has no layer {from_layer!r}. Close matches: {close}. "
                f"It has {len(names)} layers, from {names[0]!r} to {names[-1]!r}."
            )
        start = names.index(from_layer)
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


def save_class_names(class_names: Sequence[str], path: str | os.PathLike) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(list(class_names), f, indent=1)


def load_class_names(path: str | os.PathLike) -> list[str]:
    with open(path, encoding="utf-8") as f:
        names = json.load(f)
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"Expected {os.fspath(path)!r} to hold a JSON list of class names.")
    return names


def load_model(path: str | os.PathLike, *, compile: bool = False) -> keras.Model:
    """Loads a `.keras` model saved by this package (custom layers registered).

    Args:
        path: the `.keras` file.
        compile: also restore the optimizer, loss and metrics, to go on
            training. Prediction, visualization and attacks do not need them,
            and skipping them avoids Keras' warning about optimizer variables
            that a finished run never built. Defaults to `False`.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No model file at {path!r}.")
    if not path.endswith(".keras"):
        raise ValueError(f"Expected a `.keras` model file. Received: path={path!r}")
    return keras.saving.load_model(path, compile=compile)


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
