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
