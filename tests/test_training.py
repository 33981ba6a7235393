"""Two-phase training, resumption, TensorBoard logs, distribution, mixed precision, plots.

Every run uses a tiny MobileNet (alpha 0.25, 32 px) on synthetic images whose
class is a colour. A randomly initialized deep backbone shrinks its features
geometrically with depth (to ~1e-17 here) without destroying them, so the
`backbone_weights` fixture rescales the last BatchNormalization layer of a
random backbone on the data, the way a pretrained backbone's moving statistics
keep its features at unit scale. Nothing here needs the real weights.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_transfer as kt
from keras_transfer import data as data_lib
from keras_transfer import models as models_lib
from keras_transfer import training
from keras_transfer.experiments import _common, folder
from keras_transfer.plotting import training as plots

from helpers import CLASSES, SIZE, synthetic_images



def image_data(n_train: int = 48, n_val: int = 30, *, test: bool = False) -> data_lib.ImageData:
    x_train, y_train = synthetic_images(n_train, seed=1)
    x_val, y_val = synthetic_images(n_val, seed=2)
    splits = {"train": n_train, "val": n_val, "test": 0}
    test_ds = None
    if test:
        x_test, y_test = synthetic_images(n_val, seed=3)
        test_ds = tf.data.Dataset.from_tensor_slices((x_test, y_test))
        splits["test"] = n_val
    report = data_lib.DataReport(
        source="synthetic", found=sum(splits.values()), used=splits, skipped=0, skipped_files=[], ignored=0,
        per_class={},
    )
    return data_lib.ImageData(
        train=tf.data.Dataset.from_tensor_slices((x_train, y_train)),
        val=tf.data.Dataset.from_tensor_slices((x_val, y_val)),
        test=test_ds,
        class_names=CLASSES,
        image_size=SIZE,
        report=report,
    )


def tiny_config(weights: str | None, **overrides) -> training.TrainConfig:
    values = dict(
        backbone="mobilenet", alpha=0.25, weights=weights, batch_size=16, epochs=3, fine_tune_epochs=2,
        learning_rate=1e-2, fine_tune_learning_rate=1e-4, augment=False, verbose=0, tensorboard_images_every=0,
        early_stopping_patience=0,
        # Phase 2 on images at one rate, unaveraged: what these tests exercise unless they say otherwise (a few
        # steps of EMA 0.99 would barely leave the head's weights; the defaults run in test_crash_safety).
        cache_bottom=False, fine_tune_schedule="constant", warmup_epochs=0, ema_momentum=0.0,
    )
    values.update(overrides)
    return training.TrainConfig(**values)


class Interrupt(keras.callbacks.Callback):
    """Raises at the start of one epoch, like a killed job."""

    def __init__(self, epoch: int):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise KeyboardInterrupt(f"interrupted at epoch {epoch}")


class EpochsSeen(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.epochs: list[int] = []

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append(epoch)


def read_events(directory: str) -> dict[str, dict[int, object]]:
    """{tag: {step: value}} of every event file in `directory` (not recursive)."""
    found: dict[str, dict[int, object]] = {}
    for path in sorted(glob.glob(os.path.join(directory, "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                plugin = value.metadata.plugin_data.plugin_name
                if plugin == "images":
                    content = tf.make_ndarray(value.tensor)  # [width, height, png...]
                    found.setdefault(value.tag, {})[event.step] = content
                elif plugin == "scalars" or value.HasField("simple_value"):
                    number = value.simple_value if value.HasField("simple_value") else tf.make_ndarray(value.tensor)
                    found.setdefault(value.tag, {})[event.step] = float(number)
                else:
                    found.setdefault(value.tag, {})[event.step] = plugin
    return found


def backbone_state(model: keras.Model) -> dict[str, np.ndarray]:
    backbone = models_lib.get_backbone(model)
    return {v.path: np.array(v.numpy()) for v in backbone.weights}


# ---------------------------------------------------------------------------


def test_config_rejects_bad_values_and_names_them():
    with pytest.raises(ValueError, match="batch_size=0"):
        training.TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="mixed_precision='float8'"):
        training.TrainConfig(mixed_precision="float8")
    with pytest.raises(ValueError, match="strategy='tpu'"):
        training.TrainConfig(strategy="tpu")
    with pytest.raises(ValueError, match="learning_rate=-1"):
        training.TrainConfig(learning_rate=-1)
    with pytest.raises(ValueError, match="epochs=0, fine_tune_epochs=0"):
        training.TrainConfig(epochs=0, fine_tune_epochs=0)
    with pytest.raises(ValueError, match="Unknown backbone"):
        training.TrainConfig(backbone="mobilenett")
    assert training.resolve_mixed_precision("auto") == (
        "mixed_float16" if tf.config.list_logical_devices("GPU") else "mixed_bfloat16"
    )
    assert training.resolve_mixed_precision("off") is None


def test_confusion_matrix_and_per_class_accuracy():
    cm = training.confusion_matrix([0, 0, 1, 1, 2], [0, 1, 1, 1, 0], 3)
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 2, 0], [1, 0, 0]])
    assert training.per_class_accuracy(cm, ["a", "b", "c"]) == {"a": 0.5, "b": 1.0, "c": 0.0}
    assert training.per_class_accuracy(np.zeros((2, 2), int), ["a", "b"]) == {"a": None, "b": None}
    with pytest.raises(ValueError, match=r"labels in \[0, 3\)"):
        training.confusion_matrix([3], [0], 3)


def test_grid_images_are_spread_over_the_split():
    np.testing.assert_array_equal(training.grid_indices(5), [0, 1, 2, 3, 4])
    spread = training.grid_indices(30, 16)
    assert len(spread) == 16 and spread[0] == 0 and spread[-1] == 29 and np.all(np.diff(spread) > 0)
    images, _ = synthetic_images(10, seed=0)
    ds = tf.data.Dataset.from_tensor_slices((images, np.arange(10)))
    np.testing.assert_array_equal(training.images_at(ds, [7, 2]), images[[7, 2]])


@pytest.mark.slow
def test_two_phase_run_learns_logs_and_saves(backbone_weights, tmp_path):
    out = tmp_path / "run"
    config = tiny_config(backbone_weights, tensorboard_images_every=1, fine_tune_at=-12)
    initial = backbone_state(
        kt.build_classifier("mobilenet", alpha=0.25, num_classes=3, image_size=SIZE, weights=backbone_weights)
    )
    result = training.train(image_data(test=True), config, output_dir=out, run_info={"dataset": "synthetic"})

    # Accuracy rises on the easy task: chance is 1/3.
    head = result.history["head"]
    assert head["epoch"] == [0, 1, 2]
    assert head["loss"][-1] < 0.5 * head["loss"][0]
    assert result.metrics["final"]["val"]["accuracy"] >= 0.9
    assert result.metrics["final"]["test"]["accuracy"] >= 0.9
    assert result.history["fine_tune"]["epoch"] == [3, 4]
    assert result.fine_tune_start == 3
    np.testing.assert_allclose(result.history["head"]["learning_rate"], 1e-2, rtol=1e-6)
    np.testing.assert_allclose(result.history["fine_tune"]["learning_rate"], 1e-4, rtol=1e-6)

    # Fine-tuning changed the top of the backbone but no BatchNormalization
    # moving statistics (the backbone runs in inference mode), and nothing below.
    final = backbone_state(result.model)
    backbone = models_lib.get_backbone(result.model)
    first_trainable = len(backbone.layers) - 12
    changed = {p for p in final if not np.array_equal(final[p], initial[p])}
    assert changed, "fine-tuning changed no backbone weight"
    moving = [p for p in final if "moving_" in p]
    assert moving and not changed.intersection(moving)
    lower = {v.path for layer in backbone.layers[:first_trainable] for v in layer.weights}
    assert not changed.intersection(lower)

    # Outputs on disk.
    for name in ("model.keras", "classes.json", "metrics.json"):
        assert (out / name).is_file(), name
    assert json.loads((out / "classes.json").read_text()) == list(CLASSES)
    metrics = json.loads((out / "metrics.json").read_text())
    for phase in ("head", "fine_tune"):
        assert set(metrics["phases"][phase]["final"]) == {"train", "val"}
        assert 0.0 <= metrics["phases"][phase]["final"]["train"]["accuracy"] <= 1.0
    assert metrics["phases"]["head"]["cached_features"] is True
    for phase in ("head", "fine_tune"):  # what the pictures cost is measured, and part of the phase's time
        assert 0 < metrics["phases"][phase]["tensorboard_images_s"] < metrics["phases"][phase]["wall_time_s"]
    assert metrics["phases"]["head"]["feature_extraction_s"] > 0
    assert set(metrics["per_class_val_accuracy"]) == set(CLASSES)
    assert np.sum(metrics["val_confusion_matrix"]) == 30
    assert metrics["data"]["used"] == {"train": 48, "val": 30, "test": 30}
    assert metrics["config"]["train"]["epochs"] == 3 and metrics["config"]["dataset"] == "synthetic"
    assert metrics["wall_time_s"] > 0

    # The saved model predicts exactly like the trained one.
    images, _ = synthetic_images(8, seed=9)
    loaded = kt.load_model(out / "model.keras")
    np.testing.assert_allclose(loaded.predict(images, verbose=0), result.model.predict(images, verbose=0), atol=1e-6)
    # To train on: the optimizer comes back too, without Keras' unbuilt-optimizer warning.
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        assert kt.load_model(out / "model.keras", compile=True).optimizer is not None

    # TensorBoard: scalars of both phases on one axis, images every epoch, hparams.
    train_events = read_events(str(out / "tensorboard" / "train"))
    val_events = read_events(str(out / "tensorboard" / "validation"))
    for tag in ("epoch_loss", "epoch_accuracy", "epoch_learning_rate"):
        assert sorted(train_events[tag]) == [0, 1, 2, 3, 4], tag
    assert train_events["epoch_learning_rate"][2] == pytest.approx(1e-2)
    assert train_events["epoch_learning_rate"][3] == pytest.approx(1e-4)
    assert train_events["epoch_loss"][2] == pytest.approx(head["loss"][2], rel=1e-5)
    for tag in ("epoch_loss", "epoch_accuracy"):
        assert sorted(val_events[tag]) == [0, 1, 2, 3, 4], tag
    for tag in ("confusion_matrix", "predictions"):
        assert sorted(val_events[tag]) == [0, 1, 2, 3, 4], tag
        png = val_events[tag][4][2]
        assert png.startswith(b"\x89PNG")
        assert int(val_events[tag][4][0]) > 100  # width
    root_events = read_events(str(out / "tensorboard"))
    assert "_hparams_/session_start_info" in root_events
    assert "_hparams_/experiment" in root_events


@pytest.mark.slow
def test_interrupted_run_resumes_from_its_last_epoch(backbone_weights, tmp_path):
    out = tmp_path / "run"
    config = tiny_config(backbone_weights, epochs=3, fine_tune_epochs=3)
    data = image_data()

    # Killed in the cached-feature head phase at epoch 2 (epochs 0 and 1 done).
    with pytest.raises(KeyboardInterrupt):
        training.train(data, config, output_dir=out, callbacks=[Interrupt(2)])
    assert (out / "state" / "features.npz").is_file()
    assert not (out / "model.keras").exists()

    # Resumed: the head phase continues at epoch 2 on the features saved on
    # disk, then fine-tuning is killed at epoch 4 (epochs 3 done).
    seen = EpochsSeen()
    with pytest.raises(KeyboardInterrupt):
        training.train(data, config, output_dir=out, callbacks=[seen, Interrupt(4)])
    assert seen.epochs == [2, 3, 4]
    state = json.loads((out / "state" / "run.json").read_text())
    assert state["phases"]["head"]["complete"] and state["phases"]["head"]["features_from_disk"]

    # Resumed again: straight to fine-tuning, at epoch 4.
    seen = EpochsSeen()
    result = training.train(data, config, output_dir=out, callbacks=[seen])
    assert seen.epochs == [4, 5]
    assert result.history["head"]["epoch"] == [0, 1, 2]
    assert result.history["fine_tune"]["epoch"] == [3, 4, 5]
    assert result.metrics["resumed_at"] == {"head": 3, "fine_tune": 1}
    assert result.metrics["phases"]["head"]["final"]["val"]["accuracy"] >= 0.9
    # Fine-tuning the top of a random 32 px backbone is noisy: 27/30 seen here.
    assert result.metrics["final"]["val"]["accuracy"] >= 0.8
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["phases"]["fine_tune"]["history"]["epoch"] == [3, 4, 5]
    train_events = read_events(str(out / "tensorboard" / "train"))
    assert sorted(train_events["epoch_loss"]) == [0, 1, 2, 3, 4, 5]
    # Resume state is cleaned up; the model on disk is the final one.
    assert not (out / "state" / "features.npz").exists()
    assert not list((out / "state").glob("backup_*"))
    images, _ = synthetic_images(6, seed=4)
    reloaded = kt.load_model(out / "model.keras")
    np.testing.assert_allclose(reloaded.predict(images, verbose=0), result.model.predict(images, verbose=0), atol=1e-6)

    # A finished run is evaluated again, not retrained...
    seen = EpochsSeen()
    again = training.train(data, config, output_dir=out, callbacks=[seen])
    assert seen.epochs == []
    assert again.metrics["final"]["val"]["accuracy"] == pytest.approx(result.metrics["final"]["val"]["accuracy"])
    # ...and another configuration refuses to reuse the folder.
    with pytest.raises(training.ResumeMismatchError, match="fine_tune_epochs: saved 3, now 4"):
        training.train(data, tiny_config(backbone_weights, epochs=3, fine_tune_epochs=4), output_dir=out)


def test_a_resumed_run_ends_on_the_weights_of_an_uninterrupted_one(backbone_weights, tmp_path):
    # Every epoch is shuffled as the uninterrupted run shuffled it, so a kill costs time, not a different model.
    config = tiny_config(backbone_weights, epochs=3, fine_tune_epochs=3)
    data = image_data()
    whole = training.train(data, config, output_dir=tmp_path / "whole")
    out = tmp_path / "resumed"
    for epoch in (2, 5):  # in the cached-feature head phase, then after two fine-tuning epochs
        with pytest.raises(KeyboardInterrupt):
            training.train(data, config, output_dir=out, callbacks=[Interrupt(epoch)])
    resumed = training.train(data, config, output_dir=out)
    assert resumed.metrics["resumed_at"] == {"head": 3, "fine_tune": 2}  # epochs done when last resumed
    for a, b in zip(whole.model.weights, resumed.model.weights):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-5, atol=1e-6, err_msg=a.path)


def test_a_run_resumes_only_on_the_photos_it_started_on(backbone_weights, tmp_path):
    from PIL import Image

    from keras_transfer.errors import ResumeMismatchError

    images, labels = synthetic_images(24, seed=1)
    root = tmp_path / "photos"
    for i, (image, label) in enumerate(zip(images, labels)):
        (root / f"class{label}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.astype(np.uint8)).save(root / f"class{label}" / f"{i}.png")
    config = tiny_config(backbone_weights, epochs=2, fine_tune_epochs=1)
    out = tmp_path / "run"

    def load():
        return data_lib.load_folder(root, image_size=SIZE, val_split=0.25, cache="memory")

    with pytest.raises(KeyboardInterrupt):
        training.train(load(), config, output_dir=out, callbacks=[Interrupt(1)])
    # Another photo under the same name, same counts: the saved features are not its features.
    photo = sorted(root.glob("class0/*.png"))[0]
    original = photo.read_bytes()
    Image.fromarray(np.full((SIZE, SIZE + 8, 3), 90, np.uint8)).save(photo)
    with pytest.raises(ResumeMismatchError, match=r"data\.files: saved '[0-9a-f]{16}', now '[0-9a-f]{16}'"):
        training.train(load(), config, output_dir=out)
    photo.write_bytes(original)
    seen = EpochsSeen()
    result = training.train(load(), config, output_dir=out, callbacks=[seen])
    assert seen.epochs == [1, 2] and result.history["head"]["epoch"] == [0, 1]


def test_uncached_head_phase_with_mixed_bfloat16_keeps_float32_logits(backbone_weights):
    previous = keras.mixed_precision.global_policy().name
    config = tiny_config(
        backbone_weights, epochs=1, fine_tune_epochs=1, cache_features=False, augment=True,
        mixed_precision="mixed_bfloat16",
    )
    result = training.train(image_data(n_train=24, n_val=12), config)
    assert keras.mixed_precision.global_policy().name == previous
    model = result.model
    assert models_lib.get_backbone(model).layers[1].compute_dtype == "bfloat16"
    assert "augmentation" in [layer.name for layer in model.layers]
    logits = model(synthetic_images(4, seed=5)[0].astype("float32"))
    assert logits.dtype == tf.float32
    assert np.all(np.isfinite(np.asarray(logits)))
    assert result.metrics["mixed_precision_policy"] == "mixed_bfloat16"
    assert "feature_extraction_s" not in result.metrics["phases"]["head"]
    assert result.history["head"]["epoch"] == [0] and result.history["fine_tune"]["epoch"] == [1]


def test_diverging_loss_stops_with_a_clear_error(backbone_weights):
    config = tiny_config(backbone_weights, epochs=3, fine_tune_epochs=0, learning_rate=1e38, dropout=0.0)
    with pytest.raises(FloatingPointError, match="learning rate"):
        training.train(image_data(n_train=24, n_val=12), config)


@pytest.mark.slow
def test_mirrored_strategy_on_two_logical_cpus(backbone_weights, tmp_path):
    # Logical devices must exist before TensorFlow initializes: a new process.
    script = textwrap.dedent(
        f"""
        import json, sys
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from test_training import image_data, tiny_config
        from keras_transfer import training
        config = tiny_config({backbone_weights!r}, strategy="mirrored", epochs=2, fine_tune_epochs=1,
                             learning_rate=2e-2)
        result = training.train(image_data(), config, output_dir={str(tmp_path / "run")!r})
        print("RESULT" + json.dumps(result.metrics))
        """
    )
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads(proc.stdout.split("RESULT", 1)[1])
    assert metrics["replicas"] == 2
    assert metrics["config"]["train"]["strategy"] == "mirrored"
    assert metrics["phases"]["head"]["final"]["val"]["accuracy"] >= 0.9
    assert metrics["final"]["val"]["accuracy"] >= 0.8  # after a noisy fine-tuning epoch of a random backbone
    assert metrics["phases"]["fine_tune"]["history"]["epoch"] == [2]
    assert (tmp_path / "run" / "model.keras").is_file()


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.mark.slow
def test_same_command_on_two_workers_trains_the_model_of_one_process(backbone_weights, tmp_path):
    # Two processes on this machine stand for two machines: the same command,
    # each with its own TF_CONFIG task. With one batch per epoch, split evenly,
    # the shuffle order cannot matter: each worker computes the gradient of its
    # half and their mean is the gradient of the whole batch, so two workers
    # must reproduce one process up to float rounding. Phase 2 is that one step,
    # so it must not be a warmup from 0 (the default): no warmup, cosine from 3e-4.
    images, labels = synthetic_images(60, seed=4)
    for i, (image, label) in enumerate(zip(images, labels)):
        (tmp_path / "images" / CLASSES[label]).mkdir(parents=True, exist_ok=True)
        keras.utils.save_img(tmp_path / "images" / CLASSES[label] / f"{i}.png", image, scale=False)
    argv = [
        "--data-dir", str(tmp_path / "images"), "--backbone", "mobilenet", "--alpha", "0.25",
        "--weights", backbone_weights, "--image-size", "32", "--val-split", "0.2",  # 48 train images, 12 val
        "--batch-size", "64", "--epochs", "3", "--learning-rate", "0.05", "--fine-tune-epochs", "1", "--no-augment",
        "--warmup-epochs", "0", "--verbose", "0",
    ]
    single, out = tmp_path / "single", tmp_path / "run"
    assert folder.main([*argv, "--output-dir", str(single)]) == 0
    cluster = {"worker": [f"localhost:{port}" for port in free_ports(2)]}
    command = [sys.executable, "-m", "keras_transfer.experiments.folder", *argv, "--output-dir", str(out),
               "--strategy", "multi_worker"]
    procs = [
        subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=dict(os.environ, CUDA_VISIBLE_DEVICES="", KERAS_TRANSFER_DEBUG="1",
                     TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})),
        )
        for index in range(2)
    ]
    outputs = [proc.communicate(timeout=300) for proc in procs]
    for proc, (_, stderr) in zip(procs, outputs):
        assert proc.returncode == 0, stderr[-3000:]

    worker = out / ".workers" / "worker_1"  # the other worker keeps only its own resume state and model
    expected = json.loads((single / "metrics.json").read_text())
    assert expected["replicas"] == 1 and expected["final"]["val"]["accuracy"] >= 0.9
    for directory in (out, worker):
        metrics = json.loads((directory / "metrics.json").read_text())
        assert metrics["replicas"] == 2 and metrics["config"]["train"]["strategy"] == "multi_worker"
        for phase in ("head", "fine_tune"):
            for key, values in expected["phases"][phase]["history"].items():
                np.testing.assert_allclose(metrics["phases"][phase]["history"][key], values, rtol=1e-3, err_msg=key)
        for split in ("train", "val"):
            for key, value in expected["final"][split].items():
                assert metrics["final"][split][key] == pytest.approx(value, rel=1e-3)
    images = np.random.default_rng(1).uniform(0, 255, (4, 32, 32, 3)).astype(np.float32)
    logits = [kt.load_model(d / "model.keras").predict(images, verbose=0) for d in (single, out, worker)]
    np.testing.assert_allclose(logits[1], logits[0], rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(logits[2], logits[1], rtol=1e-6, atol=1e-6)
    # Only the chief writes the run's outputs.
    for name in ("classes.json", *_common.PLOT_FILES.values()):
        assert (out / name).is_file(), name
    assert not any((worker / name).exists() for name in _common.PLOT_FILES.values())


# ---------------------------------------------------------------------------
# Plots.


def test_training_curves_mark_the_start_of_fine_tuning():
    history = {
        "head": {"epoch": [0, 1, 2], "loss": [1.0, 0.6, 0.4], "val_loss": [0.9, 0.7, 0.5],
                 "accuracy": [0.4, 0.7, 0.8], "val_accuracy": [0.5, 0.6, 0.8]},
        "fine_tune": {"epoch": [3, 4], "loss": [0.3, 0.2], "val_loss": [0.45, 0.4],
                      "accuracy": [0.85, 0.9], "val_accuracy": [0.82, 0.85]},
    }
    fig = plots.plot_training_curves(history)
    assert len(fig.axes) == 2
    loss_ax = fig.axes[0]
    lines = {line.get_label(): line for line in loss_ax.get_lines()}
    np.testing.assert_array_equal(lines["train"].get_xdata(), [1, 2, 3, 4, 5])
    np.testing.assert_allclose(lines["validation"].get_ydata(), [0.9, 0.7, 0.5, 0.45, 0.4])
    assert list(lines["fine-tuning starts"].get_xdata()) == [3.5, 3.5]
    # Without fine-tuning there is no marker.
    fig = plots.plot_training_curves({"head": history["head"]}, metrics=("accuracy",))
    assert [l.get_label() for l in fig.axes[0].get_lines()] == ["train", "validation"]


def test_confusion_matrix_and_prediction_grid_figures():
    fig = plots.plot_confusion_matrix(np.array([[3, 1], [0, 4]]), ["cat", "dog"])
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.texts] == ["3", "1", "0", "4"]
    assert "87.5%" in ax.get_title()
    with pytest.raises(ValueError, match=r"\(3, 3\)"):
        plots.plot_confusion_matrix(np.eye(2), ["a", "b", "c"])
    images, labels = synthetic_images(6, seed=0)
    predictions = labels.copy()
    predictions[0] = (labels[0] + 1) % 3
    fig = plots.plot_prediction_grid(images, labels, predictions, CLASSES, probabilities=np.full(6, 0.75), columns=3)
    titled = [ax for ax in fig.axes if ax.get_title()]
    assert len(titled) == 6
    assert "pred: green (75%)\ntrue: red" == titled[0].get_title()
    assert titled[0].title.get_color() == "tab:red" and titled[1].title.get_color() == "tab:green"
    assert plots.figure_to_png(fig).startswith(b"\x89PNG")


def test_feature_maps_of_a_backbone_layer(backbone_weights):
    model = kt.build_classifier("mobilenet", alpha=0.25, num_classes=3, image_size=SIZE, weights=backbone_weights)
    image = synthetic_images(1, seed=0)[0][0]
    fig = plots.plot_feature_maps(model, image, max_maps=8)
    images = [ax for ax in fig.axes if ax.get_images()]
    assert len(images) == 9  # the input and 8 channels
    assert ": conv1 (16x16, 8 channels" in fig.get_suptitle()
    fig = plots.plot_feature_maps(model, image, layer="conv_pw_1_relu", max_maps=4)
    assert fig.get_suptitle().startswith(f"{models_lib.get_backbone(model).name}: conv_pw_1_relu (16x16, 16")
    with pytest.raises(ValueError, match="Close matches"):
        plots.plot_feature_maps(model, image, layer="conv_pw_1_rel")
    with pytest.raises(ValueError, match=r"\(32, 32, 3\)"):
        plots.plot_feature_maps(model, np.zeros((16, 16, 3)))


def test_linear_probe_reference_on_the_same_split(backbone_weights):
    """The logistic-regression reference is fit on the run's own frozen features."""
    result = training.train(image_data(), tiny_config(backbone_weights, epochs=2, fine_tune_epochs=0,
                                                      linear_probe=True))
    probe = result.metrics["linear_probe"]
    assert probe["val_accuracy"] >= 0.9 and probe["train_accuracy"] >= 0.9
    assert result.metrics["phases"]["head"]["linear_probe"] == probe
    # Ending on phase 1's weights, the final evaluations are phase 1's own (from the cached features).
    assert result.metrics["final"]["val"] == result.metrics["phases"]["head"]["final"]["val"]
    np.testing.assert_allclose(result.evaluation.logits, result.model.predict(synthetic_images(30, seed=2)[0],
                                                                              verbose=0), rtol=1e-4, atol=1e-5)


