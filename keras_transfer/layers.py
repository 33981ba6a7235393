"""Serializable layers that live inside keras_transfer models.

Every model this package builds takes plain RGB pixels in [0, 255]. The
backbone-specific preprocessing is a layer of the model, so a saved model can
neither be fed un-preprocessed images nor be preprocessed twice, and every
gradient loop (class visualization, adversarial attacks) works in one pixel
range.
"""

from __future__ import annotations

import copy

import keras
from keras import ops

PREPROCESSING_MODES = ("caffe", "tf", "torch", "identity")

# Constants of keras.applications.imagenet_utils.preprocess_input.
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)


@keras.saving.register_keras_serializable(package="keras_transfer")
class ImagePreprocessing(keras.layers.Layer):
    """Maps RGB pixels in [0, 255] to what a Keras Applications backbone expects.

    The modes are those of `keras.applications.imagenet_utils.preprocess_input`:

    - `"caffe"` (VGG, ResNet v1): RGB -> BGR, then subtract the ImageNet mean.
    - `"tf"` (MobileNet v1/v2, ResNet v2, Xception, Inception, NASNet): scale to
      [-1, 1].
    - `"torch"` (DenseNet): scale to [0, 1], then normalize each channel with
      the ImageNet mean and standard deviation.
    - `"identity"` (EfficientNet, EfficientNetV2, ConvNeXt, MobileNetV3): these
      backbones rescale internally, so nothing is done here.

    The layer computes in float32 whatever the global dtype policy, so mixed
    precision never rounds the mean subtraction.

    Args:
        mode: one of `"caffe"`, `"tf"`, `"torch"`, `"identity"`.
            Defaults to `"tf"`.
    """

    def __init__(self, mode: str = "tf", **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if mode not in PREPROCESSING_MODES:
            raise ValueError(
                f"Unknown preprocessing mode. Expected one of {PREPROCESSING_MODES}. "
                f"Received: mode={mode!r}"
            )
        self.mode = mode
        self.supports_masking = True

    def call(self, inputs):
        x = ops.cast(inputs, self.compute_dtype)
        if self.mode == "caffe":
            x = ops.flip(x, axis=-1)
            return x - ops.convert_to_tensor(_CAFFE_MEAN_BGR, dtype=x.dtype)
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "torch":
            mean = ops.convert_to_tensor(_TORCH_MEAN, dtype=x.dtype)
            std = ops.convert_to_tensor(_TORCH_STD, dtype=x.dtype)
            return (x / 255.0 - mean) / std
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config["mode"] = self.mode
        return config


@keras.saving.register_keras_serializable(package="keras_transfer")
class InferenceBackbone(keras.layers.Layer):
    """Runs a backbone model in inference mode, whatever the caller's `training`.

    The transfer-learning recipe calls the backbone with `training=False` so that
    its BatchNormalization layers keep their ImageNet moving statistics while
    the top layers are fine-tuned. In Keras 3 a functional model overrides the
    `training=False` recorded on an inner call with the outer call's
    `training=True`, so writing `backbone(x, training=False)` in a functional
    model is not enough. This wrapper's `call` takes no `training` argument and
    always calls the backbone with `training=False`.

    Args:
        backbone: the `keras.Model` to wrap.
    """

    def __init__(self, backbone: keras.Model, **kwargs):
        super().__init__(**kwargs)
        self.backbone = backbone

    def build(self, input_shape):
        if not self.backbone.built:
            self.backbone.build(input_shape)
        self.built = True

    def call(self, inputs):
        return self.backbone(inputs, training=False)

    def compute_output_shape(self, input_shape):
        return self.backbone.compute_output_shape(input_shape)

    def compute_output_spec(self, inputs):
        return self.backbone.compute_output_spec(inputs, training=False)

    def get_config(self):
        config = super().get_config()
        config["backbone"] = keras.saving.serialize_keras_object(self.backbone)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        # Deserializing a functional model pops keys from its config: copy it
        # so that the caller's config is left as it was.
        config["backbone"] = keras.saving.deserialize_keras_object(copy.deepcopy(config["backbone"]))
        return cls(**config)


@keras.saving.register_keras_serializable(package="keras_transfer")
class FeatureStandardization(keras.layers.Layer):
    """Standardizes pooled backbone features with fixed training-set statistics.

    `(x - mean) / std` per feature, like scikit-learn's `StandardScaler`
    in front of a linear probe. Until `set_statistics` is called the layer is
    the identity. The statistics are non-trainable weights, saved with the
    model; the layer computes in float32.

    Args:
        epsilon: a feature whose standard deviation is below this is only
            centred, not scaled. Defaults to `1e-6`.
    """

    def __init__(self, epsilon: float = 1e-6, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.epsilon = float(epsilon)

    def build(self, input_shape):
        dim = input_shape[-1]
        self.mean = self.add_weight(name="mean", shape=(dim,), initializer="zeros", trainable=False)
        self.std = self.add_weight(name="std", shape=(dim,), initializer="ones", trainable=False)
        self.built = True

    def set_statistics(self, features) -> None:
        """Sets mean and standard deviation from `(n, dim)` features."""
        import numpy as np

        if len(features) == 0:
            raise ValueError("Expected at least one feature vector to compute statistics from. Received: 0")
        features = np.asarray(features, dtype="float64").reshape(len(features), -1)
        std = features.std(axis=0)
        std[std < self.epsilon] = 1.0
        self.mean.assign(features.mean(axis=0).astype("float32"))
        self.std.assign(std.astype("float32"))

    def call(self, inputs):
        x = ops.cast(inputs, self.compute_dtype)
        return (x - self.mean) / self.std

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config["epsilon"] = self.epsilon
        return config


def build_augmentation(
    *,
    flip: str | None = "horizontal",
    rotation: float = 0.1,
    zoom: float = 0.1,
    contrast: float = 0.1,
    seed: int | None = None,
    name: str = "augmentation",
) -> keras.Sequential:
    """Random flip, rotation, zoom and contrast for RGB images in [0, 255].

    The layers are Keras preprocessing layers: they are active only when the
    model is called with `training=True` and are saved with the model.

    Args:
        flip: `"horizontal"`, `"vertical"`, `"horizontal_and_vertical"` or
            `None` for no flip. Defaults to `"horizontal"`.
        rotation: maximum rotation as a fraction of a full turn (0.1 = 36
            degrees). 0 disables it. Defaults to `0.1`.
        zoom: maximum zoom in or out as a fraction of the image size. 0
            disables it. Defaults to `0.1`.
        contrast: maximum contrast change factor. 0 disables it. Defaults to
            `0.1`.
        seed: seed of the random transforms. Defaults to `None`.
        name: name of the `keras.Sequential`. Defaults to `"augmentation"`.
    """
    valid_flips = (None, "horizontal", "vertical", "horizontal_and_vertical")
    if flip not in valid_flips:
        raise ValueError(f"Expected flip in {valid_flips}. Received: flip={flip!r}")
    for arg, value in (("rotation", rotation), ("zoom", zoom), ("contrast", contrast)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"Expected 0 <= {arg} < 1. Received: {arg}={value!r}")
    # Each layer draws from a seed of its own: with one seed they would all
    # make the same uniform draw (every flipped image also rotated one way,
    # zoomed in and lower in contrast). float32 whatever the global policy,
    # so mixed precision does not round the pixels (as ImagePreprocessing).
    def layer_seed(index: int) -> int | None:
        return None if seed is None else seed + index

    layers: list[keras.layers.Layer] = []
    if flip:
        layers.append(keras.layers.RandomFlip(flip, seed=layer_seed(0), name="random_flip", dtype="float32"))
    if rotation:
        layers.append(
            keras.layers.RandomRotation(
                rotation, fill_mode="reflect", seed=layer_seed(1), name="random_rotation", dtype="float32"
            )
        )
    if zoom:
        layers.append(
            keras.layers.RandomZoom(zoom, fill_mode="reflect", seed=layer_seed(2), name="random_zoom", dtype="float32")
        )
    if contrast:
        layers.append(
            keras.layers.RandomContrast(
                contrast, value_range=(0, 255), seed=layer_seed(3), name="random_contrast", dtype="float32"
            )
        )
    return keras.Sequential(layers, name=name)

