"""Common corruptions (ImageNet-C): invariants, definitions, accuracy under them, figures, CLI, real weights."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
from conftest import requires_shared
from matplotlib.figure import Figure
from PIL import Image

import keras
import tensorflow as tf

from keras_transfer import corruptions as cl
from keras_transfer.plotting.corruptions import plot_corruption_accuracy, plot_corruption_examples

NAMES = tuple(cl.CORRUPTIONS)
SIZE = 32


def _photo(size: int = 64, seed: int = 0) -> np.ndarray:
    """A photo-like uint8 image: smooth colour gradients, a disc, a bar and mild texture."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    image = np.stack([60 + 120 * xx, 80 + 100 * yy, 150 - 80 * xx * yy], axis=-1)
    image[(yy - 0.55) ** 2 + (xx - 0.4) ** 2 < 0.06] = (220, 190, 60)
    image[int(size * 0.15): int(size * 0.25), int(size * 0.1): int(size * 0.9)] = (30, 40, 50)
    image += rng.normal(0, 6, image.shape)
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def _batch(n: int = 5, size: int = SIZE) -> np.ndarray:
    return np.stack([_photo(size, seed=i) for i in range(n)])


def _mean_abs(a, b) -> float:
    return float(np.mean(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


# ---------------------------------------------------------------------------
# Each corruption: shape, dtype, range, determinism, batching, severity.


@pytest.mark.parametrize("name", NAMES)
def test_keeps_shape_dtype_and_range_is_deterministic_and_independent_of_batching(name):
    batch = _batch(5)
    whole = np.asarray(cl.corrupt(batch, name, 4, seed=3))
    for images in (batch[:2], batch[0], batch[:2].astype(np.float32), tf.constant(batch[:2])):
        out = cl.corrupt(images, name, 3, seed=1)
        assert out.dtype == tf.uint8 and tuple(out.shape) == tuple(np.shape(images))
    odd = np.asarray(cl.corrupt(_photo(48)[:20, :45], name, 5))  # any size, not square
    assert odd.shape == (20, 45, 3) and odd.dtype == np.uint8
    np.testing.assert_array_equal(whole, np.asarray(cl.corrupt(batch, name, 4, seed=3)))
    for i in (0, 3):  # one image alone, at its position
        np.testing.assert_array_equal(whole[i], np.asarray(cl.corrupt(batch[i], name, 4, seed=3, index=i)))
    # A slice given the position of its first image; a dataset map after enumerate.
    np.testing.assert_array_equal(whole[2:], np.asarray(cl.corrupt(batch[2:], name, 4, seed=3, index=2)))
    mapped = tf.data.Dataset.from_tensor_slices(batch).enumerate().map(
        lambda i, image: cl.corrupt(image, name, 4, seed=3, index=i)
    )
    np.testing.assert_array_equal(whole, np.stack(list(mapped.as_numpy_iterator())))
    # Higher severities distort more.
    image = _photo(64)
    distortion = [_mean_abs(cl.corrupt(image, name, s), image) for s in cl.SEVERITIES]
    assert distortion[0] < distortion[-1], distortion
    if name != "pixelate":  # boxes that align with the pixel grid (c = 0.5, 0.25 of 64 px) distort less
        assert all(later >= earlier - 0.05 for earlier, later in zip(distortion, distortion[1:])), distortion


def test_noise_changes_with_the_seed_and_has_the_documented_spread():
    grey = np.full((2, 64, 64, 3), 128, np.uint8)
    a = np.asarray(cl.corrupt(grey, "gaussian_noise", 1, seed=0))
    b = np.asarray(cl.corrupt(grey, "gaussian_noise", 1, seed=1))
    assert not np.array_equal(a, b)
    assert not np.array_equal(a[0], a[1])  # each image its own noise
    # sigma 0.08 of [0, 1] pixels = 20.4 levels; no clipping at 128 +- 4 sigma.
    assert abs(a.astype(np.float64).std() - 0.08 * 255) < 0.6
    assert abs(a.astype(np.float64).mean() - 128) < 0.5


def test_contrast_scales_each_channel_deviation_by_c_and_keeps_its_mean():
    image = _photo(64)
    for severity in cl.SEVERITIES:
        c = cl.parameter("contrast", severity)
        out = np.asarray(cl.corrupt(image, "contrast", severity), np.float64)
        before, after = image.astype(np.float64).std(axis=(0, 1)), out.std(axis=(0, 1))
        np.testing.assert_allclose(after, c * before, atol=0.3)  # rounding to uint8 only
        np.testing.assert_allclose(out.mean(axis=(0, 1)), image.mean(axis=(0, 1)), atol=0.5)


def test_brightness_adds_c_to_the_hsv_value():
    image = _photo(64)
    value = image.max(axis=-1).astype(np.float64)  # HSV value (x 255)
    for severity in cl.SEVERITIES:
        c = cl.parameter("brightness", severity)
        out = np.asarray(cl.corrupt(image, "brightness", severity))
        np.testing.assert_allclose(out.max(axis=-1), np.minimum(value + 255 * c, 255), atol=1.0)
        assert out.max(axis=-1).mean() > value.mean()


def test_jpeg_is_a_jpeg_round_trip_and_lower_quality_differs_more():
    image = _photo(64)
    distortion = []
    for severity in cl.SEVERITIES:
        quality = cl.parameter("jpeg_compression", severity)
        out = np.asarray(cl.corrupt(image, "jpeg_compression", severity))
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "JPEG", quality=quality)  # ImageNet-C's way (PIL)
        assert _mean_abs(out, np.asarray(Image.open(buffer))) < 0.5
        distortion.append(_mean_abs(out, image))
    assert distortion[-1] > distortion[0]


def test_blur_is_scipys_gaussian_filter_with_edges_repeated():
    ndimage = pytest.importorskip("scipy.ndimage")
    image = _photo(40)[:, :33]
    for severity in cl.SEVERITIES:
        sigma = cl.parameter("gaussian_blur", severity)
        expected = ndimage.gaussian_filter(image / 255.0, sigma=(sigma, sigma, 0), mode="nearest", truncate=4.0)
        out = np.asarray(cl.corrupt(image, "gaussian_blur", severity), np.float64)
        assert np.abs(out - np.round(expected * 255)).max() <= 1
    flat = np.full((24, 24, 3), 77, np.uint8)
    np.testing.assert_array_equal(np.asarray(cl.corrupt(flat, "gaussian_blur", 5)), flat)


def test_pixelate_is_pils_box_down_and_up():
    image = _photo(64)[:, :50]
    for severity in cl.SEVERITIES:
        c = cl.parameter("pixelate", severity)
        small = (int(50 * c), int(64 * c))
        expected = Image.fromarray(image).resize(small, Image.BOX).resize((50, 64), Image.BOX)
        out = np.asarray(cl.corrupt(image, "pixelate", severity), np.float64)
        assert np.abs(out - np.asarray(expected)).max() <= 1  # PIL rounds between its two passes
    # Half the size: 2x2 blocks of their mean.
    out = np.asarray(cl.corrupt(_photo(32), "pixelate", 2)).astype(np.float64)
    blocks = _photo(32).astype(np.float64).reshape(16, 2, 16, 2, 3).mean(axis=(1, 3))
    np.testing.assert_allclose(out[::2, ::2], blocks, atol=0.5)
    np.testing.assert_array_equal(out[::2, ::2], out[1::2, 1::2])


def test_a_bad_name_or_severity_names_it_and_the_valid_ones():
    for severity in (0, 6, 2.0, True, "3", None):
        with pytest.raises(ValueError, match=r"one of 1, 2, 3, 4, 5\. Received: severity=") as error:
            cl.corrupt(_photo(16), "contrast", severity)
        assert str(error.value).endswith(f"severity={severity!r}")
    with pytest.raises(ValueError, match="Unknown corruption 'fog'") as error:
        cl.corrupt(_photo(16), "fog", 1)
    assert all(repr(name) in str(error.value) for name in NAMES)
    with pytest.raises(ValueError, match=r"Received: images of shape \(16, 16\)"):
        cl.corrupt(np.zeros((16, 16), np.uint8), "contrast", 1)


# ---------------------------------------------------------------------------
# Accuracy under corruption, on a classifier whose behaviour is known.


def _brightness_classifier(size: int = SIZE) -> keras.Model:
    """Class 1 ("bright") when the mean pixel exceeds 128, else class 0 ("dark"): logits ±(mean - 128)."""
    inputs = keras.Input((size, size, 3), name="image")
    means = keras.layers.GlobalAveragePooling2D()(inputs)
    dense = keras.layers.Dense(2, name="logits")
    model = keras.Model(inputs, dense(means))
    dense.set_weights([np.array([[-1.0, 1.0]] * 3, np.float32) / 3, np.array([128.0, -128.0], np.float32)])
    return model


def _grey_images(means, size: int = SIZE, seed: int = 0) -> np.ndarray:
    """Grey images (R = G = B) of the given mean levels with +-20 levels of texture."""
    rng = np.random.default_rng(seed)
    texture = rng.uniform(-20, 20, size=(len(means), size, size, 1))
    levels = np.clip(np.round(np.asarray(means)[:, None, None, None] + texture), 0, 255)
    return np.repeat(levels, 3, axis=-1).astype(np.uint8)


def _direct_accuracy(model, images, labels) -> float:
    return float(np.mean(np.argmax(model.predict_on_batch(np.asarray(images, np.float32)), -1) == labels))


def test_accuracy_under_brightness_and_contrast_is_the_predicted_one():
    model = _brightness_classifier()
    labels = np.array([0, 1] * 4)
    images = _grey_images(np.where(labels == 1, 200, 60))
    result = cl.corruption_accuracy(model, images, labels, corruptions=["brightness", "contrast"], batch_size=3)
    assert result.clean_accuracy == _direct_accuracy(model, images, labels) == 1.0
    # The value rises by 25.5 levels per severity: the dark images (mean 60) turn bright from severity 3.
    assert result.accuracy["brightness"] == {1: 1.0, 2: 1.0, 3: 0.5, 4: 0.5, 5: 0.5}
    assert result.accuracy["contrast"] == {s: 1.0 for s in cl.SEVERITIES}  # the mean is kept
    assert result.curve("brightness") == (1.0, 1.0, 1.0, 0.5, 0.5, 0.5)
    assert result.mean_by_corruption == {"brightness": 0.7, "contrast": 1.0}
    assert result.mean_accuracy == pytest.approx(0.85)
    assert result.relative_drop == pytest.approx(0.15) and result.accuracy_drop == pytest.approx(0.15)
    assert result.num_images == 8 and result.seconds > 0


def test_accuracy_table_equals_classifying_the_corrupted_arrays(capsys):
    model = _brightness_classifier()
    means = np.linspace(96, 160, 12)  # near the threshold: every corruption flips some predictions
    labels = (means > 128).astype(np.int64)
    images = _grey_images(means, seed=1)
    severities = (1, 5)
    result = cl.corruption_accuracy(model, images, labels, severities=severities, batch_size=5, seed=7, verbose=1)
    assert result.clean_accuracy == _direct_accuracy(model, images, labels)
    for name in NAMES:
        for s in severities:
            corrupted = cl.corrupt(images, name, s, seed=7)
            assert result.accuracy[name][s] == _direct_accuracy(model, corrupted, labels), (name, s)
    assert any(result.accuracy[name][5] != result.clean_accuracy for name in NAMES)  # not a trivial table
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("clean: accuracy") and len(lines) == 1 + len(NAMES)
    # The same images as a batched dataset give the same table (the noise is seeded by position).
    data = tf.data.Dataset.from_tensor_slices((images, labels)).batch(4)
    again = cl.corruption_accuracy(
        model, data, corruptions=["gaussian_noise", "jpeg_compression"], severities=severities, batch_size=12, seed=7
    )
    assert again.clean_accuracy == result.clean_accuracy
    assert again.accuracy == {name: result.accuracy[name] for name in again.corruptions}
    table = result.to_dict()
    json.dumps(table, allow_nan=False)
    assert table["accuracy"]["pixelate"].keys() == {"1", "5"}
    assert table["parameters"]["jpeg_compression"]["5"] == 7


def test_corruption_accuracy_rejects_bad_input():
    model = _brightness_classifier()
    images, labels = _grey_images([60, 200]), np.array([0, 1])
    cases = [
        (dict(data=images), "Pass labels"),
        (dict(data=images, labels=[0]), "one label per image"),
        (dict(data=images, labels=[0, 2]), "Received: label 2"),
        (dict(data=_grey_images([60], size=16), labels=[0]), "model's input size 32x32"),
        (dict(data=images, labels=labels, corruptions=["fog"]), "Unknown corruption 'fog'"),
        (dict(data=images, labels=labels, severities=(1, 7)), "Received: severity=7"),
        (dict(data=images, labels=labels, batch_size=0), "Received: batch_size=0"),
        (dict(data=images, labels=labels, seed=-1), "Received: seed=-1"),
        (dict(data=tf.data.Dataset.from_tensor_slices(images)), "pairs"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            cl.corruption_accuracy(model, **kwargs)


def test_figures():
    result = cl.CorruptionResult(
        clean_accuracy=0.9,
        accuracy={"gaussian_noise": {1: 0.8, 3: 0.5}, "contrast": {1: 0.85, 3: 0.6}},
        num_images=10,
        seconds=1.0,
    )
    figure = plot_corruption_accuracy(result, title="t")
    assert isinstance(figure, Figure)
    lines = figure.axes[0].lines
    assert len(lines) == 2 + 2  # clean reference, one per corruption, the mean
    np.testing.assert_allclose(lines[-1].get_ydata(), [0.9, 0.825, 0.55])
    examples = plot_corruption_examples(_photo(32), severities=(1, 5), corruptions=["pixelate", "brightness"])
    assert isinstance(examples, Figure) and len(examples.axes) == 2 * 3
    with pytest.raises(ValueError, match="Received: severity=9"):
        plot_corruption_examples(_photo(32), severities=(9,))
    # One name, as corruption_accuracy takes it (it was split into letters: "Unknown corruption 'c'").
    assert len(plot_corruption_examples(_photo(32), severities=3, corruptions="contrast").axes) == 1 * 2


# ---------------------------------------------------------------------------
# The command.


def _write_jpeg(path, image) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, "JPEG", quality=95)


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    """A saved 32 px brightness classifier (classes dark, bright), a class-per-folder tree and an Oxford folder."""
    from keras_transfer.models import save_class_names

    folder = tmp_path_factory.mktemp("run")
    _brightness_classifier().save(folder / "model.keras")
    save_class_names(["dark", "bright"], folder / "classes.json")
    rng = np.random.default_rng(0)
    for i in range(6):
        for name, level in (("dark", 60), ("bright", 200)):
            image = _grey_images([level + rng.uniform(-5, 5)], size=48, seed=i)[0]
            _write_jpeg(folder / "tree" / name / f"{i}.jpg", image)
            _write_jpeg(folder / "pets" / "images" / f"{name.capitalize() if name == 'dark' else name}_{i}.jpg", image)
    (folder / "tree" / "dark" / "broken.jpg").write_bytes(b"not a jpeg")
    for name in ("cat", "dog"):
        _write_jpeg(folder / "cats_dogs" / name / "0.jpg", _photo(32))
    return folder


def _run(argv, capsys) -> tuple[int, str, str]:
    from keras_transfer.experiments import corruptions as cli

    code = cli.main([*argv, "--no-progress"])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.out, captured.err


def test_cli_end_to_end_on_a_held_out_split(saved_run, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--model", str(saved_run / "model.keras"), "--data", str(saved_run / "tree"), "--val-split", "0.5",
            "--severities", "3,1", "--corruptions", "pixelate,brightness,contrast", "--output-dir", str(out)]
    code, stdout, err = _run(argv, capsys)
    assert code == 0, err
    result = json.loads((out / "result.json").read_text())
    table = result["corruption_accuracy"]
    assert list(table["accuracy"]) == ["pixelate", "brightness", "contrast"]
    assert all(list(row) == ["1", "3"] for row in table["accuracy"].values())
    assert table["clean_accuracy"] == 1.0 and table["accuracy"]["contrast"] == {"1": 1.0, "3": 1.0}
    assert table["accuracy"]["brightness"]["3"] < 1.0  # the dark images turn bright
    assert result["layout"] == "folder" and result["split"] == "val" and result["resize"] == "stretch"
    assert result["class_mapping"] == {"bright": "bright", "dark": "dark"}
    assert [os.path.basename(p) for p in result["skipped_files"]] == ["broken.jpg"]
    assert table["num_images"] == result["data_report"]["used"]["val"]
    assert set(result["seconds"]) == {"loading", "sweep", "total"}
    for name in ("corruption_accuracy.png", "corruption_examples.png"):
        assert (out / name).stat().st_size > 0
    assert not [n for n in os.listdir(out) if n.endswith(".tmp") or ".tmp." in n]
    assert "mean of corruptions" in stdout and "clean accuracy 1.0000" in stdout


def test_cli_reads_an_oxford_pets_folder(saved_run, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--model", str(saved_run / "model.keras"), "--data", str(saved_run / "pets"), "--split", "all",
            "--corruptions", "brightness", "--severities", "3", "--no-examples", "--output-dir", str(out)]
    code, _, err = _run(argv, capsys)
    assert code == 0, err
    result = json.loads((out / "result.json").read_text())
    assert result["layout"] == "oxford_pets" and result["corruption_accuracy"]["num_images"] == 12
    assert result["corruption_accuracy"]["accuracy"] == {"brightness": {"3": 0.5}}
    assert not (out / "corruption_examples.png").exists()


BAD_INPUT = [
    (["--data", "{d}/no_such_folder"], "No folder at '{d}/no_such_folder' (--data)"),
    (["--data", "{d}/classes.json"], "is a file"),
    (["--corruptions", "fog"], "Received: --corruptions fog"),
    (["--severities", "0,3"], "Received: --severities 0,3"),
    (["--split", "val", "--val-split", "0"], "needs val_split > 0"),
    (["--data", "{d}/cats_dogs"], "names no class of the model"),
    (["--model", "{d}/missing.keras"], "missing.keras"),
]


def test_cli_bad_input_is_one_line_and_exit_status_2(saved_run, tmp_path, capsys):
    out = tmp_path / "out"
    defaults = {"--model": str(saved_run / "model.keras"), "--data": str(saved_run / "tree"), "--output-dir": str(out)}
    for argv, message in BAD_INPUT:
        argv = [a.format(d=saved_run) for a in argv]
        for flag, value in defaults.items():
            if flag not in argv:
                argv += [flag, value]
        code, _, err = _run(argv, capsys)
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1, (argv, err)
        assert lines[0].startswith("python -m keras_transfer.experiments.corruptions: error: ")
        assert message.format(d=saved_run) in lines[0], lines[0]
        assert not (out / "result.json").exists()


def test_cli_names_and_layout_detection(tmp_path):
    from keras_transfer.experiments import corruptions as cli

    assert cli.CORRUPTION_NAMES == NAMES
    (tmp_path / "pets" / "images").mkdir(parents=True)
    (tmp_path / "pets" / "annotations").mkdir()
    (tmp_path / "tree" / "images").mkdir(parents=True)
    (tmp_path / "tree" / "cats").mkdir()
    assert cli.data_layout(str(tmp_path / "pets")) == "oxford_pets"
    assert cli.data_layout(str(tmp_path / "tree")) == "folder"


# ---------------------------------------------------------------------------
# Real weights.


@pytest.mark.real
@requires_shared
def test_imagenet_mobilenet_on_real_photos_loses_its_predictions_under_noise(shared_data):
    import keras_transfer as kt

    folder = os.path.join(shared_data, "oxford_pets", "images")
    names = sorted(os.listdir(folder))
    paths = [os.path.join(folder, n) for breed in ("Bengal_", "samoyed_")
             for n in [n for n in names if n.startswith(breed) and n.endswith(".jpg")][:4]]
    assert len(paths) == 8, paths
    images = kt.load_images(paths, image_size=224, resize="crop").images
    model = kt.build_imagenet_classifier("mobilenet", alpha=0.25)
    # The labels are the clean predictions: the table measures how many predictions survive.
    labels = np.argmax(model.predict(images.astype(np.float32), verbose=0), axis=-1)
    result = kt.corruption_accuracy(
        model, images, labels, corruptions=["gaussian_noise", "contrast"], severities=(1, 5), batch_size=8
    )
    assert result.clean_accuracy == 1.0
    for name in ("gaussian_noise", "contrast"):
        assert result.accuracy[name][5] < 1.0 and result.accuracy[name][5] <= result.accuracy[name][1], result


def test_cli_a_model_that_is_not_a_classifier_is_named_as_such(saved_run, tmp_path, capsys):
    """A saved model without one (batch, num_classes) output: said so, not 'class names no class of the model'."""
    x = keras.Input((32, 32, 3))
    keras.Model(x, keras.layers.Conv2D(4, 3)(x)).save(tmp_path / "feature_map.keras")
    argv = ["--model", str(tmp_path / "feature_map.keras"), "--data", str(saved_run / "tree"), "--split", "all",
            "--corruptions", "contrast", "--severities", "1", "--output-dir", str(tmp_path / "out")]
    code, _, err = _run(argv, capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    assert "Expected a classifier with one output of shape (batch, num_classes)" in lines[0], lines[0]