class TrainSteps(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.steps = 0

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1


@pytest.mark.parametrize("augment", [True, False])
def test_cached_head_also_trains_on_mirrored_images_when_augmenting(backbone_weights, augment):
    """With augmentation, the cached head sees each training image and its mirror."""
    steps = TrainSteps()
    result = training.train(
        image_data(), tiny_config(backbone_weights, epochs=2, fine_tune_epochs=0, augment=augment,
                                  linear_probe=True),
        callbacks=[steps],
    )
    head = result.metrics["phases"]["head"]
    assert head["mirrored_features"] is augment
    # 48 training images in batches of 16, twice with their mirrors.
    assert steps.steps == 2 * (6 if augment else 3)
    extractor = models_lib.feature_extractor(result.model)
    images = np.stack([x for x, _ in image_data().train.as_numpy_iterator()])
    features = [extractor.predict(images, verbose=0)]
    if augment:
        features.append(extractor.predict(images[:, :, ::-1], verbose=0))
    features = np.concatenate(features)
    mean = result.model.get_layer(models_lib.STANDARDIZATION_NAME).mean.numpy()
    np.testing.assert_allclose(mean, features.mean(axis=0), rtol=1e-4, atol=1e-5)
    if augment:  # ...which the statistics of the originals alone would not match
        assert not np.allclose(mean, features[: len(images)].mean(axis=0), rtol=1e-4, atol=1e-5)
    # The reference probe stays on the plain images; the head still learns.
    assert head["linear_probe"]["train_accuracy"] >= 0.9
    assert result.metrics["final"]["val"]["accuracy"] >= 0.9


def test_calibrated_run_reports_top_k_and_saves_the_calibrated_softmax(backbone_weights, tmp_path):
    """--calibrate folds T into the saved model; top-k accuracy is logged per epoch and at the end."""
    out = tmp_path / "run"
    config = tiny_config(backbone_weights, epochs=3, fine_tune_epochs=0, calibrate=True, top_k=2)
    result = training.train(image_data(), config, output_dir=out)
    head = result.history["head"]
    assert len(head["top2_accuracy"]) == 3 and len(head["val_top2_accuracy"]) == 3
    assert head["val_top2_accuracy"][-1] >= head["val_accuracy"][-1]

    metrics = json.loads((out / "metrics.json").read_text())
    info = metrics["calibration"]
    assert info["fitted_on"] == "val" and info["temperature"] > 0
    assert sum(info["val_reliability"]["counts"]) == 30
    final = metrics["final"]["val"]
    assert set(final) == {"loss", "accuracy", "ece", "top2_accuracy"}
    assert final["ece"] == pytest.approx(info["val_reliability"]["ece"])
    # T minimizes the validation loss, so the calibrated loss is no higher.
    assert final["loss"] <= info["before"]["val"]["loss"] + 1e-6

    # The saved model's own logits are the calibrated ones.
    x_val, y_val = synthetic_images(30, seed=2)
    logits = kt.load_model(out / "model.keras").predict(x_val, verbose=0)
    loss = float(np.mean(keras.losses.sparse_categorical_crossentropy(y_val, logits, from_logits=True)))
    assert loss == pytest.approx(final["loss"], rel=1e-4)
    np.testing.assert_allclose(logits, result.evaluation.logits, rtol=1e-4, atol=1e-5)

    with pytest.raises(ValueError, match="validation split to fit the temperature"):
        training.train(dataclasses.replace(image_data(), val=None), config)


def test_pictures_are_drawn_a_few_times_per_phase_by_default():
    from keras_transfer.monitoring import image_epochs

    assert sorted(image_epochs(0, 100, None)) == [33, 67, 99]  # a 100-epoch cached head: 3 pictures
    assert sorted(image_epochs(100, 10, None)) == [103, 107, 109]  # the last epoch always
    assert sorted(image_epochs(0, 3, None)) == [0, 1, 2]
    assert sorted(image_epochs(3, 4, 2)) == [3, 5]  # every N-th epoch of the run's axis
    assert image_epochs(0, 100, 0) == frozenset()


def test_early_stop_decides_from_the_committed_records():
    from keras_transfer.phases import EarlyStop

    records = {10: {"val_loss": 0.5}, 11: {"val_loss": 0.4}, 12: {"val_loss": 0.45}, 13: {"val_loss": 0.41}}
    stop = EarlyStop(2)
    assert stop.best(records) == 11
    assert stop.should_stop(records, 10)  # 2 epochs since the best
    assert not EarlyStop(3).should_stop(records, 10)
    # The starting weights compete: a phase that never beats them ends on them.
    assert EarlyStop(2, baseline=0.3).best(records) is None
    assert EarlyStop(4, baseline=0.3).should_stop(records, 10)  # 4 epochs (10..13) without beating 0.3
    assert not EarlyStop(5, baseline=0.3).should_stop(records, 10)


@pytest.mark.slow
def test_fine_tuning_that_never_beats_the_head_stops_and_ends_on_the_head(backbone_weights, tmp_path):
    """A ruinous learning rate: phase 2 stops after PATIENCE epochs and keeps phase 1's weights, also when resumed."""
    data = image_data()
    config = tiny_config(backbone_weights, epochs=3, fine_tune_epochs=6, fine_tune_learning_rate=0.5,
                         early_stopping_patience=2, fine_tune_at=-12)
    head_only = training.train(data, tiny_config(backbone_weights, epochs=3, fine_tune_epochs=0))
    images, _ = synthetic_images(8, seed=9)
    expected = head_only.model.predict(images, verbose=0)

    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):  # killed after fine-tuning's first epoch
        training.train(data, config, output_dir=out, callbacks=[Interrupt(4)])
    seen = EpochsSeen()
    result = training.train(data, config, output_dir=out, callbacks=[seen])
    assert seen.epochs == [4]  # resumed at epoch 4; two epochs without a lower val_loss: stop
    fine = result.metrics["phases"]["fine_tune"]
    assert fine["epochs_done"] == 2 and fine["stopped_early"] is True and fine["ended_on_epoch"] is None
    head_loss = result.history["head"]["val_loss"][-1]
    assert min(result.history["fine_tune"]["val_loss"]) > head_loss
    np.testing.assert_allclose(result.model.predict(images, verbose=0), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(kt.load_model(out / "model.keras").predict(images, verbose=0), expected,
                               rtol=1e-5, atol=1e-5)
    assert not list((out / "state").glob("backup_*"))


# ---------------------------------------------------------------------------
# Fine-tuning levers: schedule, warmup, weight decay, label smoothing, flip averaging.


def test_learning_rate_schedules_have_the_documented_values():
    from keras_transfer.phases import Optimization

    cosine = Optimization(1e-3, schedule="cosine", warmup_epochs=1).rate(steps_per_epoch=10, epochs=5)
    values = [float(cosine(step)) for step in (0, 5, 10, 30, 50)]
    # Linear warmup over the first epoch, then cosine from the peak to 0 at the last step.
    np.testing.assert_allclose(values, [0.0, 5e-4, 1e-3, 1e-3 * (1 + np.cos(np.pi * 20 / 40)) / 2, 0.0], atol=1e-9)
    warm = Optimization(1e-3, warmup_epochs=2).rate(steps_per_epoch=10, epochs=5)
    np.testing.assert_allclose([float(warm(s)) for s in (0, 10, 20, 45)], [0, 5e-4, 1e-3, 1e-3], atol=1e-9)
    assert Optimization(1e-3).rate(steps_per_epoch=10, epochs=5) == 1e-3
    assert isinstance(Optimization(1e-3, weight_decay=0.05).optimizer(steps_per_epoch=1, epochs=1),
                      keras.optimizers.AdamW)
    with pytest.raises(ValueError, match="Received: schedule='linear'"):
        Optimization(1e-3, schedule="linear")


def test_label_smoothing_matches_keras_on_one_hot_targets():
    from keras_transfer.phases import SmoothedSparseCrossentropy

    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (16, 5)).astype("float32")
    labels = rng.integers(0, 5, 16)
    ours = SmoothedSparseCrossentropy(0.1)(labels, logits)
    keras_loss = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1)
    np.testing.assert_allclose(float(ours), float(keras_loss(np.eye(5)[labels], logits)), rtol=1e-5)
    plain = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(labels, logits)
    np.testing.assert_allclose(float(SmoothedSparseCrossentropy(0.0)(labels, logits)), float(plain), rtol=1e-5)


