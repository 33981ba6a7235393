"""keras_transfer.data: decoding by content, skip counts, splits, sources."""

from __future__ import annotations

import dataclasses
import os
import re
import socket
import time
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from keras_transfer import data
from keras_transfer._downloads import DatasetUnavailableError
from keras_transfer.errors import CorruptFileError

RED = (230, 20, 20)
BLUE = (20, 20, 230)
GRAY = 200


def solid(color, size=(48, 64)) -> np.ndarray:
    return np.broadcast_to(np.array(color, np.uint8), (*size, 3)).copy()


def save(image: np.ndarray, path, fmt=None, mode=None, **options) -> str:
    pil = Image.fromarray(image)
    if mode:
        pil = pil.convert(mode)
    if fmt in (None, "JPEG", "WEBP"):
        options.setdefault("quality", 95)
    pil.save(path, format=fmt, **options)
    return str(path)


def write_valid(folder, color) -> list[str]:
    """Eight decodable files of one colour in every supported encoding."""
    os.makedirs(folder, exist_ok=True)
    img = solid(color)
    rgba = np.dstack([img, np.full(img.shape[:2], 90, np.uint8)])
    return [
        save(img, folder / "a.jpg"),
        save(img, folder / "b.png"),
        save(img, folder / "c.bmp"),
        save(img, folder / "d.gif"),
        save(img, folder / "gif_named.jpg", fmt="GIF"),
        save(img, folder / "png_named.jpg", fmt="PNG"),
        save(rgba, folder / "rgba.png"),
        save(img, folder / "cmyk.jpg", fmt="JPEG", mode="CMYK"),
    ]


def write_webp(folder, color) -> list[str]:
    """Four WebP files of one colour: lossy, lossless, with alpha, and one named .jpg."""
    os.makedirs(folder, exist_ok=True)
    img = solid(color)
    rgba = np.dstack([img, np.full(img.shape[:2], 90, np.uint8)])
    return [
        save(img, folder / "lossy.webp", fmt="WEBP"),
        save(img, folder / "lossless.WEBP", fmt="WEBP", lossless=True),
        save(rgba, folder / "alpha.webp", fmt="WEBP", lossless=True),
        save(img, folder / "webp_named.jpg", fmt="WEBP"),
    ]


def animated_webp(path, colors, *, alpha: bool) -> str:
    frames = [Image.fromarray(solid(color)) for color in colors]
    if alpha:
        frames = [Image.fromarray(np.dstack([solid(color), np.full((48, 64), 90, np.uint8)])) for color in colors]
    frames[0].save(path, format="WEBP", save_all=True, append_images=frames[1:], lossless=True)
    return str(path)


