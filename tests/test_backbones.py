"""The backbone registry and the in-model preprocessing."""

from __future__ import annotations

import re
import time

import keras
import numpy as np
import pytest

import keras_transfer as kt
from keras_transfer import _downloads
from keras_transfer.backbones import BACKBONES, check_weights, get_backbone_spec
from keras_transfer.errors import CorruptFileError
from keras_transfer.layers import PREPROCESSING_MODES, ImagePreprocessing
from conftest import requires_shared
from helpers import assert_layer_round_trip

ALL = sorted(BACKBONES)


@pytest.mark.parametrize("name", ALL)
def test_in_model_preprocessing_equals_keras_preprocess_input(name, rng):
    spec = get_backbone_spec(name)
    images = rng.uniform(0, 255, size=(2, 9, 7, 3)).astype("float32")
    expected = spec.preprocess_input(images.copy())
    got = keras.ops.convert_to_numpy(ImagePreprocessing(spec.preprocessing)(images))
    np.testing.assert_allclose(got, np.asarray(expected), rtol=1e-6, atol=1e-4)


@pytest.mark.parametrize("mode", PREPROCESSING_MODES)
def test_preprocessing_layer_survives_serialization(mode, rng, tmp_path):
    images = rng.uniform(0, 255, size=(2, 9, 7, 3)).astype("float32")
    assert_layer_round_trip(ImagePreprocessing(mode, name=f"preprocessing_{mode}"), images, tmp_path)


# The first registered (smallest) architecture of each Keras Applications module: the sizes of a
# module share its builder code and its rescaling, so building each of them (92 s here, most of it
# Keras laying out NASNetLarge or EfficientNetB7) would test Keras, not the registry.
FAMILIES = list({spec.module: name for name, spec in reversed(BACKBONES.items())}.values())


@pytest.mark.parametrize("name", ALL)
def test_every_registered_name_has_a_constructor_and_one_rescaling(name):
    spec = get_backbone_spec(name)
    assert callable(spec.builder) and spec.builder.__name__ == spec.constructor, name
    # Exactly once: either our layer rescales (and the backbone doesn't) or the backbone does.
    assert spec.rescales_internally == (spec.preprocessing == "identity"), name


@pytest.mark.parametrize("name", FAMILIES)
def test_each_family_builds_and_rescales_exactly_once(name):
    """Each family builds; the ones whose preprocess_input is a pass-through rescale inside."""
    spec = BACKBONES[name]
    size = max(spec.min_size, 32)
    model = kt.build_backbone(name, image_size=size, weights=None)
    assert model.input_shape == (None, size, size, 3), name
    assert len(model.output_shape) == 4 and model.output_shape[-1] > 0, name
    scalers = (keras.layers.Rescaling, keras.layers.Normalization)
    has_rescaling = any(isinstance(layer, scalers) for layer in model.layers[:4])
    assert has_rescaling == (spec.preprocessing == "identity"), name
    keras.backend.clear_session()


@pytest.mark.parametrize("alias", ["MobileNetV2", "mobilenetv2", "mobilenet-v2", "MOBILENET_V2"])
def test_names_are_matched_loosely(alias):
    assert get_backbone_spec(alias).name == "mobilenet_v2"


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as info:
        get_backbone_spec("resnet51")
    message = str(info.value)
    assert "resnet51" in message and "resnet50" in message and "convnext_tiny" in message


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"name": "vgg16", "alpha": 0.5}, "alpha=0.5"),
        ({"name": "mobilenet", "alpha": -1.0}, "alpha=-1.0"),
        ({"name": "xception", "image_size": 32}, "image_size=32"),
        ({"name": "mobilenet", "weights": "/no/such/file.h5"}, "/no/such/file.h5"),
    ],
)
def test_bad_arguments_are_named_in_the_error(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment.replace(".", r"\.")):
        kt.build_backbone(**kwargs)