def test_flip_averaged_logits_are_the_mean_of_the_image_and_its_mirror(backbone_weights):
    from keras_transfer import evaluation as eval_lib

    model = kt.build_classifier("mobilenet", alpha=0.25, num_classes=3, image_size=SIZE, weights=backbone_weights)
    dense = model.get_layer("logits")
    dense.kernel.assign(np.random.default_rng(0).normal(0, 0.1, dense.kernel.shape).astype("float32"))
    images, labels = synthetic_images(10, seed=5)
    batches = tf.data.Dataset.from_tensor_slices((images, labels)).batch(4)
    result = eval_lib.evaluate(model, batches, labels, CLASSES, flip_average=True)
    plain, mirror = (model.predict(x, verbose=0) for x in (images, images[:, :, ::-1]))
    assert not np.allclose(plain, mirror)
    np.testing.assert_allclose(result.logits, (plain + mirror) / 2, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_levers_are_recorded_resumable_and_saved(backbone_weights, tmp_path):
    """Cosine with warmup, AdamW and label smoothing: the learning rate per epoch follows the schedule across a
    resumption, flip-averaged accuracy is reported, and the saved model loads with its optimizer and loss (layer-wise
    rates and weight averaging on too)."""
    from keras_transfer.phases import LayerwiseAdam, Optimization

    data = image_data()
    config = tiny_config(backbone_weights, epochs=2, fine_tune_epochs=3, fine_tune_schedule="cosine",
                         warmup_epochs=1, weight_decay=0.01, label_smoothing=0.1, fine_tune_learning_rate=1e-3,
                         flip_test=True, lowest_layer_rate=0.5, ema_momentum=0.5)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        training.train(data, config, output_dir=out, callbacks=[Interrupt(3)])  # after fine-tuning's first epoch
    result = training.train(data, config, output_dir=out)
    steps = 3  # 48 training images in batches of 16
    schedule = Optimization(1e-3, schedule="cosine", warmup_epochs=1).rate(steps_per_epoch=steps, epochs=3)
    expected = [float(schedule(steps * (i + 1))) for i in range(3)]  # the rate after each epoch's last step
    np.testing.assert_allclose(result.history["fine_tune"]["learning_rate"], expected, rtol=1e-5, atol=1e-9)
    # Every step's rate in TensorBoard, on a step axis that continues after phase 1's 2 epochs of 3 steps.
    per_step = read_events(str(out / "tensorboard" / "train"))["step_learning_rate"]
    assert sorted(per_step) == list(range(7, 16))
    assert per_step[9] == pytest.approx(1e-3) and per_step[8] == pytest.approx(2e-3 / 3)
    assert result.metrics["final_flip_averaged"]["val"]["accuracy"] >= 0.8
    loaded = kt.load_model(out / "model.keras", compile=True)
    assert isinstance(loaded.optimizer, LayerwiseAdam) and loaded.optimizer.weight_decay == pytest.approx(0.01)
    assert loaded.optimizer.use_ema and min(loaded.optimizer.rate_factors.values()) == pytest.approx(0.5)
    assert loaded.loss.label_smoothing == pytest.approx(0.1)


# ---------------------------------------------------------------------------
# Weight averaging (EMA) and discriminative (layer-wise) learning rates.


def _small_plan(optimization, *, epochs: int = 4, reversed_val: bool = False, early_stop=None, shuffle=True):
    """A phase on a two-layer Dense model and 64 points (the same initial weights every call)."""
    from keras_transfer import phases

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu", name="hidden"),
                              keras.layers.Dense(3, name="out")])
    x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
    y = ((x[:, 0] > 0).astype("int32") + (x[:, 1] > 0)).astype("int32")
    val_y = 2 - y[:32] if reversed_val else y[:32]
    return phases.PhasePlan("fine_tune", model, phases.feature_batches(x, y, batch_size=16, shuffle=shuffle, seed=0),
                            phases.feature_batches(x[:32], val_y, batch_size=16), 0, epochs, optimization,
                            early_stop=early_stop)


