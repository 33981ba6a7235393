"""The errors a user can fix, and the one-line form every command prints them in."""

from __future__ import annotations

from keras_transfer._downloads import DatasetUnavailableError, WeightsUnavailableError


class ResumeMismatchError(ValueError):
    """The output folder holds a run with a different configuration."""


class CorruptFileError(ValueError):
    """A file exists but cannot be read (truncated, not the expected format)."""


class FolderInUseError(RuntimeError):
    """Another live process holds the run folder's lock."""


# What every command reports in one line, exit status 2, no traceback.
USER_ERRORS = (
    WeightsUnavailableError,
    DatasetUnavailableError,
    ResumeMismatchError,
    CorruptFileError,
    FolderInUseError,
    FloatingPointError,
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
    ValueError,
    TypeError,
    LookupError,
)


def one_line(error: BaseException) -> str:
    """The message of `error` on one line (what a command prints)."""
    text = str(error) or type(error).__name__
    if isinstance(error, OSError) and error.filename and error.strerror:
        # Raised by the OS ("[Errno 13] Permission denied: 'x'"): say it plainly.
        text = f"{error.strerror}: {error.filename!r}"
    if isinstance(error, KeyError) and error.args:
        text = str(error.args[0])
    return " ".join(part.strip() for part in text.splitlines() if part.strip())
