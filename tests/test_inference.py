"""Predicting and scoring new photos: `keras_transfer.inference` and the `predict` command."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
from PIL import Image

from conftest import requires_shared

IMAGE_SIZE = 32
CLASSES = ("blue", "green", "red")
_COLOURS = {"red": (200, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 200)}


def _write_image(path: str, colour, size, rng) -> None:
    pixels = np.clip(rng.normal(colour, 50, size=(*size, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, format="PNG" if path.endswith(".png") else "JPEG")


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory) -> str:
    """`root/<class>/` with PNG and JPEG photos of several sizes (some in a subfolder),
    plus a corrupt JPEG and a text file in `red/`."""
    rng = np.random.default_rng(1)
    root = tmp_path_factory.mktemp("photos")
    for name in CLASSES:
        os.makedirs(root / name / "more")
        for i in range(4):
            folder = root / name / ("more" if i == 3 else "")
            _write_image(str(folder / f"{name}_{i}.{'png' if i % 2 else 'jpg'}"), _COLOURS[name], (40 + 9 * i, 50), rng)
    (root / "red" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "red" / "notes.txt").write_text("not an image")
    return str(root)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_backbone_weights) -> str:
    """A saved run folder: model.keras (tiny MobileNet, random head) and classes.json."""
    import keras

    import keras_transfer as kt
    from keras_transfer import models

    model = kt.build_classifier(
        "mobilenet", alpha=0.25, num_classes=len(CLASSES), image_size=IMAGE_SIZE, weights=tiny_backbone_weights
    )
    # The head starts at zero (all logits equal): random weights give distinct classes to rank.
    kernel = model.get_layer("logits").kernel
    kernel.assign(np.random.default_rng(0).normal(0, 1, size=kernel.shape).astype("float32"))
    folder = tmp_path_factory.mktemp("run")
    models.save_model(model, folder / "model.keras")
    models.save_class_names(CLASSES, folder / "classes.json")
    keras.backend.clear_session()
    return str(folder / "model.keras")


def _load(path: str):
    import keras_transfer as kt

    return kt.load_model(path)


def test_load_images_lists_recursively_skips_and_ignores(photo_folder):
    from keras_transfer import inference

    loaded = inference.load_images(os.path.join(photo_folder, "red"), image_size=IMAGE_SIZE)
    assert loaded.images.shape == (4, IMAGE_SIZE, IMAGE_SIZE, 3) and loaded.images.dtype == np.uint8
    names = [os.path.relpath(p, os.path.join(photo_folder, "red")) for p in loaded.paths]
    # Each folder's files sorted, then its subfolders: deterministic.
    assert names == ["red_0.jpg", "red_1.png", "red_2.jpg", os.path.join("more", "red_3.png")]
    assert [os.path.basename(p) for p in loaded.skipped] == ["corrupt.jpg"]
    assert [path for path, _ in loaded.ignored] == ["notes.txt"]
    # Red photos decode red.
    assert loaded.images[..., 0].mean() > 2 * loaded.images[..., 2].mean()


def test_predict_streams_files_like_model_predict(photo_folder, tiny_run):
    from keras_transfer import inference

    model = _load(tiny_run)
    calls = []
    predictions = inference.predict(
        model, os.path.join(photo_folder, "red"), class_names=CLASSES, top_k=2, batch_size=3,
        progress=lambda done, total: calls.append((done, total)),
    )
    loaded = inference.load_images(os.path.join(photo_folder, "red"), image_size=IMAGE_SIZE)
    expected = np.asarray(model.predict(loaded.images, verbose=0))
    assert predictions.paths == loaded.paths and predictions.skipped == loaded.skipped
    np.testing.assert_allclose(predictions.logits, expected, atol=1e-5)
    order = np.argsort(-expected, axis=-1)[:, :2]
    np.testing.assert_array_equal(predictions.top_k_indices, order)
    assert predictions.top_k_names == [[CLASSES[j] for j in row] for row in order]
    softmax = np.exp(expected) / np.exp(expected).sum(-1, keepdims=True)
    np.testing.assert_allclose(predictions.top_k_probabilities, np.take_along_axis(softmax, order, -1), atol=1e-5)
    # Batches of 3 over 5 files (one undecodable): progress rises to the total.
    assert calls[-1] == (5, 5) and [d for d, _ in calls] == sorted(d for d, _ in calls)
    rows = predictions.to_rows()
    assert list(rows[0]) == ["path", "class_1", "probability_1", "class_2", "probability_2"]


def test_score_accuracy_equals_an_independent_model_predict(photo_folder, tiny_run):
    import keras_transfer as kt
    from keras_transfer import inference

    model = _load(tiny_run)
    scored = inference.score(tiny_run, photo_folder, top_k=2, batch_size=4)
    # Independently: the training loader's images of the same folder, and model.predict.
    data = kt.load_folder(photo_folder, image_size=IMAGE_SIZE, val_split=0.0)
    images = np.stack([image for image, _ in data.train.as_numpy_iterator()])
    labels = np.array([label for _, label in data.train.as_numpy_iterator()])
    logits = np.asarray(model.predict(images, verbose=0))
    metrics = scored.metrics()
    assert metrics["count"] == len(labels) == 12
    assert metrics["accuracy"] == pytest.approx(float(np.mean(logits.argmax(-1) == labels)))
    top2 = np.argsort(-logits, axis=-1)[:, :2]
    assert metrics["top_k_accuracy"] == pytest.approx(float(np.mean((top2 == labels[:, None]).any(-1))))
    np.testing.assert_array_equal(np.sort(scored.labels), np.sort(labels))  # the loader decodes in a seeded order
    confusion = np.zeros((3, 3), int)
    np.add.at(confusion, (labels, logits.argmax(-1)), 1)
    present = sorted(set(labels) | set(logits.argmax(-1)))
    assert metrics["confusion_matrix"]["matrix"] == confusion[np.ix_(present, present)].tolist()
    assert [os.path.basename(p) for p in scored.skipped] == ["corrupt.jpg"]
    assert scored.class_names == CLASSES  # classes.json beside the saved model
    assert all(row["correct"] == (row["class_1"] == row["label"]) for row in scored.to_rows())


def test_predict_takes_arrays_and_loaded_images(photo_folder, tiny_run):
    from keras_transfer import inference

    model = _load(tiny_run)
    loaded = inference.load_images(os.path.join(photo_folder, "green"), image_size=IMAGE_SIZE)
    from_array = inference.predict(model, loaded.images, class_names=CLASSES, top_k=1)
    from_loaded = inference.predict(model, loaded, class_names=CLASSES, top_k=1)
    assert from_array.paths is None and from_loaded.paths == loaded.paths
    np.testing.assert_allclose(from_array.logits, from_loaded.logits, atol=1e-6)
    assert list(from_array.to_rows()[0]) == ["index", "class_1", "probability_1"]
    # Without class names or classes.json: the indices, as every command names classes.
    assert inference.predict(model, loaded.images[:1]).class_names == ("0", "1", "2")
    # top_k=None: 5, or the number of classes if smaller.
    assert inference.predict(model, loaded.images[:1]).top_k == 3


def test_predict_rejects_bad_arguments(photo_folder, tiny_run):
    from keras_transfer import inference

    model = _load(tiny_run)
    for kwargs, match in [
        ({"top_k": 0}, r"Expected top_k to be an int from 1 to 3 .*Received: top_k=0"),
        ({"top_k": 4}, r"Expected top_k to be an int from 1 to 3 .*Received: top_k=4"),
        ({"top_k": True}, r"Received: top_k=True"),
        ({"batch_size": 0}, r"Expected batch_size to be an int >= 1. Received: batch_size=0"),
        ({"resize": "squash"}, r"Expected resize to be one of 'stretch', 'crop', 'pad'. Received: resize='squash'"),
        ({"class_names": ["a", "b"]}, r"Expected class_names to be a sequence of 3 names"),
    ]:
        with pytest.raises(ValueError, match=match):
            inference.predict(model, photo_folder, **kwargs)


def test_bad_image_sources_are_named(tmp_path, photo_folder, tiny_run):
    from keras_transfer import inference

    model = _load(tiny_run)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"Found no image files .* in '.*empty'"):
        inference.predict(model, tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match=r"No image file at '.*missing.jpg'"):
        inference.predict(model, [os.path.join(photo_folder, "red", "missing.jpg")])
    with pytest.raises(ValueError, match=r"Expected images of shape \(n, 32, 32, 3\).*\(2, 64, 64, 3\)"):
        inference.predict(model, np.zeros((2, 64, 64, 3), np.uint8))
    os.makedirs(tmp_path / "classes" / "cats")
    os.makedirs(tmp_path / "classes" / "red")
    _write_image(str(tmp_path / "classes" / "cats" / "a.png"), (0, 0, 0), (8, 8), np.random.default_rng(0))
    _write_image(str(tmp_path / "classes" / "red" / "a.png"), (0, 0, 0), (8, 8), np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"Class folder '.*cats' names no class of the model"):
        inference.score(tiny_run, tmp_path / "classes")


def test_predict_command_writes_csv_and_json(tmp_path, photo_folder, tiny_run, capsys):
    from keras_transfer import inference
    from keras_transfer.experiments import predict

    output = tmp_path / "out" / "predictions.csv"
    status = predict.main(
        ["--model", tiny_run, "--images", photo_folder, "--labels-from-folders", "--top-k", "2",
         "--batch-size", "5", "--output", str(output), "--no-progress"]
    )
    printed = capsys.readouterr().out
    assert status == 0
    with open(output, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 12 and set(rows[0]) == {
        "path", "class_1", "probability_1", "class_2", "probability_2", "label", "correct"
    }
    summary = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert summary["counts"] == {"found": 14, "predicted": 12, "skipped": 1, "ignored": 1}
    assert [os.path.basename(p) for p in summary["skipped_files"]] == ["corrupt.jpg"]
    expected = inference.score(tiny_run, photo_folder, top_k=2).metrics()
    assert summary["metrics"]["accuracy"] == pytest.approx(expected["accuracy"])
    assert summary["metrics"]["confusion_matrix"] == expected["confusion_matrix"]
    assert f"accuracy {expected['accuracy']:.4f}" in printed and "1 could not be decoded" in printed
    assert "corrupt.jpg" in printed


@pytest.mark.parametrize(
    "args, match",
    [
        (["--model", "missing/model.keras", "--images", "{photos}"], "No model file at 'missing/model.keras'"),
        (["--model", "{model}", "--images", "{photos}", "--top-k", "0"], "--top-k 0"),
        (["--model", "{model}", "--images", "{photos}", "--top-k", "4"], "Received: top_k=4"),
        (["--model", "{model}", "--images", "{empty}"], "Found no image files"),
        (["--model", "{model}"], "Expected either --images DIR or --image FILE"),
        (["--model", "{model}", "--image", "{photos}/red/red_0.jpg", "--labels-from-folders"],
         "--labels-from-folders needs"),
        (["--model", "{model}", "--image", "{photos}/red/corrupt.jpg"], "None of the 1 image file"),
    ],
)
def test_predict_command_bad_input_is_one_line_and_status_2(tmp_path, photo_folder, tiny_run, capsys, args, match):
    from keras_transfer.experiments import predict

    (tmp_path / "empty").mkdir()
    values = {"photos": photo_folder, "model": tiny_run, "empty": str(tmp_path / "empty")}
    argv = [a.format(**values) for a in args] + ["--output", str(tmp_path / "p.csv"), "--no-progress"]
    status = predict.main(argv)
    err = capsys.readouterr().err.strip()
    assert status == 2
    assert len(err.splitlines()) == 1 and match in err, err
    assert not os.path.exists(tmp_path / "p.csv")


@requires_shared
@pytest.mark.real
def test_imagenet_classifier_names_cat_photos(shared_data):
    import keras_transfer as kt
    from keras_transfer import inference

    folder = os.path.join(shared_data, "cats_vs_dogs", "train", "cats")
    paths = [os.path.join(folder, f"cat.{i}.jpg") for i in range(100, 108)]
    predictions = inference.predict(kt.build_imagenet_classifier("mobilenet", alpha=0.25), paths, top_k=5)
    cats = {"tabby", "tiger_cat", "Persian_cat", "Siamese_cat", "Egyptian_cat"}
    assert sum(bool(cats & set(names)) for names in predictions.top_k_names) >= 6, predictions.top_k_names


def test_predict_on_a_model_ending_in_softmax_gives_its_probabilities(photo_folder, tiny_run):
    """A classifier whose last layer is a softmax: `probabilities` are its outputs, not a second softmax of them."""
    import keras

    from keras_transfer import inference

    model = _load(tiny_run)
    with_softmax = keras.Model(model.input, keras.layers.Softmax()(model.output))
    loaded = inference.load_images(os.path.join(photo_folder, "blue"), image_size=IMAGE_SIZE)
    expected = np.asarray(with_softmax.predict(loaded.images, verbose=0))
    predictions = inference.predict(with_softmax, loaded, class_names=CLASSES, top_k=3)
    np.testing.assert_allclose(predictions.probabilities, expected, atol=1e-5)
    # The logits are the model's pre-softmax values, the same as the model without its softmax.
    np.testing.assert_allclose(predictions.logits, model.predict(loaded.images, verbose=0), atol=1e-5)


@pytest.mark.parametrize("taken", ["p.csv", "p.json"])
def test_predict_command_output_that_is_a_folder_is_named_before_predicting(tmp_path, photo_folder, tiny_run,
                                                                          capsys, monkeypatch, taken):
    """`--output p.csv` where p.csv (or the p.json beside it) is a folder: one line naming it, nothing computed."""
    from keras_transfer.experiments import predict

    (tmp_path / taken).mkdir()
    monkeypatch.setattr(predict, "_predict", lambda *a, **k: pytest.fail("predicted before checking --output"))
    status = predict.main(["--model", tiny_run, "--images", photo_folder, "--output", str(tmp_path / "p.csv"),
                           "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert status == 2
    assert len(err.splitlines()) == 1 and str(tmp_path / taken) in err, err
    assert ".tmp" not in err
