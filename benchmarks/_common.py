"""Set-up shared by the benchmark scripts.

Import this module before keras: `setup_keras_home()` must run before Keras
reads KERAS_HOME.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(os.path.dirname(ROOT), "shared", "data")

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def shared_path(*parts: str) -> str:
    """A path in ../shared/data; exits with a message when it is absent."""
    path = os.path.join(SHARED_DATA, *parts)
    if not os.path.exists(path):
        sys.exit(f"This benchmark needs {path} (the real data in ../shared/data), which is absent.")
    return path


def temp_dir(prefix: str) -> str:
    """A temporary folder removed when the script exits."""
    path = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def setup_keras_home() -> str:
    """A temporary, writable KERAS_HOME with links to the real weights."""
    home = temp_dir("keras_home_")
    models = os.path.join(home, "models")
    os.makedirs(models)
    source = os.path.join(SHARED_DATA, "keras_home", "models")
    if os.path.isdir(source):
        for name in os.listdir(source):
            os.symlink(os.path.join(source, name), os.path.join(models, name))
    os.environ["KERAS_HOME"] = home
    return home


class Timer:
    """`with Timer() as t: ...` then `t.seconds`."""

    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
