"""Fail fast, with instructions, when a download cannot reach the network.

Keras downloads ImageNet weights with `urllib` and tensorflow-datasets retries
for minutes; on an offline machine both should fail within seconds and say
what to download and where to put it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import urllib.parse

PROBE_TIMEOUT_S = 4.0


class WeightsUnavailableError(RuntimeError):
    """ImageNet weights are not cached and cannot be downloaded."""


class DatasetUnavailableError(RuntimeError):
    """A dataset is not prepared locally and cannot be downloaded."""


def keras_home() -> str:
    """The folder Keras caches weights in (`$KERAS_HOME`, else `~/.keras`)."""
    return os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")


def probe(url: str, *, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """Returns None if `url`'s host accepts a TCP connection, else the reason.

    Name resolution runs in a daemon thread so that a resolver that hangs
    cannot hold the caller longer than `timeout` seconds.
    """
    parsed = urllib.parse.urlparse(url)
    host = parsed.hostname
    if not host:
        return f"not a URL: {url!r}"
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    result: list[str | None] = []

    def attempt():
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(None)
        except OSError as error:
            result.append(f"{type(error).__name__}: {error}")

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(timeout)
    if not result:
        return f"no answer from {host}:{port} within {timeout:.0f} s"
    return result[0]


@contextlib.contextmanager
def fail_fast_downloads(*, what: str):
    """Within this block, a Keras download first probes the network.

    `keras.utils.get_file` only calls `urlretrieve` when the file is not in
    the cache; the probe runs then, so cached weights never touch the network.
    """
    try:
        from keras.src.utils import file_utils
    except ImportError:  # a Keras without this private module: no fast path
        yield
        return
    original = file_utils.urlretrieve

    def guarded(url, filename, *args, **kwargs):
        reason = probe(url)
        if reason is not None:
            # Where Keras looks for the file: $KERAS_HOME/models/<file>.
            name = os.path.basename(urllib.parse.urlparse(url).path)
            target = os.fspath(filename) if filename else os.path.join(keras_home(), "models", name)
            name = os.path.basename(target)
            raise WeightsUnavailableError(
                f"Cannot download the {what} ({reason}); this machine seems to be offline. "
                f"Download {url} elsewhere and copy it to {target} "
                f"($KERAS_HOME/models/{name}; KERAS_HOME defaults to ~/.keras and must be writable), "
                f"or pass the file as weights= (training commands: --weights PATH)."
            )
        return original(url, filename, *args, **kwargs)

    file_utils.urlretrieve = guarded
    try:
        yield
    finally:
        file_utils.urlretrieve = original