def write_broken(folder) -> list[str]:
    """Three undecodable files: zero bytes, truncated JPEG, text named .jpg."""
    (folder / "zero.jpg").write_bytes(b"")
    good = (folder / "a.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (folder / "text.jpg").write_text("not an image at all")
    return ["zero.jpg", "truncated.jpg", "text.jpg"]


def write_gray(folder, n=3) -> None:
    os.makedirs(folder, exist_ok=True)
    for k in range(n):
        Image.fromarray(np.full((40, 50), GRAY, np.uint8), mode="L").save(folder / f"g{k}.{'jpg' if k % 2 else 'png'}")


def as_arrays(ds) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for x, y in ds.batch(256):
        images.append(x.numpy())
        labels.append(y.numpy())
    return np.concatenate(images), np.concatenate(labels)


@pytest.fixture
def zoo(tmp_path):
    """A class-per-folder tree with every encoding, broken files and extras."""
    root = tmp_path / "zoo"
    write_valid(root / "red", RED)
    write_valid(root / "blue", BLUE)
    write_gray(root / "gray")
    broken = write_broken(root / "red")
    (root / "red" / "notes.txt").write_text("ignored: not an image extension")
    (root / "blue" / ".DS_Store").write_bytes(b"\0\1")
    (root / "README.md").write_text("ignored: beside the class folders")
    return root, [f"red/{name}" for name in broken]


# ---------------------------------------------------------------------------
# Decoding and resizing.


def test_decode_image_by_content_to_rgb(tmp_path):
    for path in write_valid(tmp_path, RED):
        image = data.decode_image(tf.io.read_file(path)).numpy()
        assert image.dtype == np.uint8 and image.shape == (48, 64, 3), path
        np.testing.assert_allclose(image.reshape(-1, 3).mean(0), RED, atol=4, err_msg=path)
    write_gray(tmp_path / "g", n=2)
    for name in ("g0.png", "g1.jpg"):
        image = data.decode_image(tf.io.read_file(str(tmp_path / "g" / name))).numpy()
        assert image.shape == (40, 50, 3)
        np.testing.assert_allclose(image.reshape(-1, 3).mean(0), [GRAY] * 3, atol=2)


def test_decode_image_reads_webp(tmp_path):
    for path in write_webp(tmp_path, RED):
        contents = tf.io.read_file(path)
        for image in (data.decode_image(contents), data.decode_for_size(contents, image_size=16)):
            image = image.numpy()
            assert image.dtype == np.uint8 and image.shape == (48, 64, 3), path
            np.testing.assert_allclose(image.reshape(-1, 3).mean(0), RED, atol=4, err_msg=path)
    # An animated WebP with alpha gives its first frame.
    first = data.decode_image(tf.io.read_file(animated_webp(tmp_path / "anim.webp", [BLUE, RED], alpha=True)))
    np.testing.assert_array_equal(first.numpy().reshape(-1, 3).mean(0), BLUE)
    # TensorFlow cannot decode one without alpha (asked for its own channels it
    # corrupts memory): a clear error, not a crash.
    no_alpha = tf.io.read_file(animated_webp(tmp_path / "anim_rgb.webp", [BLUE, RED], alpha=False))
    with pytest.raises(tf.errors.InvalidArgumentError, match="animated WebP without alpha"):
        data.decode_image(no_alpha)


def test_load_image_files_skips_undecodable(tmp_path):
    valid = write_valid(tmp_path, BLUE)
    broken = [str(tmp_path / name) for name in write_broken(tmp_path)]
    missing = str(tmp_path / "missing.jpg")
    paths = [broken[0], *valid[:4], broken[1], *valid[4:], broken[2], missing]
    images, kept, skipped = data.load_image_files(paths, image_size=32)
    assert kept == valid
    assert skipped == [broken[0], broken[1], broken[2], missing]
    assert images.shape == (8, 32, 32, 3) and images.dtype == np.uint8
    np.testing.assert_allclose(images.reshape(8, -1, 3).mean(1), np.tile(BLUE, (8, 1)), atol=4)


def test_resize_modes_keep_or_ignore_aspect_ratio():
    # 40 x 80: left half red, right half blue.
    image = np.concatenate([solid(RED, (40, 40)), solid(BLUE, (40, 40))], axis=1)
    stretch = data.resize_image(image, image_size=20, resize="stretch").numpy()
    crop = data.resize_image(image, image_size=20, resize="crop").numpy()
    pad = data.resize_image(image, image_size=20, resize="pad").numpy()
    for out in (stretch, crop, pad):
        assert out.shape == (20, 20, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(stretch[:, 0], np.tile(RED, (20, 1)))
    np.testing.assert_array_equal(stretch[:, -1], np.tile(BLUE, (20, 1)))
    # The central square of the crop is half red, half blue.
    np.testing.assert_array_equal(crop[:, :9], np.broadcast_to(RED, (20, 9, 3)))
    np.testing.assert_array_equal(crop[:, 11:], np.broadcast_to(BLUE, (20, 9, 3)))
    # The padded image is 20 x 10 in the middle, black above and below.
    assert (pad[:5] == 0).all() and (pad[15:] == 0).all()
    np.testing.assert_array_equal(pad[5:15, :9], np.broadcast_to(RED, (10, 9, 3)))
    # Enlarging works too.
    assert data.resize_image(image, image_size=100, resize="crop").shape == (100, 100, 3)


def test_reduced_dct_decode_matches_full_decode(tmp_path):
    # A smooth 1400 x 1000 photo-like JPEG: decoded at 1/8 scale for 64 px,
    # 1/4 for 100 px (250 >= 1.5 * 100), in full for 400 px.
    y, x = np.mgrid[0:1000, 0:1400].astype(np.float32)
    image = np.stack([x / 1400 * 255, y / 1000 * 255, 128 + 100 * np.sin(x / 90) * np.cos(y / 70)], -1)
    path = save(image.astype(np.uint8), tmp_path / "big.jpg")
    contents = tf.io.read_file(path)
    assert data.decode_for_size(contents, image_size=64).shape == (125, 175, 3)
    assert data.decode_for_size(contents, image_size=100).shape == (250, 350, 3)
    assert data.decode_for_size(contents, image_size=400).shape == (1000, 1400, 3)
    # pad maps the longer side (1400) to the target: 1/4 scale keeps 350 >= 1.5 * 200.
    assert data.decode_for_size(contents, image_size=200, resize="pad").shape == (250, 350, 3)
    assert data.decode_for_size(contents, image_size=200, resize="crop").shape == (500, 700, 3)
    for size in (64, 100):
        reduced = data.decode_for_size(contents, image_size=size)
        fast = data.resize_image(reduced, image_size=size).numpy().astype(float)
        full = data.resize_image(data.decode_image(contents), image_size=size).numpy().astype(float)
        assert np.abs(fast - full).mean() < 1.0


# ---------------------------------------------------------------------------
# Class-per-folder trees.


def test_jpeg_pixels_are_pils(tmp_path):
    # libjpeg's accurate IDCT, as PIL decodes: TensorFlow's default (the fast
    # one) differs by up to ~16 grey levels on real photos.
    rng = np.random.default_rng(0)
    noisy = np.clip(rng.normal(128, 60, (120, 160, 3)), 0, 255).astype(np.uint8)
    for path in (save(noisy, tmp_path / "rgb.jpg", quality=80), save(noisy, tmp_path / "gray.jpg", mode="L")):
        with Image.open(path) as pil:
            expected = np.asarray(pil.convert("RGB"))
        contents = tf.io.read_file(path)
        np.testing.assert_array_equal(data.decode_image(contents).numpy(), expected)
        np.testing.assert_array_equal(data.decode_for_size(contents, image_size=100).numpy(), expected)


def test_decode_and_resize_takes_the_scale_and_filter_the_shape_calls_for(tmp_path):
    y, x = np.mgrid[0:1000, 0:1400].astype(np.float32)
    photo = np.stack([x / 1400 * 255, y / 1000 * 255, 128 + 100 * np.sin(x / 90) * np.cos(y / 70)], -1)
    photo = photo.astype(np.uint8)

    def jpeg(ratio):
        return lambda contents: tf.io.decode_jpeg(contents, channels=3, ratio=ratio, dct_method="INTEGER_ACCURATE")

    def other(contents):
        return tf.io.decode_image(contents, channels=3, expand_animations=False)

    def resized(method, antialias=False):
        return lambda image, size: tf.image.resize(image, (size, size), method=method, antialias=antialias)

    area, bilinear, mixed = resized("area"), resized("bilinear"), resized("bilinear", True)
    cases = [  # file, image size, how it is decoded, how it is resized
        (save(photo, tmp_path / "big.jpg"), 64, jpeg(8), area),  # 125 >= 1.5 * 64
        (save(photo, tmp_path / "big.jpg"), 100, jpeg(4), area),
        (save(photo, tmp_path / "big.jpg"), 200, jpeg(2), area),
        (save(photo, tmp_path / "big.jpg"), 400, jpeg(1), area),
        (save(photo[:30, :40], tmp_path / "small.jpg"), 64, jpeg(1), bilinear),
        (save(photo[:20, :300], tmp_path / "wide.jpg"), 64, jpeg(1), mixed),
        (save(photo[:300, :400], tmp_path / "png.jpg", fmt="PNG"), 64, other, area),
        (save(photo[:30, :40], tmp_path / "g.gif"), 64, other, bilinear),
    ]
    for path, size, decode, resize in cases:
        contents = tf.io.read_file(path)
        expected = tf.cast(tf.clip_by_value(tf.round(resize(decode(contents), size)), 0, 255), tf.uint8)
        got = data.decode_and_resize(contents, image_size=size)
        np.testing.assert_array_equal(got.numpy(), expected.numpy(), err_msg=f"{path} at {size}")


def test_load_folder_counts_skips_and_colours(zoo):
    root, broken = zoo
    loaded = data.load_folder(root, image_size=32, val_split=0.25, seed=3)
    report = loaded.report
    assert loaded.class_names == ("blue", "gray", "red")
    assert report.skipped == 3 and sorted(report.skipped_files) == sorted(broken)
    # notes.txt and README.md are ignored (and named); .DS_Store is hidden and not counted.
    assert report.ignored == 2 and report.ignored_files == ["README.md", os.path.join("red", "notes.txt")]
    assert report.found == 8 + 3 + 8 + 3 + 2
    assert report.used == {"train": 14, "val": 5, "test": 0}
    assert report.found == sum(report.used.values()) + report.skipped + report.ignored
    assert report.per_class == {
        "blue": {"train": 6, "val": 2, "test": 0},
        "gray": {"train": 2, "val": 1, "test": 0},
        "red": {"train": 6, "val": 2, "test": 0},
    }
    assert report.source == f"folder:{root}"
    assert loaded.test is None and len(loaded.train) == 14 and len(loaded.val) == 5
    images, labels = as_arrays(loaded.train.concatenate(loaded.val))
    assert images.dtype == np.uint8 and images.shape == (19, 32, 32, 3)
    assert labels.dtype == np.int32
    expected = {0: BLUE, 1: (GRAY,) * 3, 2: RED}
    for image, label in zip(images, labels):
        np.testing.assert_allclose(image.reshape(-1, 3).mean(0), expected[int(label)], atol=4)
    import json

    as_json = json.loads(json.dumps(report.to_dict()))
    assert as_json["skipped_files"] == report.skipped_files
    assert as_json["ignored_files"] == report.ignored_files and as_json["ignored"] == 2


def test_load_folder_names_ignored_files_in_the_log(zoo, caplog):
    root, broken = zoo
    with caplog.at_level("WARNING", logger="keras_transfer.data"):
        data.load_folder(root, image_size=16)
    log = caplog.text
    assert "Ignored 2 file(s)" in log and "README.md: a file beside the class folders" in log
    assert os.path.join("red", "notes.txt") + ": extension '.txt' is not one of" in log
    assert "Skipped 3 file(s)" in log and all(name in log for name in broken)


def test_load_folder_reads_webp_files(tmp_path, caplog):
    root = tmp_path / "webp"
    write_webp(root / "red", RED)
    write_webp(root / "blue", BLUE)
    save(solid(BLUE, (2, 3)), root / "blue" / "tiny.webp", "WEBP")
    animated_webp(root / "red" / "animated.webp", [RED, BLUE], alpha=False)  # TensorFlow cannot: skipped
    with caplog.at_level("WARNING", logger="keras_transfer.data"):
        loaded = data.load_folder(root, image_size=8, val_split=0.0)
    report = loaded.report
    assert (report.ignored, report.skipped, report.used["train"]) == (0, 1, 9)
    assert os.path.join("red", "animated.webp") + ": an animated WebP without alpha channel" in caplog.text
    images, labels = as_arrays(loaded.train)
    for image, label in zip(images, labels):
        np.testing.assert_allclose(image.reshape(-1, 3).mean(0), (BLUE, RED)[int(label)], atol=4)


def test_file_names_that_are_not_utf8_are_read_and_reported(tmp_path, caplog):
    # Linux allows any bytes in a name: os.listdir gives them surrogate-escaped
    # ('caf\udce9.png'), which a tf.string cannot hold as text.
    root = tmp_path / "latin1"
    write_valid(root / "blue", BLUE)
    write_valid(root / "red", RED)
    red = os.fsencode(root / "red")
    save(solid(RED), red + b"/caf\xe9.png")  # Latin-1 'café.png'
    with open(red + b"/cass\xe9.jpg", "wb"):  # zero bytes: undecodable
        pass
    with open(red + b"/not\xe9s.txt", "wb"):
        pass
    good, bad = (os.path.join(os.fsdecode(red), os.fsdecode(n)) for n in (b"caf\xe9.png", b"cass\xe9.jpg"))
    for cache in ("memory", str(tmp_path / "cache" / "latin1")):
        with caplog.at_level("WARNING", logger="keras_transfer.data"):
            loaded = data.load_folder(root, image_size=16, val_split=0.0, cache=cache)
        report = loaded.report
        assert report.used["train"] == 17 and report.per_class["red"]["train"] == 9
        assert report.skipped_files == [os.path.relpath(bad, root)]
        assert report.ignored_files == [os.path.join("red", os.fsdecode(b"not\xe9s.txt"))]
        assert report.found == 17 + 1 + 1 and len(report.files_digest) == 16
        images, labels = as_arrays(loaded.train)
        for image, label in zip(images, labels):
            np.testing.assert_allclose(image.reshape(-1, 3).mean(0), (BLUE, RED)[int(label)], atol=4)
        import json

        json.dumps(report.to_dict())
    # The skip's reason is the file's own, not one about its name, which the
    # log spells with its byte (a log file or pipe in UTF-8 cannot take a surrogate).
    assert "converting unicode" not in caplog.text
    assert os.path.join("red", "cass\\xe9.jpg") + ": " in caplog.text and "\udce9" not in caplog.text
    images, kept, skipped = data.load_image_files([good, bad], image_size=16)
    assert kept == [good] and skipped == [bad] and images.shape == (1, 16, 16, 3)
    np.testing.assert_allclose(images[0].reshape(-1, 3).mean(0), RED, atol=4)


def test_linked_folders_are_listed_once(tmp_path):
    # Class folders are walked through links (a linked folder of photos is
    # used), but a link back into the tree would list the same files again
    # and again (in train and val), and a link to an ancestor for ever.
    root = tmp_path / "linked"
    write_gray(root / "red" / "sub", n=2)
    write_gray(tmp_path / "elsewhere", n=2)
    write_gray(root / "blue", n=2)
    os.symlink(root / "red", root / "red" / "sub" / "self")  # a loop
    os.symlink(root / "red" / "sub", root / "red" / "twin")  # the same folder twice
    os.symlink(root, root / "blue" / "up")  # an ancestor: the whole tree again
    os.symlink(tmp_path / "elsewhere", root / "blue" / "more")  # photos kept elsewhere: used
    class_names, paths, labels, _ = data.list_class_folders(str(root))
    assert class_names == ["blue", "red"]
    assert [os.path.relpath(p, root) for p in paths] == [
        "blue/g0.png", "blue/g1.jpg", "blue/more/g0.png", "blue/more/g1.jpg", "red/sub/g0.png", "red/sub/g1.jpg"]
    assert labels == [0, 0, 0, 0, 1, 1]
    loaded = data.load_folder(root, image_size=8, val_split=0.0)
    assert loaded.report.used["train"] == 6


def test_folder_with_bad_files_trains(zoo):
    """The pipeline feeds Keras: a linear model on mean colours learns the classes."""
    import keras

    root, _ = zoo
    loaded = data.load_folder(root, image_size=16, val_split=0.25, seed=0)
    model = keras.Sequential([
        keras.Input((16, 16, 3)),
        keras.layers.Rescaling(1 / 255),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(3),
    ])
    model.compile(keras.optimizers.Adam(0.1), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    train = data.batch_dataset(loaded.train, batch_size=4, shuffle=True, seed=0)
    history = model.fit(train, epochs=30, verbose=0, shuffle=False)
    assert history.history["loss"][-1] < history.history["loss"][0] / 4
    assert model.evaluate(data.batch_dataset(loaded.val, batch_size=8), verbose=0)[1] == 1.0


def test_load_folder_file_cache_and_no_cache(zoo, tmp_path):
    root, _ = zoo
    prefix = str(tmp_path / "cache" / "zoo")
    first = data.load_folder(root, image_size=24, cache=prefix)
    assert any(name.startswith("zoo-trainval-order0-24-stretch-") for name in os.listdir(tmp_path / "cache"))
    second = data.load_folder(root, image_size=24, cache=prefix)  # read back from the files
    uncached = data.load_folder(root, image_size=24, cache=False)
    memory = data.load_folder(root, image_size=24)
    reference = as_arrays(memory.train)
    assert memory.report.cache == "memory" and uncached.report.cache == "none"
    assert first.report.cache == second.report.cache == f"file:{prefix}"
    for other in (first, second, uncached):
        assert other.report.first_pass_s > 0
        assert dataclasses.replace(other.report, cache="memory") == memory.report
        for got, want in zip(as_arrays(other.train), reference):
            np.testing.assert_array_equal(got, want)
    # The memory cache serves later epochs in the same fixed order.
    np.testing.assert_array_equal(as_arrays(memory.train)[0], reference[0])


@pytest.mark.parametrize("word", ["memory", "none", "auto"])
def test_cache_words_write_no_files(zoo, tmp_path, monkeypatch, word):
    root, _ = zoo
    monkeypatch.chdir(tmp_path)
    loaded = data.load_folder(root, image_size=16, cache=word)
    reference = data.load_folder(root, image_size=16, cache=word != "none")
    as_arrays(loaded.train)
    assert sorted(os.listdir(tmp_path)) == ["zoo"]  # no "memory-…" / "none-…" / "auto-…" cache files
    assert loaded.report.cache == ("none" if word == "none" else "memory")
    for got, want in zip(as_arrays(loaded.train), as_arrays(reference.train)):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("cache", ["", None, 1, 0.5, b"prefix", ["memory"]])
def test_bad_cache_values_are_rejected(zoo, cache):
    root, _ = zoo
    expected = (r"True or 'memory' \(in memory\), False or 'none' \(no cache\), 'auto' \(in memory when the images "
                rf"fit, else in files\), or a path.*Received: cache={re.escape(repr(cache))}$")
    with pytest.raises(ValueError, match=expected):
        data.load_folder(root, cache=cache)


# ---------------------------------------------------------------------------
# cache="auto": in memory when the decoded images fit, else in files.


@pytest.fixture
def cache_env(tmp_path, monkeypatch):
    """An empty folder as $KERAS_TRANSFER_CACHE_DIR, and no memory limit set."""
    folder = tmp_path / "image_cache"
    monkeypatch.setenv(data.CACHE_DIR_ENV, str(folder))
    monkeypatch.delenv(data.MEMORY_LIMIT_ENV, raising=False)
    return folder


def test_auto_cache_uses_files_when_the_images_do_not_fit(zoo, cache_env, monkeypatch, caplog):
    root, _ = zoo
    monkeypatch.setenv(data.MEMORY_LIMIT_ENV, "1K")
    with caplog.at_level("WARNING", logger="keras_transfer.data"):
        loaded = data.load_folder(root, image_size=24, val_split=0.25)
    # 22 image files (3 of them undecodable) * 24 * 24 * 3 bytes.
    assert (
        "Data: the decoded images would take 38.0 KB, more than the memory budget of 1.0 KB "
        f"(KERAS_TRANSFER_MEMORY_LIMIT); caching them in files under {cache_env} instead "
        "(--data-cache memory, or cache='memory', to override)."
    ) in caplog.text
    assert loaded.report.cache == f"file:{cache_env / 'zoo'}"
    assert loaded.report.to_dict()["cache"] == loaded.report.cache
    name = _cache_files(root, "zoo", 24)  # zoo-trainval-order0-24-stretch-<digest>
    written = sorted(os.listdir(cache_env))
    assert written == [name + ".data-00000-of-00001", name + ".index", name + ".lock"]  # nothing half-written
    memory = data.load_folder(root, image_size=24, val_split=0.25, cache="memory")
    assert dataclasses.replace(loaded.report, cache="memory") == memory.report
    for split in ("train", "val"):
        for got, want in zip(as_arrays(getattr(loaded, split)), as_arrays(getattr(memory, split))):
            np.testing.assert_array_equal(got, want)

    # A second load reads the files back: decoding would now give black images.
    monkeypatch.delenv(data.MEMORY_LIMIT_ENV)
    caplog.clear()
    def black(contents, *, image_size, resize):
        return tf.zeros([image_size, image_size, 3], tf.uint8)

    with mock.patch.object(data, "decode_and_resize", black):
        again = data.load_folder(root, image_size=24, val_split=0.25, memory_limit="1K")
    assert "(memory_limit); caching them in files" in caplog.text
    assert again.report == loaded.report and sorted(os.listdir(cache_env)) == written
    np.testing.assert_array_equal(as_arrays(again.train)[0], as_arrays(memory.train)[0])


def test_auto_cache_stays_in_memory_when_the_images_fit(zoo, cache_env, monkeypatch, caplog):
    root, _ = zoo
    monkeypatch.setenv(data.MEMORY_LIMIT_ENV, "38016")  # exactly the 22 images at 24 px
    with caplog.at_level("WARNING", logger="keras_transfer.data"):
        loaded = data.load_folder(root, image_size=24)
        default = data.load_folder(root, image_size=24, memory_limit=None, cache="auto")
    assert loaded.report.cache == default.report.cache == "memory"
    assert "Data:" not in caplog.text and not cache_env.exists()
    assert data.memory_budget(None) == (38016, "KERAS_TRANSFER_MEMORY_LIMIT")
    monkeypatch.delenv(data.MEMORY_LIMIT_ENV)
    budget, why = data.memory_budget()
    assert why == "half the available memory" and budget > 0



def test_auto_cache_names_an_unusable_cache_folder(zoo, cache_env, monkeypatch):
    root, _ = zoo
    cache_env.write_text("a file, not a folder")
    with pytest.raises(NotADirectoryError, match=rf"{re.escape(repr(str(cache_env)))} is a file.*set "
                       "KERAS_TRANSFER_CACHE_DIR to a writable folder"):
        data.load_folder(root, image_size=16, memory_limit=0)

@pytest.mark.parametrize(
    ("text", "expected"),
    [("0", 0), ("100", 100), ("2G", 2 * 10**9), ("1.5GB", 1_500_000_000), ("512Mi", 512 * 2**20),
     ("64 kib", 64 * 1024), ("3t", 3 * 10**12), (" 7B ", 7), (12345, 12345)],
)
def test_parse_bytes(text, expected):
    assert data.parse_bytes(text, name="limit") == expected


def test_bad_memory_limits_are_named(zoo, cache_env, monkeypatch):
    root, _ = zoo
    valid = r"Expected {} to be a number of bytes >= 0, optionally followed by K, M, G or T \(powers of 1000\)"
    monkeypatch.setenv(data.MEMORY_LIMIT_ENV, "lots")
    with pytest.raises(ValueError, match=valid.format(data.MEMORY_LIMIT_ENV) + ".*Received: "
                       "KERAS_TRANSFER_MEMORY_LIMIT='lots'$"):
        data.load_folder(root, image_size=16)
    for bad in (-1, "2X", "", True):
        expected = valid.format("memory_limit") + rf".*Received: memory_limit={re.escape(repr(bad))}$"
        with pytest.raises(ValueError, match=expected):
            data.load_folder(root, image_size=16, memory_limit=bad)
    assert not cache_env.exists()


def test_data_cache_flag_accepts_auto_and_defaults_to_it():
    from keras_transfer.experiments import folder

    parser = folder.build_parser()
    assert "{auto,memory,none,PATH}" in parser.format_help()
    for argv, expected in ((["--data-dir", "x"], "auto"), (["--data-dir", "x", "--data-cache", "auto"], "auto"),
                           (["--data-dir", "x", "--data-cache", "memory"], "memory")):
        assert folder.COMMAND.config_from_args(parser.parse_args(argv)).data.cache == expected


def _cache_files(root, prefix, image_size):
    """The prefix of the files `load_folder(root, image_size=image_size, cache=prefix)` writes."""
    _, paths, labels, _ = data.list_class_folders(str(root))
    return f"{prefix}-{data._cache_key('trainval', image_size, 'stretch', paths, labels=labels, order_seed=0)}"


def test_a_killed_writers_files_are_removed_not_reused(zoo, tmp_path, caplog):
    root, _ = zoo
    prefix = str(tmp_path / "cache" / "zoo")
    filename = _cache_files(root, prefix, 16)
    os.makedirs(tmp_path / "cache")
    # What tf.data leaves when killed mid-pass: its lockfile and a partial data
    # file, under the prefix written through and (older versions) the final one.
    leftovers = [filename + ".writing_0.lockfile", filename + ".writing_0.data-00000-of-00001.tempstate123",
                 filename + "_0.lockfile", filename + "_0.data-00000-of-00001.tempstate456"]
    for path in leftovers:
        Path(path).write_text("Created at: 1795954449")
    # tf.data itself refuses to write past such a lockfile.
    Path(tmp_path / "demo_0.lockfile").write_text("Created at: 1795954449")
    with pytest.raises(tf.errors.AlreadyExistsError, match="concurrent caching iterator"):
        list(tf.data.Dataset.range(3).cache(str(tmp_path / "demo")))
    with caplog.at_level("WARNING", logger="keras_transfer.data"):
        loaded = data.load_folder(root, image_size=16, cache=prefix)
    assert "Removing 4 file(s) of an unfinished image cache" in caplog.text
    assert not any(os.path.exists(path) for path in leftovers)
    assert os.path.exists(filename + ".index") and loaded.report.cache == f"file:{prefix}"
    memory = data.load_folder(root, image_size=16, cache="memory")
    for got, want in zip(as_arrays(loaded.train), as_arrays(memory.train)):
        np.testing.assert_array_equal(got, want)


def test_a_live_writer_is_waited_for(zoo, tmp_path, caplog):
    import fcntl
    import threading

    root, _ = zoo
    prefix = str(tmp_path / "cache" / "zoo")
    filename = _cache_files(root, prefix, 16)
    os.makedirs(tmp_path / "cache")
    busy = Path(filename + ".writing_0.lockfile")
    busy.write_text("Created at: 1795954449")
    fd = os.open(filename + ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # a live writer holds the lock
    results = []
    with caplog.at_level("WARNING", logger="keras_transfer.data"):
        thread = threading.Thread(target=lambda: results.append(data.load_folder(root, image_size=16, cache=prefix)))
        thread.start()
        deadline = time.monotonic() + 30
        while "Waiting for another process" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "Waiting for another process that is writing the image cache" in caplog.text
        assert thread.is_alive() and busy.exists()  # its files are left alone
        os.close(fd)
        thread.join(60)
    assert results and results[0].report.cache == f"file:{prefix}" and not busy.exists()


def test_first_pass_progress_for_large_sets_only(zoo, monkeypatch, capsys):
    root, _ = zoo
    data.load_folder(root, image_size=16, cache="none")
    assert capsys.readouterr().out == ""
    monkeypatch.setattr(data, "_PROGRESS_MIN_IMAGES", 10)
    monkeypatch.setattr(data, "_PASS_BATCH", 4)
    data.load_folder(root, image_size=16, cache="none")
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) >= 3, lines
    assert all(re.fullmatch(rf"Decoding folder:{re.escape(str(root))}: \d+/22 images \(\d+%\), [\d,]+ images/s, "
                            r"(about \d+ s left|in \d+ s)", line) for line in lines), lines
    assert lines[-1].startswith(f"Decoding folder:{root}: 22/22 images (100%)") and lines[-1].endswith(" s")


def test_shuffle_buffer_is_capped_by_bytes():
    def images(n, side, dtype=tf.uint8):
        ds = tf.data.Dataset.range(n).map(lambda i: (tf.zeros([side, side, 3], dtype), tf.cast(i, tf.int32)))
        return ds

    # A uint8 image of 224 px and its int32 label: 150 KB; 256 MB of them.
    assert data.shuffle_buffer_size(images(20_000, 224)) == 256 * 10**6 // (224 * 224 * 3 + 4) == 1700
    assert data.shuffle_buffer_size(images(20_000, 224, tf.float32)) == 256 * 10**6 // (224 * 224 * 3 * 4 + 4)
    assert data.shuffle_buffer_size(images(300, 224)) == 300  # the whole split, as before
    assert data.shuffle_buffer_size(images(20_000, 8)) == 10_000
    unknown_size = images(20_000, 224).filter(lambda x, y: y >= 0)
    assert data.shuffle_buffer_size(unknown_size) == 1000
    variable_shape = tf.data.Dataset.range(20_000).map(lambda i: tf.zeros(tf.stack([i % 5, 3]), tf.uint8))
    assert data.shuffle_buffer_size(variable_shape) == 10_000


def test_load_folder_argument_errors(zoo):
    root, _ = zoo
    with pytest.raises(ValueError, match=r"Expected val_split to be a number >= 0 and < 1. Received: val_split=1.5"):
        data.load_folder(root, val_split=1.5)
    with pytest.raises(ValueError, match=r"Received: resize='zoom'"):
        data.load_folder(root, resize="zoom")
    with pytest.raises(ValueError, match=r"Expected seed to be an int >= 0. Received: seed=-1"):
        data.load_folder(root, seed=-1)
    with pytest.raises(ValueError, match=r"Received: image_size=0"):
        data.load_folder(root, image_size=0)
    with pytest.raises(ValueError, match=r"Received: data_dir=3"):
        data.load_folder(3)
    with pytest.raises(ValueError, match="Received: batch_size=0"):
        data.batch_dataset(tf.data.Dataset.range(3), batch_size=0)
    with pytest.raises(ValueError, match=r"Received: image_size=0"):
        data.decode_for_size(tf.constant(b""), image_size=0)


def _nonexistent(tmp_path):
    return tmp_path / "nowhere", tmp_path / "nowhere"


def _a_file(tmp_path):
    return Path(save(solid(RED), tmp_path / "photo.jpg")), tmp_path / "photo.jpg"


def _empty(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / ".hidden").write_text("x")
    return tmp_path / "empty", tmp_path / "empty"


def _flat(tmp_path):
    write_valid(tmp_path / "flat", RED)
    return tmp_path / "flat", tmp_path / "flat"


def _one_class(tmp_path):
    write_valid(tmp_path / "one" / "cats", RED)
    return tmp_path / "one", tmp_path / "one"


def _class_without_images(tmp_path):
    (tmp_path / "no_images" / "a").mkdir(parents=True)
    write_valid(tmp_path / "no_images" / "b", RED)
    (tmp_path / "no_images" / "a" / "readme.txt").write_text("x")
    return tmp_path / "no_images", tmp_path / "no_images" / "a"


def _class_all_undecodable(tmp_path):
    all_bad = tmp_path / "all_bad"
    write_valid(all_bad / "good", RED)
    (all_bad / "bad").mkdir()
    (all_bad / "bad" / "x.jpg").write_bytes(b"")
    (all_bad / "bad" / "y.png").write_text("nope")
    return all_bad, all_bad / "bad"


@pytest.mark.parametrize(
    ("make", "error", "says"),
    [
        (_nonexistent, FileNotFoundError, "does not exist"),
        (_a_file, NotADirectoryError, "is a file, not a folder"),
        (_empty, ValueError, "is empty"),
        (_flat, ValueError, r"Found no class subfolders in .*: it holds 8 file\(s\)"),
        (_one_class, ValueError, r"Found only one class folder, 'cats', .* needs at least 2 classes"),
        (_class_without_images, ValueError, r"contains no image files .*'\.webp'.*readme\.txt"),
        (_class_all_undecodable, ValueError, r"no image of class\(es\) \['bad'\] could be decoded"),
    ],
    ids=["nonexistent", "file", "empty", "no_class_folders", "one_class", "no_image_files", "all_undecodable"],
)
def test_bad_data_dir_is_named_with_what_is_valid(tmp_path, make, error, says):
    data_dir, named = make(tmp_path)
    with pytest.raises(error, match=says) as info:
        data.load_folder(data_dir, image_size=16)
    message = str(info.value)
    assert str(named) in message
    # What would be valid, and a ValueError for callers that catch those.
    assert "one subfolder of images per class" in message or "decode_image reads" in message
    assert isinstance(info.value, ValueError)


# ---------------------------------------------------------------------------
# Splitting and batching.


def test_stratified_split_is_deterministic_and_fixed():
    labels = [0] * 5 + [1] * 3 + [2] * 10 + [3]
    train, val = data.stratified_split(labels, val_split=0.25, seed=0)
    # Fixed across machines and NumPy versions (raw PCG64 bits).
    np.testing.assert_array_equal(val, [3, 6, 11, 13, 15])
    np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), np.arange(len(labels)))
    again = data.stratified_split(labels, val_split=0.25, seed=0)
    np.testing.assert_array_equal(again[1], val)
    other = data.stratified_split(labels, val_split=0.25, seed=1)
    assert not np.array_equal(other[1], val)
    train0, val0 = data.stratified_split(labels, val_split=0.0, seed=0)
    assert len(val0) == 0 and len(train0) == len(labels)
    with pytest.raises(ValueError, match="Received: val_split=1.0"):
        data.stratified_split(labels, val_split=1.0, seed=0)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(0, 5), min_size=1, max_size=80),
    st.floats(0.01, 0.95),
    st.integers(0, 2**32 - 1),
)
def test_stratified_split_properties(labels, val_split, seed):
    labels = np.array(labels)
    train, val = data.stratified_split(labels, val_split=val_split, seed=seed)
    assert len(np.intersect1d(train, val)) == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), np.arange(len(labels)))
    for cls in np.unique(labels):
        n, n_val = np.sum(labels == cls), np.sum(labels[val] == cls)
        if n >= 2:
            assert 1 <= n_val <= n - 1
            assert abs(n_val - n * val_split) <= 1
        else:
            assert n_val == 0


