"""Shared test set-up.

Keras reads KERAS_HOME when it is first imported, so the temporary, writable
KERAS_HOME with links to the real weights in ../shared/data is made here, at
import time, before any test module imports keras.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(os.path.dirname(ROOT), "shared", "data")
SHARED_MODELS = os.path.join(SHARED_DATA, "keras_home", "models")
HAVE_SHARED = os.path.isdir(SHARED_MODELS)
SHARED_REASON = f"needs the real weights and photos in {SHARED_DATA} (absent here)"

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _make_keras_home() -> str:
    home = tempfile.mkdtemp(prefix="keras_transfer_keras_home_")
    atexit.register(shutil.rmtree, home, ignore_errors=True)
    os.makedirs(os.path.join(home, "models"))
    if HAVE_SHARED:
        for name in os.listdir(SHARED_MODELS):
            os.symlink(os.path.join(SHARED_MODELS, name), os.path.join(home, "models", name))
    return home


os.environ["KERAS_HOME"] = _make_keras_home()

requires_shared = pytest.mark.skipif(not HAVE_SHARED, reason=SHARED_REASON)


@pytest.fixture(scope="session")
def shared_data() -> str:
    """Path of ../shared/data; skips the test where it is absent."""
    if not os.path.isdir(SHARED_DATA):
        pytest.skip(SHARED_REASON)
    return SHARED_DATA


@pytest.fixture(scope="session")
def keras_home() -> str:
    return os.environ["KERAS_HOME"]


@pytest.fixture(autouse=True)
def _seed_and_clear():
    """Each test starts from the same seeds and a clean Keras session."""
    import keras

    keras.utils.set_random_seed(0)
    yield
    keras.backend.clear_session()


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def calibrate_batchnorm(backbone, images) -> None:
    """Sets every BatchNormalization's moving statistics to those of `images`.

    A randomly initialised backbone run in inference mode (as every
    keras_transfer classifier runs it) has moving mean 0 and variance 1, so its
    activations shrink layer after layer until the features are ~1e-8. One
    training-mode pass with momentum 0 gives it the statistics of real inputs:
    a stand-in for pretrained weights in the mechanics tests.
    """
    import keras

    bns = [l for l in backbone._flatten_layers() if isinstance(l, keras.layers.BatchNormalization)]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.momentum = 0.0
    backbone(images, training=True)
    for bn, momentum in zip(bns, momenta):
        bn.momentum = momentum


@pytest.fixture(scope="session")
def tiny_backbone_weights(tmp_path_factory) -> str:
    """No-top weights of MobileNet alpha=0.25 with calibrated BatchNorm.

    Pass as `weights=` with `backbone="mobilenet", alpha=0.25` at any image
    size from 32 px: convolution weights do not depend on the input size.
    The calibration images are 32 px noise plus colour blobs (preprocessed to
    [-1, 1], as MobileNet expects).
    """
    import keras

    import keras_transfer as kt

    rng = np.random.default_rng(0)
    # A session fixture is made before the autouse seed of the test that first
    # asks for it: seed here, so the weights do not depend on the tests before.
    keras.utils.set_random_seed(0)
    backbone = kt.build_backbone("mobilenet", alpha=0.25, image_size=32, weights=None)
    x = rng.uniform(0, 255, size=(64, 32, 32, 3)).astype("float32")
    x[::2] = x[::2] * 0.3 + rng.uniform(0, 180, size=(32, 1, 1, 3))
    calibrate_batchnorm(backbone, x / 127.5 - 1.0)
    path = str(tmp_path_factory.mktemp("tiny_weights") / "mobilenet_0.25_calibrated_no_top.weights.h5")
    backbone.save_weights(path)
    keras.backend.clear_session()
    return path


@pytest.fixture(scope="session")
def backbone_weights(tmp_path_factory) -> str:
    """Weights of a random MobileNet 0.25 (32 px) whose features have unit scale (see test_training)."""
    import keras

    import keras_transfer as kt
    from helpers import SIZE, synthetic_images

    keras.utils.set_random_seed(0)
    backbone = kt.build_backbone("mobilenet", alpha=0.25, image_size=SIZE, weights=None)
    last_bn = [l for l in backbone.layers if isinstance(l, keras.layers.BatchNormalization)][-1]
    images, _ = synthetic_images(96, seed=0)
    before_bn = keras.Model(backbone.input, last_bn.input)
    z = np.asarray(before_bn(images.astype("float32") / 127.5 - 1.0, training=False))
    z = z.reshape(-1, z.shape[-1])
    last_bn.moving_mean.assign(z.mean(axis=0))
    last_bn.gamma.assign(np.sqrt(last_bn.moving_variance.numpy() + last_bn.epsilon) / z.std(axis=0))
    last_bn.beta.assign(np.full(z.shape[-1], 0.5, np.float32))
    path = str(tmp_path_factory.mktemp("backbone") / "mobilenet_025_32.weights.h5")
    backbone.save_weights(path)
    keras.backend.clear_session()
    return path
