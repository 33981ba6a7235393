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