def test_batch_dataset_reshuffles_every_epoch():
    ds = tf.data.Dataset.range(100).map(lambda i: (tf.fill([2, 2, 3], tf.cast(i, tf.uint8)), tf.cast(i, tf.int32)))
    ds = ds.apply(tf.data.experimental.assert_cardinality(100))
    batched = data.batch_dataset(ds, batch_size=32, shuffle=True, seed=1)
    epochs = [np.concatenate([y.numpy() for _, y in batched]) for _ in range(2)]
    assert [len(b) for b, _ in batched] == [32, 32, 32, 4]
    assert not np.array_equal(epochs[0], epochs[1])
    np.testing.assert_array_equal(np.sort(epochs[0]), np.arange(100))
    same_seed = np.concatenate([y.numpy() for _, y in data.batch_dataset(ds, batch_size=32, shuffle=True, seed=1)])
    np.testing.assert_array_equal(same_seed, epochs[0])
    plain = data.batch_dataset(ds, batch_size=32, drop_remainder=True)
    assert [len(y) for _, y in plain] == [32, 32, 32]
    np.testing.assert_array_equal(np.concatenate([y.numpy() for _, y in plain]), np.arange(96))


# ---------------------------------------------------------------------------
# Oxford-IIIT Pet folders (synthetic).


