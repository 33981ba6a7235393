"""Writing files so that an interruption never leaves half of one.

Every file this package writes goes through `atomic_path` (or one of the
writers built on it): the content is written to a temporary name in the same
folder, flushed to disk, and renamed over the destination, which POSIX makes
atomic. A kill at any instant leaves either the old file or the new one.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import math
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator
from typing import Any

import numpy as np

from keras_transfer.errors import CorruptFileError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, suffix: str | None = None) -> Iterator[str]:
    """Yields a temporary path to write; renamed to `path` when the block succeeds.

    Missing parent folders are made first (as `atomic_dir` does), so a slow
    writer does not fail at the end for want of a folder.

    Args:
        path: the destination.
        suffix: the temporary file's extension (some writers check it, e.g.
            Keras wants `.keras` / `.weights.h5`). Defaults to `path`'s own.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    name = os.path.basename(path)
    if suffix is None:
        suffix = _extension(name)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=f".tmp{suffix}", dir=folder)
    os.close(fd)
    try:
        yield tmp
        _chmod_like_a_plain_write(tmp, path, 0o666)
        _fsync(tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def check_replaceable_dir(path: str | os.PathLike) -> None:
    """Refuses, as `atomic_dir` does, an empty `path`, the current folder and those above it.

    Replacing one of them would delete the folder the process works in.
    """
    given = os.fspath(path)
    if not given or os.path.commonpath([os.path.abspath(given), os.getcwd()]) == os.path.abspath(given):
        raise ValueError(
            f"Expected a folder to write, not the current folder or one above it. Received: path={given!r}"
        )


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[str]:
    """Yields a temporary sibling folder to fill; it replaces `path` when the block succeeds.

    A kill at any instant leaves the previous `path` (or none) or the new
    one, never half of one; the temporary names match `is_temporary`. The
    caller decides whether an existing `path` may be replaced.

    Raises:
        ValueError: `path` is empty, or the current folder or one above it
            (replacing it would delete the folder the process works in).
    """
    check_replaceable_dir(path)
    path = os.path.abspath(os.fspath(path))
    parent, name = os.path.dirname(path), os.path.basename(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=parent)
    try:
        yield tmp
        for folder, _, names in os.walk(tmp):
            for file_name in names:
                _fsync(os.path.join(folder, file_name))
        _chmod_like_a_plain_write(tmp, path, 0o777)
        if os.path.isdir(path) and not os.path.islink(path) and _exchange(tmp, path):
            pass  # swapped in one step: `tmp` now holds the earlier folder, removed below
        elif os.path.exists(path):
            # Where the file system cannot swap: rename the earlier folder aside
            # (onto an empty folder, which rename allows), the new one in, then
            # drop the old one.
            old = tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=parent)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _umask() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _chmod_like_a_plain_write(tmp: str, path: str, default: int) -> None:
    """Gives `tmp` the permissions writing `path` in place would: its own if it exists, else `default` less the umask.

    `mkstemp` and `mkdtemp` make their files private (0600 / 0700), which
    the rename would otherwise carry over to the destination.
    """
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        mode = default & ~_umask()
    with contextlib.suppress(FileNotFoundError):
        os.chmod(tmp, mode)


_RENAME_EXCHANGE = 2


def _exchange(a: str, b: str) -> bool:
    """Swaps two paths in one atomic step (Linux `renameat2(RENAME_EXCHANGE)`); `False` where unsupported."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    at_fdcwd = -100
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), b)


_TEMPORARY = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp(\.[A-Za-z0-9.]+)?$")


def remove_outputs(folder: str | os.PathLike, names) -> None:
    """Removes the files and folders `names` (an earlier run's outputs, and only those) from `folder`."""
    for name in names:
        path = os.path.join(folder, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.remove(path)


def is_temporary(name: str) -> bool:
    """Whether a file name is one of `atomic_path`'s temporary names (left by a killed write)."""
    return bool(_TEMPORARY.match(name))


def _extension(name: str) -> str:
    for ext in (".weights.h5", ".keras", ".npz", ".json", ".png", ".h5", ".csv", ".tflite"):
        if name.endswith(ext):
            return ext
    return os.path.splitext(name)[1]


def _fsync(path: str) -> None:
    if os.path.isfile(path):
        with open(path, "rb") as f:
            os.fsync(f.fileno())


def jsonable(value: Any) -> Any:
    """`value` as strict JSON data: non-finite floats become `None`, numpy values plain."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return str(value)


def write_json(path: str | os.PathLike, value: Any) -> None:
    """Writes strict JSON (no NaN: non-finite numbers become null), atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(jsonable(value), f, indent=1, allow_nan=False)


def read_json(path: str | os.PathLike, *, what: str = "file") -> Any:
    """Reads a JSON file; an unreadable one raises `CorruptFileError` naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CorruptFileError(f"The {what} {os.fspath(path)!r} is not valid JSON ({error}).") from error


def write_png(path: str | os.PathLike, image: np.ndarray) -> None:
    """Writes a uint8 `(H, W, 3)` image losslessly, atomically."""
    from PIL import Image

    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"Expected a uint8 image. Received: dtype={image.dtype}")
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")


def read_png(path: str | os.PathLike) -> np.ndarray:
    """An image file as uint8 RGB `(H, W, 3)`."""
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def save_figure(figure, path: str | os.PathLike, *, dpi: int = 100) -> str:
    """Saves a matplotlib Figure as PNG, atomically, and closes it; returns the path."""
    import matplotlib.pyplot as plt

    with atomic_path(path, suffix=".png") as tmp:
        figure.savefig(tmp, dpi=dpi, format="png")
    plt.close(figure)
    return os.fspath(path)


def save_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
    """`np.savez` of `arrays`, atomically."""
    with atomic_path(path, suffix=".npz") as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def load_npz(path: str | os.PathLike, *, what: str = "file") -> dict[str, np.ndarray]:
    """All arrays of an `.npz` file; an unreadable one raises `CorruptFileError`."""
    import zipfile

    try:
        with np.load(path) as saved:
            return {key: saved[key] for key in saved.files}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as error:
        raise CorruptFileError(f"The {what} {os.fspath(path)!r} cannot be read ({error}).") from error


def check_writable_dir(path: str | os.PathLike, *, what: str = "output folder") -> str:
    """Creates `path` if needed and checks that files can be written in it.

    Raises:
        NotADirectoryError / PermissionError: with a message naming `path`.
    """
    path = os.fspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise NotADirectoryError(f"The {what} {path!r} is a file, not a folder. Choose a folder.")
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise PermissionError(
            f"Cannot write in the {what} {path!r} ({error.strerror or error}). Choose a folder you can write to."
        ) from None
    return path