def test_check_weights_accepts_imagenet_none_or_a_weights_file(tmp_path):
    path = tmp_path / "backbone.weights.h5"
    path.write_bytes(b"")
    assert check_weights(None) is None and check_weights("none") is None
    assert check_weights("imagenet") == "imagenet"
    assert check_weights(path) == str(path)
    text = tmp_path / "notes.txt"
    text.write_text("not weights")
    for bad in ("imagenett", str(tmp_path / "missing.h5"), 3, str(text)):
        with pytest.raises(ValueError, match=re.escape(f"weights={bad!r}")):
            check_weights(bad)


def test_an_unreadable_weights_file_is_reported_as_corrupt(tmp_path):
    text = tmp_path / "text.weights.h5"
    text.write_text("these are not weights\n")
    source = tmp_path / "source.weights.h5"
    kt.build_backbone("mobilenet", alpha=0.25, image_size=32, weights=None).save_weights(source)
    truncated = tmp_path / "truncated.weights.h5"
    truncated.write_bytes(source.read_bytes()[:5000])
    for path in (text, truncated):
        with pytest.raises(CorruptFileError, match=path.name):
            kt.build_backbone("mobilenet", alpha=0.25, image_size=32, weights=path)


def test_weights_from_a_file_path(tmp_path):
    source = kt.build_backbone("mobilenet_v3_small", image_size=32, weights=None)
    path = str(tmp_path / "backbone.weights.h5")
    source.save_weights(path)
    keras.utils.set_random_seed(1)
    loaded = kt.build_backbone("mobilenet_v3_small", image_size=32, weights=path)
    for a, b in zip(source.weights, loaded.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_missing_imagenet_weights_fail_fast_offline(monkeypatch, tmp_path):
    """No cached file and no network: a clear error within 10 s, not a long retry."""
    url = "https://storage.googleapis.com/tensorflow/keras-applications/"
    if _downloads.probe(url, timeout=3) is None:
        pytest.skip("the network is reachable here; the offline path cannot be exercised")
    from keras.src.backend import config

    monkeypatch.setattr(config, "_KERAS_DIR", str(tmp_path))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    start = time.monotonic()
    with pytest.raises(kt.WeightsUnavailableError) as info:
        kt.build_backbone("vgg16", weights="imagenet")
    assert time.monotonic() - start < 10
    message = str(info.value)
    name = "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
    assert f"https://storage.googleapis.com/tensorflow/keras-applications/vgg16/{name}" in message
    assert str(tmp_path / "models" / name) in message and f"$KERAS_HOME/models/{name}" in message
    assert "weights=" in message and "(training commands: --weights PATH)" in message


@pytest.mark.real
@requires_shared
def test_real_mobilenet_v2_weights_load_offline(keras_home):
    """The ordinary call finds the real weights in the temporary KERAS_HOME."""
    from conftest import SHARED_MODELS

    model = kt.build_backbone("mobilenet_v2", weights="imagenet")
    from_file = kt.build_backbone(
        "mobilenet_v2",
        weights=f"{SHARED_MODELS}/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
    )
    random = kt.build_backbone("mobilenet_v2", weights=None)
    first = model.get_layer("Conv1").kernel.numpy()
    np.testing.assert_array_equal(first, from_file.get_layer("Conv1").kernel.numpy())
    assert not np.allclose(first, random.get_layer("Conv1").kernel.numpy())


def test_image_size_takes_numpy_ints_and_names_what_is_wrong():
    from keras_transfer.backbones import check_image_size

    spec = get_backbone_spec("mobilenet")
    size = check_image_size(spec, np.int64(64))
    assert size == 64 and type(size) is int
    # 64.0 is not too small: the message must not say it is.
    with pytest.raises(ValueError, match=r"an int.*image_size=64\.0") as info:
        check_image_size(spec, 64.0)
    assert "at least" not in str(info.value) or ">=" in str(info.value)
    with pytest.raises(ValueError, match="image_size=True"):
        check_image_size(spec, True)
    with pytest.raises(ValueError, match="at least 32 pixels. Received: image_size=16"):
        check_image_size(spec, 16)
