"""Export for serving: SavedModel (bytes and pixel signatures) and TFLite give the Keras model's logits."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from conftest import requires_shared

TOLERANCE = 1e-4


def _photos(folder, rng) -> list[str]:
    """A JPEG, a PNG, a GIF and an RGBA PNG of odd sizes (larger and smaller than 32 px)."""
    os.makedirs(folder, exist_ok=True)
    paths = []
    for i, (name, size, mode) in enumerate(
        [("a.jpg", (90, 70), "RGB"), ("b.png", (20, 45), "RGB"), ("c.gif", (50, 50), "RGB"),
         ("d.png", (64, 33), "RGBA")]
    ):
        pixels = rng.integers(0, 256, size=(*size, len(mode)), dtype=np.uint8)
        pixels[: size[0] // 2] //= 3  # some structure, not only noise
        path = os.path.join(folder, name)
        Image.fromarray(pixels, mode=mode).save(path)
        paths.append(path)
    return paths


def _check_parity(model, photos, tmp_path, *, resize: str, tflite: bool) -> None:
    """SavedModel (bytes and pixels) and TFLite logits equal the Keras model's on the predict path's images."""
    from keras_transfer import export, inference, models

    loaded = inference.load_images(photos, image_size=models.image_size_of(model), resize=resize)
    assert loaded.paths == list(photos)
    expected = np.asarray(model.predict(loaded.images, verbose=0))
    predicted = inference.predict(model, photos, resize=resize, top_k=1)
    np.testing.assert_allclose(predicted.logits, expected, atol=TOLERANCE, rtol=0)

    saved = export.export_saved_model(model, tmp_path / "saved", resize=resize)
    contents = [open(path, "rb").read() for path in photos]
    served = export.saved_model_outputs(saved, contents)
    np.testing.assert_allclose(served["logits"], expected, atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(served["probabilities"], predicted.probabilities, atol=TOLERANCE, rtol=0)
    pixels = export.saved_model_outputs(saved, loaded.images, signature=export.PIXELS_SIGNATURE)
    np.testing.assert_allclose(pixels["logits"], expected, atol=TOLERANCE, rtol=0)

    if not tflite:
        return
    lite = export.tflite_outputs(export.export_tflite(model, tmp_path / "model.tflite"), loaded.images)
    np.testing.assert_allclose(lite["logits"], expected, atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(lite["probabilities"], predicted.probabilities, atol=TOLERANCE, rtol=0)


@pytest.fixture
def tiny_model(tiny_backbone_weights):
    import keras_transfer as kt

    model = kt.build_classifier("mobilenet", alpha=0.25, num_classes=3, image_size=32, weights=tiny_backbone_weights)
    kernel = model.get_layer("logits").kernel
    # Random, small (logits of a few units, as a trained head's): the zero init ties every class.
    kernel.assign(np.random.default_rng(0).normal(0, 0.1, size=kernel.shape).astype("float32"))
    return model


def test_exports_match_keras_logits_on_every_format(tmp_path, tiny_model, rng):
    photos = _photos(tmp_path / "photos", rng)
    _check_parity(tiny_model, photos, tmp_path, resize="crop", tflite=False)


def test_saved_model_export_is_crash_safe(tmp_path, tiny_model):
    from keras_transfer import export, files

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match=r"exists and is not a SavedModel folder"):
        export.export_saved_model(tiny_model, tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    with pytest.raises(ValueError, match=r"Expected image_size to be None or the model's input size 32"):
        export.export_saved_model(tiny_model, tmp_path / "other", image_size=64)
    with pytest.raises(ValueError, match=r"Expected a path ending in `.tflite`"):
        export.export_tflite(tiny_model, tmp_path / "model.lite")

    # The folder mechanics of every export, without the slow tracing: an
    # earlier export survives a write killed midway, and is replaced by a complete one.
    served = str(tmp_path / "served")
    os.makedirs(served)
    (tmp_path / "served" / "saved_model.pb").write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        with files.atomic_dir(served) as tmp:
            (open(os.path.join(tmp, "saved_model.pb"), "wb")).close()  # half written
            raise KeyboardInterrupt
    assert (tmp_path / "served" / "saved_model.pb").read_bytes() == b"old"
    with files.atomic_dir(served) as tmp:
        with open(os.path.join(tmp, "saved_model.pb"), "wb") as f:
            f.write(b"new")
    assert (tmp_path / "served" / "saved_model.pb").read_bytes() == b"new"
    assert sorted(os.listdir(tmp_path)) == ["mine", "served"]  # no temporary folder left


def test_export_command_writes_the_folder(tmp_path, tiny_model, capsys):
    from keras_transfer import models
    from keras_transfer.experiments import export as export_command

    run = tmp_path / "run"
    run.mkdir()
    models.save_model(tiny_model, run / "model.keras")
    models.save_class_names(["a", "b", "c"], run / "classes.json")
    # --no-tflite: the conversion doubles the time; the real-photo test covers TFLite. An earlier export's
    # model.tflite in the folder goes: it would pass for this model's.
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "model.tflite").write_bytes(b"an earlier export")
    argv = ["--model", str(run / "model.keras"), "--output-dir", str(tmp_path / "out"), "--no-tflite"]
    status = export_command.main(argv)
    assert status == 0, capsys.readouterr().err
    assert sorted(os.listdir(tmp_path / "out")) == [".lock", "classes.json", "export.json", "saved_model"]
    summary = json.loads((tmp_path / "out" / "export.json").read_text())
    assert summary["max_logit_difference"] == {"saved_model": pytest.approx(0.0, abs=TOLERANCE)}
    assert summary["tflite"] is None and summary["resize"] == "stretch"
    assert json.loads((tmp_path / "out" / "classes.json").read_text()) == ["a", "b", "c"]

    (tmp_path / "file").write_text("x")
    for argv in (["--model", str(tmp_path / "missing.keras")], ["--model", str(run / "model.keras"), "--resize", "x"]):
        assert export_command.main([*argv, "--output-dir", str(tmp_path / "out2")]) == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert export_command.main(["--model", str(run / "model.keras"), "--output-dir", str(tmp_path / "file")]) == 2
    assert "is a file" in capsys.readouterr().err


@requires_shared
@pytest.mark.real
@pytest.mark.slow
def test_real_photos_exports_match_the_imagenet_classifier(tmp_path, shared_data):
    """The real 224 px MobileNet 0.25 ImageNet classifier on real photos (JPEGs, a GIF), SavedModel and TFLite."""
    import keras_transfer as kt

    photos = [
        os.path.join(shared_data, "cats_vs_dogs", "train", "cats", "cat.1.jpg"),
        os.path.join(shared_data, "cats_vs_dogs", "train", "dogs", "dog.1.jpg"),
        os.path.join(shared_data, "oxford_pets", "images", "Abyssinian_34.jpg"),  # a GIF named .jpg
        os.path.join(shared_data, "oxford_pets", "images", "Bengal_10.jpg"),
    ]
    model = kt.build_imagenet_classifier("mobilenet", alpha=0.25)
    _check_parity(model, photos, tmp_path, resize="stretch", tflite=True)


def test_exports_of_a_model_ending_in_softmax_give_its_probabilities(tmp_path, tiny_model, rng):
    """A classifier whose last layer is a softmax: `logits` are its pre-softmax values, `probabilities` its outputs."""
    import keras

    from keras_transfer import export

    with_softmax = keras.Model(tiny_model.input, keras.layers.Activation("softmax")(tiny_model.output))
    pixels = rng.integers(0, 256, size=(3, 32, 32, 3), dtype=np.uint8)
    expected = np.asarray(tiny_model.predict(pixels.astype("float32"), verbose=0))
    saved = export.export_saved_model(with_softmax, tmp_path / "saved")
    served = export.saved_model_outputs(saved, pixels, signature=export.PIXELS_SIGNATURE)
    np.testing.assert_allclose(served["logits"], expected, atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(
        served["probabilities"], with_softmax.predict(pixels.astype("float32"), verbose=0), atol=TOLERANCE, rtol=0
    )


def test_export_command_checks_the_logits_of_a_model_ending_in_softmax(tmp_path, tiny_model, capsys):
    """export.json's logit difference compares logits with logits, also for a model that ends in a softmax."""
    import keras

    from keras_transfer import models
    from keras_transfer.experiments import export as export_command

    with_softmax = keras.Model(tiny_model.input, keras.layers.Softmax()(tiny_model.output))
    models.save_model(with_softmax, tmp_path / "model.keras")
    argv = ["--model", str(tmp_path / "model.keras"), "--output-dir", str(tmp_path / "out"), "--no-tflite"]
    assert export_command.main(argv) == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "out" / "export.json").read_text())
    assert summary["max_logit_difference"] == {"saved_model": pytest.approx(0.0, abs=TOLERANCE)}


def test_exports_refuse_the_working_folder_and_writes_make_missing_folders(tmp_path, tiny_model, monkeypatch):
    """`path=""` is no folder: refused, not the current folder replaced (and its files deleted) by the export."""
    from keras_transfer import export, files

    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "notes.txt").write_text("keep me")
    monkeypatch.chdir(tmp_path / "work")
    with pytest.raises(ValueError, match=r"Received: path=''"):
        export.export_saved_model(tiny_model, "")
    # The atomic folder write itself refuses the current folder and those above it.
    for path in ("", ".", "..", str(tmp_path)):
        with pytest.raises(ValueError, match="not the current folder or one above it"):
            with files.atomic_dir(path):
                pass
    assert os.listdir(tmp_path / "work") == ["notes.txt"]
    # A file written into folders that do not exist yet gets them (export_tflite failed after converting).
    written = tmp_path / "new" / "nested" / "x.json"
    files.write_json(written, {"a": 1})
    assert files.read_json(written, what="test") == {"a": 1}
