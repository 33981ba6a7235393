"""One command-line policy: every kind of bad input, on each of the five commands.

Each case must end with exit status 2 and exactly one line on stderr that names
the bad value, and no traceback. The commands run in-process (their `main`)
except where a second process is the point (a folder held by another run).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from conftest import requires_shared
from keras_transfer import _downloads
from keras_transfer.experiments import adversarial, cats_vs_dogs, folder, ideal_class, pets

TRAINING = {"pets": pets.main, "cats_vs_dogs": cats_vs_dogs.main, "folder": folder.main}
ANALYSIS = {"ideal_class": ideal_class.main, "adversarial": adversarial.main}
TINY = ["--backbone", "mobilenet", "--alpha", "0.25", "--weights", "none", "--image-size", "32", "--epochs", "1",
        "--fine-tune-epochs", "0", "--verbose", "0"]


def make_images(root, classes=("a", "b"), count=3) -> str:
    rng = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return str(root)


@pytest.fixture
def places(tmp_path):
    """Paths of every kind of bad input (and one good folder of images)."""
    a_file = tmp_path / "a_file.txt"
    a_file.write_text("not a folder")
    corrupt_h5 = tmp_path / "corrupt.weights.h5"
    corrupt_h5.write_text("not HDF5")
    corrupt_keras = tmp_path / "corrupt.keras"
    corrupt_keras.write_text("not a zip")
    (tmp_path / "empty").mkdir()
    if os.geteuid() == 0:
        read_only = "/sys/kernel/keras_transfer_read_only"  # root writes everywhere else
    else:
        (tmp_path / "read_only").mkdir(mode=0o555)
        read_only = str(tmp_path / "read_only" / "out")
    return {
        "images": make_images(tmp_path / "images"),
        "one_class": make_images(tmp_path / "one_class", classes=("only",)),
        "missing": str(tmp_path / "no_such_folder"),
        "empty": str(tmp_path / "empty"),
        "file": str(a_file),
        "read_only": read_only,
        "corrupt_h5": str(corrupt_h5),
        "corrupt_keras": str(corrupt_keras),
        "not_keras": str(corrupt_h5),
        "out": str(tmp_path / "out"),
    }


def assert_one_line_error(main, argv, needle: str, capsys) -> None:
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (argv, err[-2000:])
    assert len(lines) == 1, (argv, err[-2000:])
    assert "Traceback" not in err
    assert needle in lines[0], (argv, needle, lines[0])


def training_cases(p):
    out = ["--output-dir", p["out"]]
    return [
        (["--data-dir", p["missing"], *TINY, *out], p["missing"]),
        (["--data-dir", p["empty"], *TINY, *out], p["empty"]),
        (["--data-dir", p["one_class"], *TINY, *out], p["one_class"]),
        (["--data-dir", p["images"], *TINY, "--output-dir", p["file"]], p["file"]),
        (["--data-dir", p["images"], *TINY, "--output-dir", p["read_only"]], p["read_only"]),
        (["--data-dir", p["images"], *TINY, *out, "--weights", p["corrupt_h5"]], p["corrupt_h5"]),
        (["--data-dir", p["images"], *TINY, *out, "--backbone", "resnet_9000"], "resnet_9000"),
        (["--data-dir", p["images"], *TINY, *out, "--batch-size", "0"], "--batch-size 0"),
        (["--data-dir", p["images"], *TINY, *out, "--learning-rate", "-1"], "--learning-rate -1"),
        (["--data-dir", p["images"], *TINY, *out, "--fine-tune-epochs", "1", "--fine-tune-at", "no_layer"],
         "no_layer"),
        (["--data-dir", p["images"], *TINY, *out, "--calibrate", "--val-split", "0"], "val_split=0"),
        (["--data-dir", p["images"], *TINY, *out, "--top-k", "0"], "--top-k 0"),
    ]


def analysis_cases(name, p):
    out = ["--output-dir", p["out"]]
    target = ["--class", "tabby"] if name == "ideal_class" else ["--images", p["images"], "--target-class", "tabby"]
    cases = [
        ([*target, "--output-dir", p["file"]], p["file"]),
        ([*target, "--output-dir", p["read_only"]], p["read_only"]),
        ([*target, *out, "--model", p["missing"] + ".keras"], p["missing"]),
        ([*target, *out, "--model", p["corrupt_keras"]], p["corrupt_keras"]),
        ([*target, *out, "--model", p["not_keras"]], p["not_keras"]),
        ([*target, *out, "--backbone", "resnet_9000"], "resnet_9000"),
    ]
    if name == "ideal_class":
        cases += [(["--class", "tabby", *out, "--steps", "0"], "--steps 0")]
    else:
        cases += [([*target, *out, "--eps", "1e6"], "1e6")]
    return cases


def analysis_cases_after_the_model(name, p):
    """Inputs checked against the loaded model (its classes), so they need its ImageNet weights."""
    out = ["--output-dir", p["out"]]
    if name == "ideal_class":
        return [(["--class", "5000", *out], "5000")]
    return [
        (["--images", p["missing"], "--target-class", "tabby", *out], p["missing"]),
        (["--images", p["empty"], "--target-class", "tabby", *out], p["empty"]),
        (["--images", p["images"], "--target-class", "5000", *out], "5000"),
    ]


@pytest.mark.parametrize("name", sorted(TRAINING))
def test_training_commands_report_bad_input_in_one_line(name, places, capsys):
    for argv, needle in training_cases(places):
        if name != "folder" and needle == places["one_class"]:
            continue  # pets/cats_vs_dogs folders have their own layouts; folder checks the class count
        assert_one_line_error(TRAINING[name], argv, needle, capsys)


@pytest.mark.parametrize("name", sorted(ANALYSIS))
def test_analysis_commands_report_bad_input_in_one_line(name, places, capsys):
    for argv, needle in analysis_cases(name, places):
        assert_one_line_error(ANALYSIS[name], argv, needle, capsys)


@pytest.mark.real
@requires_shared
@pytest.mark.parametrize("name", sorted(ANALYSIS))
def test_analysis_commands_report_bad_classes_and_images_in_one_line(name, places, capsys):
    for argv, needle in analysis_cases_after_the_model(name, places):
        assert_one_line_error(ANALYSIS[name], argv, needle, capsys)


def test_missing_weights_offline_is_one_line_on_every_command(places, monkeypatch, capsys):
    monkeypatch.setattr(_downloads, "probe", lambda url, **kwargs: "simulated: no route to host")
    out = ["--output-dir", places["out"]]
    offline = ["--backbone", "mobilenet_v3_small"]
    for main in TRAINING.values():
        argv = ["--data-dir", places["images"], *TINY, *out]
        argv[argv.index("--weights") + 1] = "imagenet"
        assert_one_line_error(main, [*argv, *offline], "mobilenet_v3_small", capsys)
    assert_one_line_error(ideal_class.main, ["--class", "tabby", *out, *offline], "mobilenet_v3_small", capsys)
    assert_one_line_error(adversarial.main, ["--images", places["images"], "--target-class", "tabby", *out, *offline],
                          "mobilenet_v3_small", capsys)


HOLDER = textwrap.dedent(
    """
    import fcntl, os, sys, time
    fd = os.open(os.path.join(sys.argv[1], ".lock"), os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(fd, f"process {os.getpid()} (test holder)".encode())
    print("held", flush=True)
    time.sleep(120)
    """
)


def test_a_second_run_into_a_folder_in_use_is_refused_on_every_command(places, capsys):
    os.makedirs(places["out"])
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, places["out"]], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        out = ["--output-dir", places["out"]]
        for main in TRAINING.values():
            assert_one_line_error(main, ["--data-dir", places["images"], *TINY, *out], f"process {holder.pid}", capsys)
        assert_one_line_error(ideal_class.main, ["--class", "tabby", *out], f"process {holder.pid}", capsys)
        assert_one_line_error(adversarial.main, ["--images", places["images"], "--target-class", "tabby", *out],
                              f"process {holder.pid}", capsys)
    finally:
        holder.kill()
        holder.wait()
    # A lock left by a killed process blocks nothing: the folder is free again.
    from keras_transfer.run_folder import folder_lock

    with folder_lock(places["out"]):
        pass


@pytest.mark.parametrize("name", ["predict", "export", "explain", "corruptions", "adversarial", "folder"])
def test_help_gives_required_flags_no_default(name, capsys):
    """A required flag (--output, --output-dir, --data, folder's --data-dir) has no default to show."""
    import importlib

    module = importlib.import_module(f"keras_transfer.experiments.{name}")
    parser = module.COMMAND.build_parser() if name == "folder" else module.build_parser()
    required = [action for action in parser._actions if action.required]
    assert required
    for action in required:
        entry = parser._get_formatter()._format_action(action)
        assert "(default:" not in entry, entry