BREEDS = {"Abyssinian": (200, 40, 40), "american_bulldog": (40, 200, 40), "beagle": (40, 40, 200),
          "Bengal": (200, 200, 40)}


def write_oxford(root, n=4) -> None:
    images = root / "images"
    images.mkdir(parents=True)
    for breed, color in BREEDS.items():
        for k in range(1, n + 1):
            save(solid(color, (30, 40)), images / f"{breed}_{k}.jpg", fmt="PNG" if k == 2 else None)
    (images / "Abyssinian_100.mat").write_bytes(b"MATLAB")  # as in the official download
    (images / "not_a_pet.jpg").write_bytes(b"x")  # no <breed>_<n> name


def test_oxford_folder_without_annotations(tmp_path):
    write_oxford(tmp_path)
    (tmp_path / "images" / "beagle_9.jpg").write_bytes(b"")  # undecodable
    loaded = data.load_oxford_pets(tmp_path, image_size=16, val_split=0.25, seed=0)
    # Official order: case-insensitive alphabetical.
    assert loaded.class_names == ("Abyssinian", "american_bulldog", "beagle", "Bengal")
    report = loaded.report
    assert report.source == f"oxford_folder:{tmp_path}"
    assert report.used == {"train": 12, "val": 4, "test": 0}
    assert (report.skipped, report.skipped_files, report.ignored, report.found) == (
        1, ["images/beagle_9.jpg"], 2, 19)
    assert report.ignored_files == ["images/Abyssinian_100.mat", "images/not_a_pet.jpg"]
    images, labels = as_arrays(loaded.train)
    colors = list(BREEDS.values())
    for image, label in zip(images, labels):
        np.testing.assert_allclose(image.reshape(-1, 3).mean(0), colors[["Abyssinian", "american_bulldog",
                                   "beagle", "Bengal"].index(loaded.class_names[label])], atol=4)
    species = data.load_oxford_pets(tmp_path, image_size=16, target="species")
    assert species.class_names == ("cat", "dog")
    assert {k: v["train"] + v["val"] for k, v in species.report.per_class.items()} == {"cat": 8, "dog": 8}