def test_weight_average_is_validated_resumed_and_ended_on(tmp_path):
    from keras_transfer import phases
    from keras_transfer.run_folder import RunFolder

    optimization = phases.Optimization(0.05, ema_momentum=0.8)
    options = phases.FitOptions(verbose=0)
    whole = _small_plan(optimization)
    records = phases.run_phase(whole, options=options, run=RunFolder(tmp_path / "whole"))
    model = whole.model
    averages = [v.numpy() for v in model.optimizer._model_variables_moving_average]
    for variable, average in zip(model.trainable_variables, averages):
        np.testing.assert_array_equal(variable.numpy(), average)  # the model ends on the average
    # The recorded validation loss is that of the averaged weights.
    assert model.evaluate(whole.val, verbose=0)[0] == pytest.approx(records[3]["val_loss"], rel=1e-5)
    plain = _small_plan(phases.Optimization(0.05))
    phases.run_phase(plain, options=options)
    assert not np.allclose(plain.model.get_weights()[0], model.get_weights()[0])
    # Killed after epoch 1, resumed: the same averaged weights as the run that was not interrupted (in the
    # same batch order: a resumed shuffle starts its sequence of epoch orders again).
    ordered = _small_plan(optimization, shuffle=False)
    phases.run_phase(ordered, options=options, run=RunFolder(tmp_path / "ordered"))
    cut = _small_plan(optimization, shuffle=False)
    with pytest.raises(KeyboardInterrupt):
        phases.run_phase(cut, options=options, run=RunFolder(tmp_path / "cut"), callbacks=[Interrupt(2)])
    resumed = _small_plan(optimization, shuffle=False)
    phases.run_phase(resumed, options=options, run=RunFolder(tmp_path / "cut"))
    for a, b in zip(resumed.model.get_weights(), ordered.model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_callbacks_see_the_averaged_weights_at_an_epochs_end_and_training_goes_on_from_the_raw_ones():
    from keras_transfer import phases

    class Seen(keras.callbacks.Callback):
        def __init__(self, val):
            super().__init__()
            self.val, self.losses = val, []

        def on_epoch_end(self, epoch, logs=None):
            self.losses.append((self.model.evaluate(self.val, verbose=0)[0], logs["val_loss"]))

    optimization = phases.Optimization(0.05, ema_momentum=0.8)
    watched = _small_plan(optimization)
    seen = Seen(watched.val)
    phases.run_phase(watched, options=phases.FitOptions(verbose=0), callbacks=[seen])
    for loss, validated in seen.losses:  # e.g. the TensorBoard pictures draw what validation judged
        assert loss == pytest.approx(validated, rel=1e-5)
    unwatched = _small_plan(optimization)
    phases.run_phase(unwatched, options=phases.FitOptions(verbose=0))
    for a, b in zip(watched.model.get_weights(), unwatched.model.get_weights()):
        np.testing.assert_array_equal(a, b)  # the swaps cancel: the same run


@pytest.mark.parametrize("folder", [True, False])
def test_weight_average_of_the_best_epoch_when_stopping_early(tmp_path, folder):
    from keras_transfer import phases
    from keras_transfer.run_folder import RunFolder

    # Validation labels that training moves away from: epoch 0 stays the best.
    plan = _small_plan(phases.Optimization(0.05, ema_momentum=0.8), epochs=6, reversed_val=True,
                       early_stop=phases.EarlyStop(2))
    run = RunFolder(tmp_path / "run") if folder else None
    records = phases.run_phase(plan, options=phases.FitOptions(verbose=0), run=run)
    best = plan.early_stop.best(records)
    assert best is not None and best < max(records) < 5  # stopped early, and ends on an earlier epoch
    assert plan.model.evaluate(plan.val, verbose=0)[0] == pytest.approx(records[best]["val_loss"], rel=1e-5)


def test_layer_rate_factors_scale_each_layers_steps(backbone_weights):
    from keras_transfer import phases

    model = kt.build_classifier("mobilenet", alpha=0.25, num_classes=3, image_size=SIZE, weights=backbone_weights)
    models_lib.unfreeze_backbone(model, top_n=12)
    factors = models_lib.layer_rate_factors(model, lowest=0.1)
    layers = [layer for layer in models_lib.get_backbone(model).layers if layer.trainable and layer.trainable_weights]
    assert factors[layers[-1].trainable_weights[0].path] == 1.0
    assert factors[layers[0].trainable_weights[0].path] == pytest.approx(0.1)
    ratios = [factors[b.trainable_weights[0].path] / factors[a.trainable_weights[0].path]
              for a, b in zip(layers, layers[1:])]
    np.testing.assert_allclose(ratios, ratios[0], rtol=1e-6)  # geometric spacing
    assert model.get_layer("logits").kernel.path not in factors
    with pytest.raises(ValueError, match="lowest=0"):
        models_lib.layer_rate_factors(model, lowest=0.0)
    # One Adam step moves a variable by about lr * factor (Adam's first step is lr * sign(gradient)).
    variables = model.trainable_variables
    before = [v.numpy().copy() for v in variables]
    optimizer = phases.Optimization(1e-3, rate_factors=factors).optimizer(steps_per_epoch=1, epochs=1)
    assert isinstance(optimizer, phases.LayerwiseAdam)
    optimizer.apply_gradients([(tf.ones_like(v), v) for v in variables])
    for variable, old in zip(variables, before):
        step = np.abs(variable.numpy() - old).max()
        assert step == pytest.approx(1e-3 * factors.get(variable.path, 1.0), rel=1e-3)
    restored = phases.LayerwiseAdam.from_config(optimizer.get_config())
    assert restored.rate_factors == factors


def test_phase_2_defaults_are_the_measured_recipe_and_the_cached_bottom_gives_way_to_pixel_work():
    config = training.TrainConfig()  # experiments/beyond_probe chose these on five pets splits
    assert (config.fine_tune_learning_rate, config.fine_tune_schedule, config.warmup_epochs,
            config.ema_momentum, config.cache_bottom) == (3e-4, "cosine", 1, 0.99, True)
    # An attack or a mix works on pixels, so the default cached bottom steps aside ...
    assert training.TrainConfig(adversarial_eps=2.0).cache_bottom is False
    assert training.TrainConfig(cutmix_alpha=1.0).cache_bottom is False
    # ... but asking for both is an error that names them.
    with pytest.raises(ValueError, match="cache_bottom=True, adversarial_eps=2.0"):
        training.TrainConfig(cache_bottom=True, adversarial_eps=2.0)
    assert training.TrainConfig(fine_tune_epochs=0).cache_bottom is True  # harmless: nothing to cache for


def test_old_runs_resume_when_a_new_setting_does_what_they_did():
    from keras_transfer.errors import ResumeMismatchError

    saved = {"train": {k: v for k, v in training.TrainConfig().fingerprint().items() if k != "ema_momentum"},
             "data": {}}
    current = {"train": training.TrainConfig().fingerprint(), "data": {}}
    current["train"]["ema_momentum"] = 0.0  # what the run did before the setting existed
    training._check_fingerprint(saved, current, "run", complete=False)  # no error
    current["train"]["ema_momentum"] = 0.99  # today's default averages: not what that run did
    with pytest.raises(ResumeMismatchError, match="ema_momentum: saved None, now 0.99"):
        training._check_fingerprint(saved, current, "run", complete=False)


# ---------------------------------------------------------------------------
# Phase 2 on the frozen bottom computed once.


def test_split_below_trainable_moves_the_cut_below_a_skip_connection():
    model = kt.build_classifier("mobilenet_v2", num_classes=3, image_size=SIZE, weights=None, augmentation=True)
    dense = model.get_layer("logits")
    dense.kernel.assign(np.random.default_rng(0).normal(0, 0.1, dense.kernel.shape).astype("float32"))
    models_lib.unfreeze_backbone(model, from_layer="block_11_project")  # inside a residual block
    bottom, top = models_lib.split_below_trainable(model)
    assert top.get_layer("backbone_top").backbone.layers[1].name == "block_11_expand"  # the block's input
    assert not bottom.trainable_weights
    assert {id(v) for v in top.trainable_variables} == {id(v) for v in model.trainable_variables}
    images, _ = synthetic_images(4, seed=3)
    np.testing.assert_allclose(top(bottom(images)).numpy(), model(images).numpy(), rtol=1e-4, atol=1e-5)
    pooled = models_lib.pooled_from_bottom(top, model)
    np.testing.assert_allclose(pooled(bottom(images)).numpy(), models_lib.feature_extractor(model)(images).numpy(),
                               rtol=1e-4, atol=1e-5)
    models_lib.freeze_backbone(model)
    with pytest.raises(ValueError, match="frozen backbone"):
        models_lib.split_below_trainable(model)


def test_view_batches_draw_one_view_per_example_each_epoch():
    from keras_transfer import phases

    plain = np.arange(20, dtype="float32")[:, None]
    views = (plain, plain + 100)
    labels = np.arange(20) % 3
    batches = phases.view_batches(views, labels, batch_size=7, seed=1)
    epochs = [list(batches.epochs(epoch, epoch + 1)) for epoch in range(3)]
    drawn = []
    for epoch in epochs:
        x = np.concatenate([b[0].numpy()[:, 0] for b in epoch])
        y = np.concatenate([b[1].numpy() for b in epoch])
        assert sorted(x % 100) == list(range(20))  # every example once, as one of its views
        np.testing.assert_array_equal(y, (x % 100).astype(int) % 3)  # with its label
        drawn.append(x >= 100)
    assert 0.2 < np.mean(drawn) < 0.8 and not all(np.array_equal(drawn[0], d) for d in drawn[1:])


@pytest.mark.slow
def test_fine_tuning_on_the_cached_bottom_trains_the_classifier(backbone_weights, tmp_path, capsys):
    from keras_transfer import phases

    data = image_data()
    config = tiny_config(backbone_weights, fine_tune_epochs=3, fine_tune_learning_rate=1e-3, cache_bottom=True,
                         fine_tune_at=-12, augment=True, verbose=2)
    result = training.train(data, config, output_dir=tmp_path / "run")
    state = result.metrics["phases"]["fine_tune"]
    assert len(state["bottom_output_shape"]) == 3
    assert "kept from phase 1's pass" in capsys.readouterr().out  # phase 1's features went through the bottom
    history = result.history["fine_tune"]
    assert history["loss"][-1] < history["loss"][0]
    # The top trained the classifier itself: its accuracy on the images is the last epoch's validation accuracy,
    # and the final evaluation (made by the top on the kept bottom outputs) is the classifier's on the images.
    assert result.metrics["final"]["val"]["accuracy"] == pytest.approx(history["val_accuracy"][-1], abs=1e-6)
    model = result.model
    for split, images in (("train", data.train), ("val", data.val)):
        logits = model.predict(images.batch(16), verbose=0)
        labels = np.concatenate([y.numpy() for _, y in images.batch(64)])
        accuracy = float(np.mean(np.argmax(logits, axis=1) == labels))
        assert result.metrics["final"][split]["accuracy"] == pytest.approx(accuracy, abs=1e-9)
    loss = float(keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True).numpy().mean())
    assert result.metrics["final"]["val"]["loss"] == pytest.approx(loss, rel=1e-4)
    phases.compile_classifier(model)  # Keras' validation loss holds the head's L2 penalty too
    val_loss = model.evaluate(data.val.batch(16), verbose=0)[0]
    assert val_loss == pytest.approx(history["val_loss"][-1], rel=1e-4)
    with pytest.raises(ValueError, match="cache_bottom=True, adversarial_eps=2.0"):
        tiny_config(backbone_weights, cache_bottom=True, adversarial_eps=2.0)


