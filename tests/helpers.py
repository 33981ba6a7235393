"""Test helpers shared by several test modules."""

from __future__ import annotations

import json
import os

import keras
import numpy as np


def assert_layer_round_trip(layer: keras.layers.Layer, inputs: np.ndarray, folder: str | os.PathLike) -> None:
    """Checks a layer's serialization, as Keras' own layer tests do.

    1. `get_config` -> `from_config` gives a layer of the same class and
       config, which (with the same weights) computes the same outputs; the
       same through `keras.saving.serialize_keras_object` / `deserialize_keras_object`.
    2. The layer inside a functional model saved as `.keras` (by
       `keras_transfer.models.save_model`) and loaded back (by `load_model`)
       gives the same outputs.

    Args:
        layer: the layer to check, with any weights it should carry already
            set (it is built on `inputs` if it is not built yet).
        inputs: a batch to call it on.
        folder: where to write the `.keras` file.
    """
    from keras_transfer import models

    expected = keras.ops.convert_to_numpy(layer(inputs))
    config = layer.get_config()
    revived = [
        type(layer).from_config(config),
        keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer)),
    ]
    for clone in revived:
        assert type(clone) is type(layer)
        assert clone.get_config() == config
        clone(inputs)  # builds its weights
        clone.set_weights(layer.get_weights())
        np.testing.assert_allclose(keras.ops.convert_to_numpy(clone(inputs)), expected, rtol=1e-6, atol=1e-6)

    x = keras.Input(shape=tuple(inputs.shape[1:]))
    model = keras.Model(x, layer(x))
    path = models.save_model(model, os.path.join(os.fspath(folder), f"{layer.name}.keras"))
    loaded = models.load_model(path)
    assert type(loaded.get_layer(layer.name)) is type(layer)
    # The file stores JSON: compare configs as JSON (tuples become lists).
    assert _as_json(loaded.get_layer(layer.name).get_config()) == _as_json(config)
    np.testing.assert_allclose(loaded.predict(inputs, verbose=0), expected, rtol=1e-6, atol=1e-6)


def _as_json(config: dict) -> dict:
    return json.loads(json.dumps(config, sort_keys=True))


SIZE = 32
CLASSES = ("red", "green", "blue")


def synthetic_images(n: int, *, seed: int, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Noisy images whose strongest colour channel is the class."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % len(CLASSES)
    images = 70 + rng.uniform(-25, 25, (n, 1, 1, 3)) + rng.normal(0, 15, (n, size, size, 3))
    images[np.arange(n), :, :, labels] += 120
    return np.clip(images, 0, 255).astype(np.uint8), labels.astype(np.int32)