def test_oxford_folder_with_annotations(tmp_path):
    write_oxford(tmp_path)
    ann = tmp_path / "annotations"
    ann.mkdir()
    ids = {"Abyssinian": (1, 1), "american_bulldog": (2, 2), "beagle": (5, 2), "Bengal": (6, 1)}

    def lines(ks):
        return "".join(f"{b}_{k} {ids[b][0]} {ids[b][1]} 1\n" for b in BREEDS for k in ks)

    (ann / "trainval.txt").write_text(lines([1, 2, 3]))
    (ann / "test.txt").write_text(lines([4]).replace("Bengal_4", "Bengal_99"))  # Bengal_99 has no file
    (ann / "list.txt").write_text("#Image CLASS-ID SPECIES BREED ID\n" + lines([1, 2, 3, 4]))
    loaded = data.load_oxford_pets(tmp_path, image_size=16, val_split=0.34, seed=0)
    report = loaded.report
    assert report.used == {"train": 8, "val": 4, "test": 3}
    # Ignored: the .mat, not_a_pet.jpg and Bengal_4 (in no split list).
    assert (report.ignored, report.skipped, report.found) == (3, 0, 18)
    assert report.ignored_files == ["images/Abyssinian_100.mat", "images/not_a_pet.jpg", "images/Bengal_4.jpg"]
    assert report.per_class["Bengal"] == {"train": 2, "val": 1, "test": 0}
    assert len(loaded.test) == 3
    _, test_labels = as_arrays(loaded.test)
    assert sorted(loaded.class_names[i] for i in test_labels) == ["Abyssinian", "american_bulldog", "beagle"]