def test_the_cached_bottom_lives_in_the_run_folder_and_gives_way_to_images_where_it_would_not_fit(
        backbone_weights, tmp_path, monkeypatch, capsys):
    data = image_data()
    monkeypatch.setenv(data_lib.MEMORY_LIMIT_ENV, "1K")  # far below the bottom's outputs of 48 x 2 + 30 views
    config = tiny_config(backbone_weights, epochs=1, fine_tune_epochs=1, cache_bottom=True, fine_tune_at=-12,
                         augment=True, verbose=2)
    # Without a run folder the outputs would be held in memory: over the budget, phase 2 runs on images.
    result = training.train(data, config)
    assert "need with the images cached in memory" in capsys.readouterr().out
    state = result.metrics["phases"]["fine_tune"]
    assert state["on_cached_bottom"] is False and "bottom_output_shape" not in state
    assert result.history["fine_tune"]["epoch"] == [1]
    # A run folder keeps them on disk, whatever the memory budget, and drops them when the run ends.
    result = training.train(data, config, output_dir=tmp_path / "on_disk")
    assert "Phase 2 trains on the backbone's outputs" in capsys.readouterr().out
    assert result.metrics["phases"]["fine_tune"]["on_cached_bottom"] is True
    assert not list((tmp_path / "on_disk" / "state").glob("bottom_*"))
    # Where the disk is full, images again; decided once: the run, resumed with room to spare, keeps it.
    disk_usage = shutil.disk_usage
    monkeypatch.setattr(training.shutil, "disk_usage", lambda path: disk_usage(path)._replace(free=0))

    class StopInPhase2(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch >= config.epochs:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        training.train(data, config, output_dir=tmp_path / "full", callbacks=[StopInPhase2()])
    assert "Phase 2 fine-tunes on images, not on the cached bottom" in capsys.readouterr().out
    monkeypatch.undo()
    resumed = training.train(data, config, output_dir=tmp_path / "full")
    assert resumed.metrics["phases"]["fine_tune"]["on_cached_bottom"] is False
    assert resumed.history["fine_tune"]["epoch"] == [1]


def test_mixed_batches_in_phase_2_save_the_plain_classifier(backbone_weights, tmp_path, capsys):
    data = image_data()
    config = tiny_config(backbone_weights, fine_tune_epochs=2, fine_tune_learning_rate=1e-3, mixup_alpha=0.4,
                         cutmix_alpha=1.0, verbose=1)
    result = training.train(data, config, output_dir=tmp_path / "run")
    assert "Phase 2 mixes its training batches: mixup alpha=0.4 or CutMix alpha=1" in capsys.readouterr().out
    loaded = kt.load_model(tmp_path / "run" / "model.keras")
    assert [layer.name for layer in loaded.layers] == [layer.name for layer in result.model.layers]
    images, _ = synthetic_images(4, seed=9)
    np.testing.assert_allclose(loaded.predict(images, verbose=0), result.model.predict(images, verbose=0), atol=1e-5)
    for bad in (dict(cache_bottom=True), dict(adversarial_eps=2.0), dict(fine_tune_epochs=0)):
        with pytest.raises(ValueError, match="mixup_alpha=0.2"):
            tiny_config(backbone_weights, **{"mixup_alpha": 0.2, **bad})


def test_config_rejects_a_seed_that_numpy_cannot_take():
    # keras.utils.set_random_seed (np.random.seed) takes 0 to 2**32 - 1: anything else failed only inside
    # train, with NumPy's message that names no setting.
    for seed in (-1, 2**32):
        with pytest.raises(ValueError, match=rf"seed={seed}\b"):
            training.TrainConfig(seed=seed)
    assert training.TrainConfig(seed=2**32 - 1).seed == 2**32 - 1
