"""Arrays of many equal rows, written once to a `.npy` file and read back a batch of rows at a time.

Phase 2's cached bottom (`TrainConfig.cache_bottom`) keeps the frozen
bottom's outputs of every view: 75 KB a view for MobileNetV2 at 224 px, about
3 GB for 20,000 photos. Held in memory, they would make a run's memory grow
with its data; in a run folder they go to files instead. A batch is read with
`os.preadv`, which goes through the operating system's page cache without
adding to the process's resident memory (a memory map would count every page
it touched, so a long run's resident size would grow to the whole file).

A file is written under a temporary name and renamed when complete
(`files.atomic_path`), so a kill during the write leaves no half file: the
next session recomputes it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from keras_transfer import files
from keras_transfer.errors import CorruptFileError


class RowFile:
    """A C-ordered `.npy` array on disk whose rows are read on demand.

    Args:
        path: the `.npy` file (written by `write_rows`, or `numpy.save`).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        try:
            with open(self.path, "rb") as f:
                version = np.lib.format.read_magic(f)
                read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else (
                    np.lib.format.read_array_header_2_0)
                shape, fortran_order, dtype = read_header(f)
                self.offset = f.tell()
        except (OSError, ValueError) as error:
            raise CorruptFileError(f"Cannot read the array file {self.path!r}: {error}") from error
        if fortran_order or not shape:
            raise CorruptFileError(f"The array file {self.path!r} holds no C-ordered rows. Received: shape={shape}, "
                                   f"fortran_order={fortran_order}")
        self.shape, self.dtype = tuple(int(s) for s in shape), np.dtype(dtype)
        self.row_nbytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        size = os.path.getsize(self.path)
        if size != self.offset + len(self) * self.row_nbytes:
            raise CorruptFileError(f"The array file {self.path!r} has {size} bytes; its header ({self.shape}, "
                                   f"{self.dtype}) says {self.offset + len(self) * self.row_nbytes}.")

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def nbytes(self) -> int:
        return len(self) * self.row_nbytes

    def rows(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """The rows at `indices` (any order, repeats allowed), as one new array."""
        indices = np.asarray(indices, np.int64).reshape(-1)
        if indices.size and (indices.min() < 0 or indices.max() >= len(self)):
            raise IndexError(f"Row indices must be in [0, {len(self)}). Received: min={indices.min()}, "
                             f"max={indices.max()}")
        out = np.empty((len(indices),) + self.shape[1:], self.dtype)
        flat = out.reshape(len(indices), self.row_nbytes // self.dtype.itemsize).view(np.uint8)
        fd = os.open(self.path, os.O_RDONLY)
        try:
            for k, i in enumerate(indices.tolist()):
                if os.preadv(fd, [flat[k]], self.offset + i * self.row_nbytes) != self.row_nbytes:
                    raise CorruptFileError(f"The array file {self.path!r} ended inside row {i}.")
        finally:
            os.close(fd)
        return out


def read_rows(source: np.ndarray | RowFile, indices: np.ndarray) -> np.ndarray:
    """`source[indices]` for an array in memory or a `RowFile`."""
    return source.rows(indices) if isinstance(source, RowFile) else np.asarray(source)[indices]


@contextlib.contextmanager
def write_rows(path: str | os.PathLike, *, rows: int, row_shape: Sequence[int],
               dtype: np.dtype | str = np.float32) -> Iterator[Callable[[np.ndarray], None]]:
    """Yields `append(batch)`; the file at `path` appears, complete, when the block ends.

    Args:
        path: the `.npy` file to write.
        rows: how many rows the batches hold in all (checked at the end).
        row_shape: the shape of one row.
        dtype: the array's dtype (batches are converted to it). Defaults to
            `float32`.
    """
    dtype = np.dtype(dtype)
    row_shape = tuple(int(s) for s in row_shape)
    written = 0
    with files.atomic_path(path, suffix=".npy") as tmp, open(tmp, "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (rows, *row_shape)})

        def append(batch: np.ndarray) -> None:
            nonlocal written
            batch = np.ascontiguousarray(batch, dtype)
            if batch.shape[1:] != row_shape:
                raise ValueError(f"Expected rows of shape {row_shape}. Received: a batch of shape {batch.shape}")
            if written + len(batch) > rows:
                raise ValueError(f"Expected {rows} rows. Received: at least {written + len(batch)}")
            f.write(batch.data)
            written += len(batch)

        yield append
        if written != rows:
            raise ValueError(f"Expected {rows} rows. Received: {written}")