def test_oxford_file_cache_is_not_reused_for_other_labels(tmp_path):
    # The same files with breed labels, then species labels, through one
    # file cache prefix: the cache holds the labels, so the second load must
    # not read the first one's.
    write_oxford(tmp_path / "pets")
    prefix = str(tmp_path / "cache" / "pets")
    breeds = data.load_oxford_pets(tmp_path / "pets", image_size=16, val_split=0.0, cache=prefix)
    assert sorted(set(as_arrays(breeds.train)[1].tolist())) == [0, 1, 2, 3]
    species = data.load_oxford_pets(tmp_path / "pets", image_size=16, val_split=0.0, cache=prefix, target="species")
    memory = data.load_oxford_pets(tmp_path / "pets", image_size=16, val_split=0.0, cache="memory", target="species")
    assert species.report.per_class == memory.report.per_class == {
        "cat": {"train": 8, "val": 0, "test": 0}, "dog": {"train": 8, "val": 0, "test": 0}}
    for got, want in zip(as_arrays(species.train), as_arrays(memory.train)):
        np.testing.assert_array_equal(got, want)


def test_oxford_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="Found no images/ folder"):
        data.load_oxford_pets(tmp_path)
    with pytest.raises(ValueError, match="Expected target to be one of 'breed', 'species'. Received: target='breeds'"):
        data.load_oxford_pets(tmp_path, target="breeds")
    with pytest.raises(FileNotFoundError, match=r"'.*nowhere' does not exist. Expected an Oxford-IIIT Pet folder"):
        data.load_oxford_pets(tmp_path / "nowhere")


