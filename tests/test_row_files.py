"""Row files: phase 2's cached bottom outputs on disk, read a batch of rows at a time."""

from __future__ import annotations

import numpy as np
import pytest

from keras_transfer import phases
from keras_transfer.errors import CorruptFileError
from keras_transfer.row_files import RowFile, write_rows


def written(path, array: np.ndarray, *, pieces: int = 3) -> RowFile:
    with write_rows(path, rows=len(array), row_shape=array.shape[1:]) as append:
        for piece in np.array_split(array, pieces):
            append(piece)
    return RowFile(path)


def test_rows_read_back_in_any_order_and_the_file_is_a_plain_npy(tmp_path):
    array = np.random.default_rng(0).normal(size=(23, 4, 3)).astype(np.float32)
    rows = written(tmp_path / "a.npy", array)
    assert rows.shape == (23, 4, 3) and len(rows) == 23 and rows.nbytes == array.nbytes
    picks = np.array([22, 0, 5, 5, 17])
    np.testing.assert_array_equal(rows.rows(picks), array[picks])
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), array)
    with pytest.raises(IndexError, match=r"\[0, 23\). Received: min=0, max=23"):
        rows.rows([0, 23])


def test_an_incomplete_write_leaves_no_file_and_a_cut_file_is_reported(tmp_path):
    path = tmp_path / "a.npy"
    with pytest.raises(ValueError, match="Expected 10 rows. Received: 4"):
        with write_rows(path, rows=10, row_shape=(2,)) as append:
            append(np.zeros((4, 2)))
    assert list(tmp_path.iterdir()) == []
    written(path, np.ones((10, 2), np.float32))
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 8)
    with pytest.raises(CorruptFileError, match="a.npy' has .* bytes; its header"):
        RowFile(path)


def test_batches_from_row_files_are_those_from_the_arrays(tmp_path):
    rng = np.random.default_rng(1)
    views = [rng.normal(size=(37, 5)).astype(np.float32) for _ in range(2)]
    labels = rng.integers(0, 4, 37)
    files = [written(tmp_path / f"v{i}.npy", v) for i, v in enumerate(views)]
    in_memory = phases.view_batches(views, labels, batch_size=8, seed=2)
    on_disk = phases.view_batches(files, labels, batch_size=8, seed=2)
    # a new shuffle and new view draws every epoch, the same on both
    for (x0, y0), (x1, y1) in zip(in_memory.epochs(0, 2), on_disk.epochs(0, 2), strict=True):
        np.testing.assert_array_equal(x0.numpy(), x1.numpy())
        np.testing.assert_array_equal(y0.numpy(), y1.numpy())
    ordered = np.concatenate([x.numpy() for x, _ in phases.row_batches(files[1], labels, batch_size=8)])
    np.testing.assert_array_equal(ordered, views[1])
