"""A kill at any write loses nothing: the same command then finishes with the model intact.

Each case runs the `folder` command in a subprocess that SIGKILLs itself in the
middle of one kind of write (tests/_kill_at_write.py), then runs the same
command again and checks that it finishes, that the model loads and predicts,
and that the histories hold every epoch once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import keras_transfer as kt

HERE = os.path.dirname(os.path.abspath(__file__))
EPOCHS, FINE_TUNE_EPOCHS = 3, 2


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> str:
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("crash") / "images"
    for channel, name in enumerate(("red", "green", "blue")):
        (root / name).mkdir(parents=True)
        for i in range(8):
            pixels = 70 + rng.normal(0, 15, (32, 32, 3))
            pixels[..., channel] += 120
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(root / name / f"{i}.png")
    return str(root)


def command(image_folder: str, out, weights: str) -> list[str]:
    return [
        "--data-dir", image_folder, "--output-dir", str(out), "--backbone", "mobilenet", "--alpha", "0.25",
        "--weights", weights, "--image-size", "32", "--batch-size", "8", "--epochs", str(EPOCHS),
        "--fine-tune-epochs", str(FINE_TUNE_EPOCHS), "--learning-rate", "0.01", "--verbose", "0",
        "--tensorboard-images-every", "0",
    ]


def run(args: list[str], *, kill_at: tuple[str, int] | None = None) -> subprocess.CompletedProcess:
    module = "keras_transfer.experiments.folder"
    if kill_at is None:
        argv = [sys.executable, "-m", module, *args]
    else:
        argv = [sys.executable, os.path.join(HERE, "_kill_at_write.py"), kill_at[0], str(kill_at[1]), module, *args]
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONPATH=os.path.dirname(HERE))
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)


def assert_finished_intact(out) -> None:
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["phases"]["head"]["history"]["epoch"] == list(range(EPOCHS))
    assert metrics["phases"]["fine_tune"]["history"]["epoch"] == list(range(EPOCHS, EPOCHS + FINE_TUNE_EPOCHS))
    model = kt.load_model(out / "model.keras")
    images = np.random.default_rng(1).uniform(0, 255, (3, 32, 32, 3)).astype(np.float32)
    logits = model.predict(images, verbose=0)
    assert logits.shape == (3, 3) and np.all(np.isfinite(logits))
    assert metrics["final"]["val"]["accuracy"] >= 0.5  # chance is 1/3


@pytest.mark.slow
@pytest.mark.parametrize(
    "pattern, nth",
    [
        ("initial.weights.h5", 1),  # the starting weights
        ("features.npz", 1),  # phase 1's cached features
        ("epoch_", 2),  # the backup after the second epoch
        ("history_head", 2),  # the record that commits it
        ("bottom_val", 1),  # phase 2's cached bottom outputs (the last of phase 1's pass)
        ("model.keras", 1),  # the final model
    ],
)
def test_killed_during_a_write_the_same_command_finishes(image_folder, tiny_backbone_weights, tmp_path, pattern, nth):
    out = tmp_path / "run"
    args = command(image_folder, out, tiny_backbone_weights)
    killed = run(args, kill_at=(pattern, nth))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert "KILLED writing" in killed.stderr
    resumed = run(args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_finished_intact(out)


@pytest.mark.slow
def test_killed_while_a_finished_run_is_run_again_the_model_stays(image_folder, tiny_backbone_weights, tmp_path):
    out = tmp_path / "run"
    args = command(image_folder, out, tiny_backbone_weights)
    assert run(args).returncode == 0
    model_bytes = (out / "model.keras").read_bytes()
    (out / "confusion_matrix.png").unlink()  # the re-run draws what is missing, and is killed doing it
    killed = run(args, kill_at=("confusion_matrix.png", 1))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert (out / "model.keras").read_bytes() == model_bytes  # a finished run is never rewritten
    again = run(args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (out / "model.keras").read_bytes() == model_bytes
    assert (out / "confusion_matrix.png").is_file()
    assert_finished_intact(out)


# --- Review: run-folder round trips and atomic writes (fast unit cases) ---------------------------------------------


class _FakeWeights:
    """Stands in for a model in `RunFolder.save_epoch` (only `save_weights` is called)."""

    def save_weights(self, path):
        with open(path, "w") as f:
            f.write("weights")


def test_a_non_finite_record_stays_non_finite_after_a_resumption(tmp_path):
    from keras_transfer import phases
    from keras_transfer.run_folder import RunFolder

    run = RunFolder(tmp_path / "run")
    run.prepare()
    records = {0: {"loss": 0.5, "val_loss": 0.7}, 1: {"loss": float("nan"), "val_loss": float("inf")}}
    run.save_epoch("head", records, _FakeWeights(), 1)
    loaded, _ = run.load_history("head")
    assert loaded[0] == records[0]
    assert np.isnan(loaded[1]["loss"]) and not np.isfinite(loaded[1]["val_loss"])
    # what a resumed phase does with them: the diverged loss is still an error, the rest still works
    with pytest.raises(FloatingPointError, match="became nan in epoch 2"):
        phases.check_finite("head", loaded, 0.1)
    assert phases.EarlyStop(3).best(loaded) == 0
    assert phases.history_from_records(loaded)["epoch"] == [0, 1]


def test_a_diverged_phase_run_again_in_its_folder_still_reports_the_divergence(tmp_path):
    import keras

    from keras_transfer import phases
    from keras_transfer.run_folder import RunFolder

    rng = np.random.default_rng(0)
    features = rng.normal(size=(16, 4)).astype(np.float32)
    features[3, 1] = np.nan  # a broken feature makes the loss NaN
    labels = rng.integers(0, 2, 16)

    def plan():
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
        return phases.PhasePlan("head", model, phases.feature_batches(features, labels, batch_size=8, shuffle=True),
                                None, 0, 1, phases.Optimization(0.01))

    run = RunFolder(tmp_path / "run")
    run.prepare()
    options = phases.FitOptions(verbose=0)
    with pytest.raises(FloatingPointError):
        phases.run_phase(plan(), options=options, run=run)
    with pytest.raises(FloatingPointError):  # the same call again: the committed NaN epoch is not taken as good
        phases.run_phase(plan(), options=options, run=run)


def test_prepare_removes_a_temporary_folder_an_interrupted_export_left(tmp_path):
    from keras_transfer import files
    from keras_transfer.run_folder import RunFolder

    root = tmp_path / "run"
    root.mkdir()
    left = root / ".saved_model.abcd_123.tmp"  # as `files.atomic_dir` names it
    (left / "variables").mkdir(parents=True)
    (left / "saved_model.pb").write_bytes(b"half")
    assert files.is_temporary(left.name)
    (root / "notes.txt").write_text("the user's")
    RunFolder(root).prepare()
    assert sorted(p.name for p in root.iterdir()) == ["notes.txt", "state"]


def test_json_keeps_numpy_booleans_as_booleans(tmp_path):
    from keras_transfer import files

    value = {"improved": np.bool_(False), "flags": np.array([True, False])}
    files.write_json(tmp_path / "a.json", value)
    assert files.read_json(tmp_path / "a.json") == {"improved": False, "flags": [True, False]}
    assert files.jsonable(np.bool_(True)) is True


def test_atomically_written_files_and_folders_get_the_permissions_of_a_plain_write(tmp_path):
    from keras_transfer import files

    plain_file, plain_dir = tmp_path / "plain.json", tmp_path / "plain_dir"
    plain_file.write_text("1")
    plain_dir.mkdir()
    files.write_json(tmp_path / "a.json", 1)
    with files.atomic_dir(tmp_path / "folder") as tmp:
        with open(os.path.join(tmp, "x.txt"), "w") as f:
            f.write("x")
    assert (tmp_path / "a.json").stat().st_mode == plain_file.stat().st_mode
    assert (tmp_path / "folder").stat().st_mode == plain_dir.stat().st_mode


def test_a_row_file_reads_an_empty_selection_of_rows(tmp_path):
    from keras_transfer.row_files import RowFile, write_rows

    with write_rows(tmp_path / "a.npy", rows=3, row_shape=(2, 2)) as append:
        append(np.ones((3, 2, 2)))
    assert RowFile(tmp_path / "a.npy").rows([]).shape == (0, 2, 2)


def test_replacing_a_folder_never_leaves_it_missing(tmp_path, monkeypatch):
    from keras_transfer import files

    path = tmp_path / "export"
    path.mkdir()
    (path / "model.txt").write_text("old")
    calls = []
    real_replace = os.replace

    def replace_then_die(src, dst):  # a kill right after the first rename of the swap
        calls.append((src, dst))
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace_then_die)
    with pytest.raises(KeyboardInterrupt):
        with files.atomic_dir(path) as tmp:
            with open(os.path.join(tmp, "model.txt"), "w") as f:
                f.write("new")
        raise KeyboardInterrupt("the swap needed no second rename")
    assert (path / "model.txt").read_text() in ("old", "new")


def test_clearing_the_state_interrupted_midway_leaves_no_half_state(tmp_path, monkeypatch):
    import shutil

    from keras_transfer.run_folder import RunFolder

    run = RunFolder(tmp_path / "run")
    run.prepare()
    run.save_state({"fingerprint": {"train": {}}, "phases": {"head": {"complete": True}}, "complete": True})
    run.save_epoch("head", {0: {"loss": 0.5}}, _FakeWeights(), 0)
    run.drop_backups("head")  # as a finished run leaves it: the history names a backup no longer there
    real_rmtree = shutil.rmtree

    def rmtree_cut_short(path, *args, **kwargs):  # a kill after the first file removed
        for name in sorted(os.listdir(path), reverse=True):  # "run.json" before "history_head.json"
            if os.path.isfile(os.path.join(path, name)):
                os.remove(os.path.join(path, name))
                raise KeyboardInterrupt("killed")
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", rmtree_cut_short)
    with pytest.raises(KeyboardInterrupt):
        run.clear_state()
    monkeypatch.setattr(shutil, "rmtree", real_rmtree)
    again = RunFolder(tmp_path / "run")
    again.prepare()
    # either all of the old state or none of it: no history of a run whose state is gone
    if not again.load_state():
        assert again.load_history("head") == ({}, None)
