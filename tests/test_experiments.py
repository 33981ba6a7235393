"""The experiment command lines: flags, configuration, errors, and a full `folder` run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import keras_transfer as kt
from keras_transfer import _downloads
from keras_transfer.experiments import _common, cats_vs_dogs, folder, pets

COMMON_FLAGS = (
    "--data-dir", "--backbone", "--alpha", "--weights", "--image-size", "--batch-size", "--epochs",
    "--fine-tune-epochs", "--fine-tune-at", "--adversarial-eps", "--adversarial-steps", "--learning-rate", "--fine-tune-learning-rate", "--val-split", "--seed",
    "--mixed-precision", "--jit-compile", "--strategy", "--output-dir", "--overwrite", "--cache-features",
    "--no-cache-features", "--augment", "--no-augment", "--resize", "--data-cache", "--dropout", "--pooling",
    "--train-batchnorm", "--early-stopping", "--tensorboard-images-every", "--feature-map-layer", "--verbose",
)
PNG_SIGNATURE = b"\x89PNG"


@pytest.fixture
def image_folder(tmp_path) -> str:
    """3 colour classes x 8 images (JPEG and PNG, not square), one broken file, one text file."""
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    for label, name in enumerate(("blue", "green", "red")):
        channel = {"red": 0, "green": 1, "blue": 2}[name]
        (root / name).mkdir(parents=True)
        for i in range(8):
            pixels = 70 + rng.uniform(-25, 25, (1, 1, 3)) + rng.normal(0, 15, (40, 48, 3))
            pixels[..., channel] += 120
            image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
            image.save(root / name / f"{i}.{'png' if i % 2 else 'jpg'}")
    (root / "red" / "broken.jpg").write_bytes(b"this is not a JPEG")
    (root / "README.txt").write_text("not an image")
    return str(root)


def test_help_documents_every_flag():
    for module, extra in ((folder, ()), (pets, ("--tfds-data-dir", "--target")), (cats_vs_dogs, ("--tfds-data-dir",))):
        text = module.build_parser().format_help()
        for flag in COMMON_FLAGS + extra:
            assert flag in text, (module.__name__, flag)
        # Every option has a help text.
        for action in module.build_parser()._actions:
            assert action.help, action.option_strings
    command = [sys.executable, "-m", "keras_transfer.experiments.folder", "--help"]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    assert "--fine-tune-at" in proc.stdout and "model.keras" in proc.stdout


def test_flags_become_the_configuration(tmp_path):
    weights = tmp_path / "backbone.weights.h5"
    weights.write_bytes(b"")  # only its existence is checked here; its content when the model is built
    args = folder.build_parser().parse_args([
        "--data-dir", "x", "--backbone", "MobileNetV2", "--alpha", "0.35", "--weights", str(weights),
        "--image-size", "96", "--fine-tune-at", "-20", "--no-augment", "--no-cache-features",
        "--mixed-precision", "auto", "--jit-compile", "--strategy", "mirrored", "--early-stopping", "3",
        "--data-cache", "none", "--resize", "crop", "--val-split", "0.1", "--output-dir", str(tmp_path / "out"),
    ])
    config = folder.COMMAND.config_from_args(args)
    assert config.train.backbone == "MobileNetV2" and config.train.alpha == 0.35
    assert config.train.weights == str(weights)
    assert config.train.fine_tune_at == -20
    assert not config.train.augment and not config.train.cache_features
    assert config.train.mixed_precision == "auto" and config.train.jit_compile and config.train.strategy == "mirrored"
    assert config.train.early_stopping_patience == 3
    assert config.image_size == 96
    assert config.data.cache == "none" and config.data.resize == "crop" and config.data.val_split == 0.1

    defaults = folder.COMMAND.config_from_args(folder.build_parser().parse_args(["--data-dir", "x"]))
    assert defaults.image_size == 224 and defaults.train.weights == "imagenet" and defaults.train.augment
    assert defaults.data.cache == "auto" and defaults.output_dir == os.path.join("runs", "folder")
    named = folder.build_parser().parse_args(
        ["--data-dir", "x", "--fine-tune-at", "block_13_expand", "--weights", "none"]
    )
    assert folder.COMMAND.config_from_args(named).train.fine_tune_at == "block_13_expand"
    assert named.weights is None


def test_bad_flags_exit_with_a_usage_error(capsys):
    parser = folder.build_parser()
    for argv, message in (
        (["--data-dir", "x", "--val-split", "1.5"], "expected a number >= 0 and < 1. Received: --val-split 1.5"),
        (["--data-dir", "x", "--strategy", "tpu"], "expected one of 'default', 'mirrored', 'multi_worker'"),
        (["--backbone", "mobilenet"], "the following arguments are required: --data-dir"),
    ):
        assert folder.main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    # Values checked by the configuration: same status, one line.
    for argv, message in (
        (["--data-dir", "x", "--weights", "no/such/file.h5"], "Received: weights='no/such/file.h5'"),
        (["--data-dir", "x", "--backbone", "mobilenett"], "Unknown backbone"),
        (["--data-dir", "x", "--adversarial-eps", "300"], "Received: adversarial_eps=300"),
    ):
        assert folder.main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert parser.prog.endswith("folder")


@pytest.mark.slow
def test_folder_cli_writes_every_promised_file(image_folder, tmp_path, capsys):
    out = tmp_path / "run"
    argv = [
        "--data-dir", image_folder, "--output-dir", str(out), "--backbone", "mobilenet", "--alpha", "0.25",
        "--weights", "none", "--image-size", "32", "--val-split", "0.25", "--batch-size", "8", "--epochs", "2",
        "--fine-tune-epochs", "1", "--verbose", "0",
    ]
    assert folder.main(argv) == 0
    printed = capsys.readouterr().out
    assert "3 classes, train 18, val 6 images; 1 skipped, 1 ignored" in printed

    for name in ("model.keras", "classes.json", "metrics.json", *_common.PLOT_FILES.values()):
        assert (out / name).is_file(), name
    for name in _common.PLOT_FILES.values():
        assert (out / name).read_bytes()[:4] == PNG_SIGNATURE
    assert json.loads((out / "classes.json").read_text()) == ["blue", "green", "red"]

    model = kt.load_model(out / "model.keras")
    assert tuple(model.input_shape) == (None, 32, 32, 3)
    logits = model.predict(np.full((2, 32, 32, 3), 255.0, np.float32), verbose=0)
    assert logits.shape == (2, 3) and logits.dtype == np.float32

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data"]["skipped"] == 1 and metrics["data"]["skipped_files"] == [os.path.join("red", "broken.jpg")]
    assert metrics["data"]["ignored"] == 1 and metrics["data"]["used"]["train"] == 18
    for phase, epochs in (("head", [0, 1]), ("fine_tune", [2])):
        info = metrics["phases"][phase]
        assert info["history"]["epoch"] == epochs
        for split in ("train", "val"):
            assert set(info["final"][split]) == {"loss", "accuracy", "ece"}
    assert set(metrics["per_class_val_accuracy"]) == {"blue", "green", "red"}
    assert metrics["wall_time_s"] > 0
    assert metrics["config"]["dataset"] == "folder"
    assert metrics["config"]["data"]["image_size"] == 32
    assert metrics["config"]["train"]["backbone"] == "mobilenet" and metrics["config"]["train"]["weights"] is None
    assert os.listdir(out / "tensorboard" / "train") and os.listdir(out / "tensorboard" / "validation")

    # A different configuration in the same folder is refused with one message...
    assert folder.main([*argv, "--epochs", "3"]) == 2
    err = capsys.readouterr().err
    assert "epochs: saved 2, now 3" in err and "--overwrite" in err and "Traceback" not in err
    # ...and --overwrite clears only the run's own files.
    (out / "notes.txt").write_text("mine")
    _common.clear_outputs(str(out))
    assert sorted(os.listdir(out)) == [".lock", "notes.txt"]  # the lock file stays: runs exclude each other by it


def test_offline_weights_give_one_clean_error(image_folder, tmp_path, monkeypatch, capsys):
    # Simulate an offline machine, whatever this one is: the download probe fails.
    monkeypatch.setattr(_downloads, "probe", lambda url, **kwargs: "simulated: no route to host")
    argv = [
        "--data-dir", image_folder, "--output-dir", str(tmp_path / "run"), "--backbone", "mobilenet_v3_small",
        "--image-size", "32", "--epochs", "1", "--fine-tune-epochs", "0", "--verbose", "0",
    ]
    assert folder.main(argv) == 2
    err = capsys.readouterr().err
    assert "Cannot download the ImageNet weights of 'mobilenet_v3_small'" in err
    assert "simulated: no route to host" in err and "--weights PATH" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    # Reported before any image was decoded: the run folder holds nothing of a run.
    assert not (tmp_path / "run" / "state").exists()


def test_interrupted_cli_says_how_to_resume(monkeypatch, capsys):
    def interrupted(config, load):
        raise KeyboardInterrupt

    monkeypatch.setattr(_common, "run_experiment", interrupted)
    assert folder.main(["--data-dir", "x"]) == 130
    assert "Run the same command again to continue" in capsys.readouterr().err


def test_evaluation_with_a_temperature_not_above_zero_is_a_clear_error():
    from keras_transfer import evaluation

    e = evaluation.Evaluation(logits=np.array([[2.0, 0.0], [0.0, 1.0]], np.float32), labels=np.array([0, 0]),
                              class_names=("a", "b"))
    assert e.with_temperature(2.0).logits[0, 0] == 1.0
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match=r"temperature.*" + ("nan" if bad != bad else str(bad))):
            e.with_temperature(bad)