@pytest.mark.parametrize("list_name", ["trainval", "list", "test"])
@pytest.mark.parametrize(
    "bad_line",
    ["Abyssinian_2 1 one 1", "Abyssinian_2 1 1", "Abyssinian_2 1 3 1", "Abyssinian_2 1 1 1 extra"],
    ids=["not_an_int", "three_fields", "bad_species", "five_fields"],
)
def test_oxford_malformed_annotation_line_is_named(tmp_path, list_name, bad_line):
    write_oxford(tmp_path)
    ann = tmp_path / "annotations"
    ann.mkdir()
    # Comments and blank lines are allowed; the bad line is line 4.
    (ann / f"{list_name}.txt").write_text(f"#Image CLASS-ID SPECIES BREED ID\nAbyssinian_1 1 1 1\n\n{bad_line}\n")
    with pytest.raises(ValueError) as info:
        data.load_oxford_pets(tmp_path, image_size=16)
    message = str(info.value)
    assert isinstance(info.value, CorruptFileError)
    assert f"line 4 of the Oxford annotation list {str(ann / f'{list_name}.txt')!r}" in message
    assert repr(bad_line) in message and "Image CLASS-ID SPECIES BREED-ID" in message
    assert "invalid literal" not in message


# ---------------------------------------------------------------------------
# tensorflow-datasets sources.


def test_tfds_offline_fails_fast_with_instructions(tmp_path):
    if data.probe(data.TFDS_SOURCES["oxford_iiit_pet"]["url"], timeout=2) is None:
        pytest.skip("the network is reachable here; the offline path cannot be tested")
    start = time.perf_counter()
    with pytest.raises(DatasetUnavailableError) as info:
        data.load_oxford_pets(None, tfds_data_dir=tmp_path / "tfds")
    assert time.perf_counter() - start < 10
    message = str(info.value)
    assert "--data-dir" in message and "images.tar.gz" in message and "annotations.tar.gz" in message
    start = time.perf_counter()
    with pytest.raises(DatasetUnavailableError, match="kagglecatsanddogs"):
        data.load_cats_vs_dogs(None, tfds_data_dir=tmp_path / "tfds")
    assert time.perf_counter() - start < 10


def _fake_pets_download(root):
    """The two extracted archives of oxford_iiit_pet, tiny: 2 trainval and 1
    test image per breed, plus one truncated JPEG."""
    from tensorflow_datasets.datasets.oxford_iiit_pet import oxford_iiit_pet_dataset_builder as pets

    images = root / "images" / "images"
    ann = root / "annotations" / "annotations"
    for folder in (images, ann / "trimaps", ann / "xmls"):
        folder.mkdir(parents=True)
    split_lines = {"trainval": [], "test": []}
    for class_id, breed in enumerate(pets._LABEL_CLASSES, 1):
        for k in (1, 2, 3):
            stem = f"{breed}_{k}"
            save(solid((class_id * 6, 100, 50), (20, 24)), images / f"{stem}.jpg")
            Image.fromarray(np.ones((20, 24), np.uint8)).save(ann / "trimaps" / f"{stem}.png")
            species = 1 if breed[0].isupper() else 2
            split_lines["test" if k == 3 else "trainval"].append(f"{stem} {class_id} {species} 1\n")
    good = (images / "beagle_1.jpg").read_bytes()
    (images / "beagle_1.jpg").write_bytes(good[: len(good) // 2])
    for name, lines in split_lines.items():
        (ann / f"{name}.txt").write_text("".join(lines))
    return {"images": str(root / "images"), "annotations": str(root / "annotations")}


def test_prepared_tfds_dataset_loads_without_network(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    fake = _fake_pets_download(tmp_path / "download")
    tfds_dir = tmp_path / "tfds"
    with mock.patch.object(tfds.download.DownloadManager, "download_and_extract", lambda self, urls: fake):
        tfds.builder("oxford_iiit_pet", data_dir=str(tfds_dir)).download_and_prepare(
            download_config=tfds.download.DownloadConfig(compute_stats=tfds.download.ComputeStatsMode.SKIP)
        )

    def no_network(*args, **kwargs):
        raise AssertionError("the network was touched")

    with mock.patch.object(socket.socket, "connect", no_network), \
            mock.patch.object(socket, "getaddrinfo", no_network), \
            mock.patch.object(data, "probe", no_network):
        loaded = data.load_oxford_pets(None, tfds_data_dir=tfds_dir, image_size=16, val_split=0.5, seed=0)
    report = loaded.report
    assert report.source == "tfds:oxford_iiit_pet"
    assert len(loaded.class_names) == 37 and loaded.class_names[:2] == ("Abyssinian", "american_bulldog")
    assert (report.found, report.skipped, report.skipped_files) == (111, 1, ["train/beagle_1.jpg"])
    assert report.used == {"train": 37, "val": 36, "test": 37}
    assert report.per_class["beagle"] == {"train": 1, "val": 0, "test": 1}
    images, labels = as_arrays(loaded.test)
    assert images.shape == (37, 16, 16, 3)
    # The red channel encodes the class id: labels follow the tfds names.
    np.testing.assert_allclose(images[..., 0].mean((1, 2)), (labels + 1) * 6, atol=3)


# ---------------------------------------------------------------------------
# Real photos in ../shared/data.


@pytest.mark.real
def test_real_oxford_pets_folder(shared_data, tmp_path):
    root = os.path.join(shared_data, "oxford_pets")
    loaded = data.load_oxford_pets(root, image_size=48, seed=0)
    report = loaded.report
    assert len(loaded.class_names) == 37 and loaded.class_names[0] == "Abyssinian"
    # 694 photos, 692 annotated (all trainval; no test.txt): 2 ignored.
    assert (report.found, report.ignored, report.skipped) == (694, 2, 0)
    assert report.ignored_files == ["images/Abyssinian_34.jpg", "images/Abyssinian_82.jpg"]
    assert report.used["train"] + report.used["val"] == 692 and report.used["test"] == 0
    assert all(counts["val"] >= 1 for counts in report.per_class.values())
    # Without annotations every photo is used, the GIF Abyssinian_34.jpg too.
    bare = tmp_path / "bare"
    bare.mkdir()
    os.symlink(os.path.join(root, "images"), bare / "images")
    bare_loaded = data.load_oxford_pets(bare, image_size=48, val_split=0.0)
    assert bare_loaded.report.used == {"train": 694, "val": 0, "test": 0}
    assert bare_loaded.report.skipped == 0 and bare_loaded.class_names == loaded.class_names
    gif, kept, _ = data.load_image_files([os.path.join(root, "images", "Abyssinian_34.jpg")], image_size=48)
    assert kept and gif.shape == (1, 48, 48, 3) and gif.std() > 10


@pytest.mark.real
def test_real_cats_vs_dogs_folder(shared_data):
    loaded = data.load_cats_vs_dogs(os.path.join(shared_data, "cats_vs_dogs", "train"), image_size=32)
    report = loaded.report
    assert loaded.class_names == ("cats", "dogs")
    assert report.used == {"train": 800, "val": 200, "test": 0} and report.skipped == 0
    assert report.per_class == {"cats": {"train": 400, "val": 100, "test": 0},
                                "dogs": {"train": 400, "val": 100, "test": 0}}
