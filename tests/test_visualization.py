"""Class visualization: the optimization loop, its parts, the CLI, and the real MobileNet acceptance."""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import re
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import keras_transfer as kt
from keras_transfer import files, imagenet, naming
from keras_transfer import visualization as vis
from keras_transfer.experiments import ideal_class
from keras_transfer.models import save_class_names
from conftest import requires_shared

# A small convnet trained (in about 2 s) to tell solid colours apart: its
# ideal images have a known answer, the colour itself.
COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 60, 220), "yellow": (230, 220, 40),
           "grey": (128, 128, 128)}
NAMES = list(COLOURS)


def colour_images(n: int, rng: np.random.Generator, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.integers(0, len(COLOURS), n)
    base = np.array(list(COLOURS.values()), np.float32)[labels][:, None, None, :]
    x = base + rng.normal(0, 40, size=(n, size, size, 3)) + rng.normal(0, 30, size=(n, 1, 1, 3))
    return np.clip(x, 0, 255).astype(np.float32), labels


def tiny_classifier(num_classes: int = 5, size: int = 32, activation: str | None = None) -> keras.Model:
    """A small untrained convnet from [0, 255] pixels to logits; traces in a second."""
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(inputs)
    x = keras.layers.Conv2D(16, 3, activation="relu")(x)
    x = keras.layers.Conv2D(32, 3, strides=2, activation="relu")(x)
    x = keras.layers.Conv2D(32, 3, strides=2, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(num_classes, activation=activation)(x)
    return keras.Model(inputs, outputs)


def train_colour_classifier(activation: str | None = None) -> keras.Model:
    keras.utils.set_random_seed(0)
    model = tiny_classifier(activation=activation)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=activation is None)
    model.compile(keras.optimizers.Adam(3e-3), loss)
    x, y = colour_images(640, np.random.default_rng(0))
    model.fit(x, y, batch_size=64, epochs=8, verbose=0)
    return model


@pytest.fixture(scope="module")
def colour_model() -> keras.Model:
    model = train_colour_classifier()
    x, y = colour_images(200, np.random.default_rng(1))
    accuracy = float(np.mean(model.predict(x, verbose=0).argmax(1) == y))
    assert accuracy > 0.9, accuracy
    return model


def quick(**kwargs) -> vis.VisualizationConfig:
    """A short run; the default TV weights suit ImageNet models, whose logits
    are far more sensitive to each pixel than this small colour classifier's."""
    kwargs.setdefault("seed", 0)
    kwargs.setdefault("steps", 40)
    kwargs.setdefault("tv_weight", 1.0)
    return vis.VisualizationConfig(**kwargs)


# ---------------------------------------------------------------- the loop


@pytest.mark.parametrize("parameterization, learning_rate", [("pixel", 0.01), ("fourier", 0.4)])
def test_each_image_of_a_batch_moves_to_its_own_class(colour_model, parameterization, learning_rate):
    targets = ["red", "green", "blue", 3]
    calls = []
    result = vis.visualize_classes(
        colour_model,
        targets,
        config=quick(parameterization=parameterization, learning_rate=learning_rate, steps=60),
        class_names=NAMES,
        callbacks=[lambda step, logs: calls.append((step, sorted(logs)))],
        progress=False,
    )
    start = kt.class_probabilities(colour_model, np.full((1, 32, 32, 3), 127.5, np.float32))[0]
    probs = kt.class_probabilities(colour_model, result.uint8_images)
    assert probs.argmax(axis=1).tolist() == [0, 1, 2, 3]
    for i in range(4):
        assert probs[i, i] > 0.9 and start[i] < 0.01, (i, probs[i, i], start[i])
    # The ideal "red" is red, and so on: the answer the classifier was trained on.
    means = result.images.mean(axis=(1, 2))
    assert means[0, 0] > means[0, 1:].max() + 40
    assert means[1, 1] > means[1, [0, 2]].max() + 20
    assert means[2, 2] > means[2, :2].max() + 40
    assert means[3, :2].min() > means[3, 2] + 40
    # Images come back in the model's pixel space, in range and ready for uint8.
    assert result.images.shape == (4, 32, 32, 3) and result.images.dtype == np.float32
    assert result.images.min() >= 0.0 and result.images.max() <= 255.0
    assert result.uint8_images.dtype == np.uint8
    assert result.targets == [0, 1, 2, 3] and result.class_names == ["red", "green", "blue", "yellow"]
    # History: one row per step, one column per image; the probability rose.
    assert set(result.history) == {"loss", "objective", "penalty", "tv", "l1", "l2", "probability"}
    assert all(v.shape == (60, 4) for v in result.history.values())
    assert np.all(result.history["probability"][-5:].mean(0) > result.history["probability"][:5].mean(0) + 0.5)
    assert [c[0] for c in calls] == list(range(60))
    assert calls[0][1] == sorted(result.history)


def test_tensorboard_images_are_those_of_their_step_although_steps_run_in_chunks(colour_model, tmp_path):
    # Steps run in chunks in the graph; the images exist only between chunks, so a chunk must end where
    # TensorBoard shows a step's images: the images at step 7 are those a 7-step run returns.
    config = quick(steps=20, learning_rate=0.4)
    vis.visualize_classes(colour_model, [0], config=config, log_dir=tmp_path, image_every=7, progress=False)
    images = {}
    for path in glob.glob(str(tmp_path / "events.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag.startswith("image/"):
                    images[event.step] = tf.io.decode_png(value.tensor.string_val[2]).numpy()
    assert sorted(images) == [7, 14, 20]
    for steps in (7, 20):
        alone = vis.visualize_classes(colour_model, [0], config=dataclasses.replace(config, steps=steps),
                                      progress=False)
        assert np.abs(images[steps].astype(int) - alone.uint8_images[0].astype(int)).max() <= 1


def test_pixel_images_are_clipped_into_range_even_with_a_huge_step(colour_model):
    config = quick(parameterization="pixel", learning_rate=5.0, steps=5)
    result = vis.visualize_classes(colour_model, [0, 2], config=config, progress=False)
    assert result.images.min() == 0.0 and result.images.max() == 255.0  # pushed against both bounds
    assert np.all(np.isfinite(result.images))


def test_a_seed_reproduces_a_result_and_another_seed_does_not(colour_model):
    config = quick(steps=15, learning_rate=0.4)
    a = vis.visualize_classes(colour_model, [0, 3], config=config, progress=False)
    b = vis.visualize_classes(colour_model, [0, 3], config=config, progress=False)
    c = vis.visualize_classes(colour_model, [0, 3], config=quick(steps=15, learning_rate=0.4, seed=1), progress=False)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.history["loss"], b.history["loss"])
    assert np.abs(a.images - c.images).mean() > 1.0
    unseeded = vis.visualize_classes(colour_model, [0], config=quick(steps=2, seed=None), progress=False)
    assert isinstance(unseeded.config.seed, int)  # the seed used is reported, so the run can be repeated


def test_an_image_does_not_depend_on_the_rest_of_the_batch(colour_model):
    config = quick(steps=10, parameterization="pixel", learning_rate=0.01)
    alone = vis.visualize_classes(colour_model, [1], config=config, progress=False)
    together = vis.visualize_classes(colour_model, [1, 3], config=config, progress=False)
    np.testing.assert_allclose(together.images[0], alone.images[0], atol=0.05)


def test_total_variation_weight_lowers_total_variation(colour_model):
    tv = {}
    for weight in (0.0, 30.0):
        config = quick(parameterization="pixel", tv_weight=weight, steps=40)
        result = vis.visualize_classes(colour_model, [0, 1], config=config, progress=False)
        tv[weight] = vis.total_variation(result.uint8_images / 255.0).numpy()
        assert kt.class_probabilities(colour_model, result.uint8_images).argmax(1).tolist() == [0, 1]
    assert np.all(tv[30.0] < 0.5 * tv[0.0]), tv


def test_octaves_and_a_larger_image_than_the_model_input(colour_model):
    config = quick(octaves=3, image_size=48, steps=45, learning_rate=0.3)
    result = vis.visualize_classes(colour_model, ["blue"], config=config, class_names=NAMES, progress=False)
    assert result.images.shape == (1, 48, 48, 3)
    assert result.history["loss"].shape == (45, 1)
    probs = kt.class_probabilities(colour_model, result.uint8_images)  # resized to 32 as during optimization
    assert probs[0].argmax() == 2


def test_a_final_softmax_is_removed_before_optimizing():
    model = train_colour_classifier(activation="softmax")
    config = quick(objective="logit", parameterization="pixel", learning_rate=0.01)
    result = vis.visualize_classes(model, [2], config=config, progress=False)
    # Were the softmax kept, the "logits" would be probabilities in [0, 1] and
    # their softmax could never exceed e / (e + 4) = 0.40 with 5 classes.
    assert result.history["probability"][-1, 0] > 0.9
    assert kt.class_probabilities(model, result.uint8_images)[0, 2] > 0.9


# ---------------------------------------------------------------- bad input


def test_an_unknown_class_name_is_an_error_that_suggests_close_matches(colour_model):
    with pytest.raises(ValueError, match=r"'gren'.*'green'"):
        vis.visualize_classes(colour_model, ["red", "gren"], class_names=NAMES, progress=False)
    with pytest.raises(ValueError, match="'zebra'"):
        vis.resolve_targets(["zebr"], imagenet.class_names())
    assert vis.resolve_targets(["tabby cat", 340, "281"], imagenet.class_names()) == [281, 340, 281]
    with pytest.raises(ValueError, match="out of range"):
        vis.visualize_classes(colour_model, [5], progress=False)


def test_a_model_without_a_class_output_is_a_clear_error(colour_model):
    inputs = keras.Input((32, 32, 3))
    feature_map = keras.layers.Conv2D(4, 3)(inputs)
    with pytest.raises(ValueError, match=r"one output of shape \(batch, num_classes\)"):
        vis.visualize_classes(keras.Model(inputs, feature_map), [0], progress=False)
    with pytest.raises(ValueError, match="class names"):
        vis.visualize_classes(colour_model, [0], class_names=["a", "b"], progress=False)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"steps": 0}, {"parameterization": "dct"}, {"tv_weight": -1.0}, {"scale": 1.5}, {"octaves": 11},
        {"image_size": 5000}, {"jitter": -1}, {"learning_rate": float("nan")}, {"seed": -1}, {"octave_scale": 1.0},
    ],
)
def test_invalid_config_repeats_the_bad_value(kwargs):
    ((name, value),) = kwargs.items()
    with pytest.raises(ValueError, match=re.escape(f"Received: {name}={value!r}")):
        vis.VisualizationConfig(**kwargs)


def test_octaves_need_two_steps_each():
    with pytest.raises(ValueError, match=re.escape("Received: steps=9, octaves=9")):
        vis.VisualizationConfig(octaves=9, steps=9)
    assert vis.VisualizationConfig(octaves=9, steps=18).octaves == 9
    assert vis.VisualizationConfig(steps=1).steps == 1  # one octave may have a single step


def test_file_names_are_cleaned_by_one_function():
    assert naming.unique_stems(["tabby cat", "tabby/cat", "Tabby cat", "..", ""], default="class") == [
        "tabby_cat", "tabby_cat_2", "Tabby_cat_3", "class", "class_2"
    ]
    assert naming.safe_stem(".hidden.png") == "hidden.png"


def _nan_model(kind: str) -> keras.Model:
    base = tiny_classifier()
    if kind == "loss":
        # The logits themselves are NaN.
        out = keras.layers.Lambda(lambda t: t * keras.ops.log(keras.ops.zeros_like(t) - 1.0))(base.output)
    else:
        # Finite logits, NaN gradient: sqrt'(0) = inf times 0.
        out = keras.layers.Lambda(lambda t: t + keras.ops.sqrt(keras.ops.relu(t - 1e9)))(base.output)
    return keras.Model(base.input, out)


@pytest.mark.parametrize("kind", ["loss", "gradient"])
def test_nan_stops_with_a_clear_error_and_writes_no_image(kind, tmp_path):
    log_dir = tmp_path / "logs"
    with pytest.raises(vis.NonFiniteLossError, match="NaN or infinite at step 0"):
        vis.visualize_classes(_nan_model(kind), [0], config=quick(steps=5), log_dir=log_dir, progress=False)
    # Nothing was written for the failed step (no NaN image in TensorBoard).
    events = glob.glob(str(log_dir / "events.*"))
    tags = {v.tag for e in events for ev in tf.compat.v1.train.summary_iterator(e) for v in ev.summary.value}
    assert not any(tag.startswith("image/") for tag in tags)


# ---------------------------------------------------------------- the parts


@pytest.mark.parametrize("jit_compile, sparse", [(False, True), (False, False), (True, False)])
def test_the_affine_resampling_has_an_exact_gradient_in_a_compiled_step(jit_compile, sparse):
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(2, 20, 24, 3)), tf.float32)
    y = tf.constant(rng.normal(size=(2, 16, 16, 3)), tf.float32)
    kwargs = dict(
        output_size=16,
        angle=tf.constant(0.3),
        zoom=tf.constant(0.8),
        shift=tf.constant([2.5, -7.0]),
        sparse=sparse,
    )

    @tf.function(jit_compile=jit_compile)
    def adjoint(x, y):
        with tf.GradientTape() as tape:
            tape.watch(x)
            out = vis.affine_resample(x, **kwargs)
            inner = tf.reduce_sum(out * y)
        return out, inner, tape.gradient(inner, x)

    out, inner, grad = adjoint(x, y)
    # Sparse product and gathers are two ways of computing the same map.
    other = vis.affine_resample(x, **{**kwargs, "sparse": not sparse})
    np.testing.assert_allclose(out.numpy(), other.numpy(), atol=1e-4)
    # The map is linear in the image, so <A x, y> = <x, A^T y> when the gradient A^T y is exact.
    np.testing.assert_allclose(float(tf.reduce_sum(x * grad)), float(inner), rtol=1e-4)
    assert np.all(np.isfinite(grad.numpy())) and np.abs(grad.numpy()).sum() > 0

    @tf.function(jit_compile=jit_compile)
    def random_grad(x, seed):
        with tf.GradientTape() as tape:
            tape.watch(x)
            out = vis.random_affine(x, output_size=16, seed=seed, jitter=3, scale=0.1, rotation=10.0, sparse=sparse)
            loss = tf.reduce_sum(tf.square(out))
        return out, tape.gradient(loss, x)

    out1, g1 = random_grad(x, tf.constant([0, 1]))
    out2, _ = random_grad(x, tf.constant([0, 1]))
    out3, _ = random_grad(x, tf.constant([0, 2]))
    np.testing.assert_array_equal(out1.numpy(), out2.numpy())  # stateless: the seed decides
    assert not np.allclose(out1.numpy(), out3.numpy())
    assert np.all(np.isfinite(g1.numpy())) and np.abs(g1.numpy()).sum() > 0


def test_affine_resampling_identity_and_whole_pixel_shift_are_exact():
    x = tf.constant(np.random.default_rng(1).uniform(size=(1, 12, 12, 3)), tf.float32)
    ident = vis.affine_resample(x, output_size=12)
    np.testing.assert_allclose(ident.numpy(), x.numpy(), atol=1e-6)
    shifted = vis.affine_resample(x, output_size=12, shift=(2.0, 0.0))
    # Sampling 2 pixels to the right; the border is mirrored.
    np.testing.assert_allclose(shifted.numpy()[0, :, :10], x.numpy()[0, :, 2:], atol=1e-6)
    np.testing.assert_allclose(shifted.numpy()[0, :, 10], x.numpy()[0, :, 11], atol=1e-6)


@pytest.mark.parametrize("size", [24, 25])
def test_fourier_parameterization_round_trips_an_image_and_starts_grey(size):
    image = np.random.default_rng(2).uniform(0.05, 0.95, size=(2, size, size, 3)).astype(np.float32)
    param = vis.FourierImage(size)
    rendered = param.render(tf.constant(param.from_images(image))).numpy()
    np.testing.assert_allclose(rendered, image, atol=1e-4)
    start = param.render(tf.constant(param.initial(1, std=0.01, rng=np.random.default_rng(0)))).numpy()
    assert abs(start.mean() - 0.5) < 0.02 and start.std() < 0.05


@pytest.mark.parametrize("size", [24, 25])
def test_fourier_planes_and_their_written_out_gradient_equal_autodiff_of_the_formula(size):
    # The optimization step works on channel planes, with the inverse FFT's
    # gradient written out: both must match autodiff of the plain formula.
    param = vis.FourierImage(size)
    rng = np.random.default_rng(4)
    params = tf.constant(rng.normal(0, 0.3, (2, *param.spectrum_shape, 2)), tf.float32)
    upstream = tf.constant(rng.normal(size=(2, size, size, 3)), tf.float32)

    def reference(p):
        spectrum = tf.complex(p[..., 0], p[..., 1]) * tf.cast(param._scale, tf.complex64)
        planes = tf.signal.irfft2d(spectrum, fft_length=[size, size])
        x = tf.transpose(planes, (0, 2, 3, 1)) / param._SPATIAL_SCALE
        return tf.sigmoid(tf.einsum("bhwc,dc->bhwd", x, tf.constant(param._color)))

    with tf.GradientTape(persistent=True) as tape:
        tape.watch(params)
        ours = tf.transpose(param.render_planes(params), (0, 2, 3, 1))
        theirs = reference(params)
        ours_inner, theirs_inner = tf.reduce_sum(ours * upstream), tf.reduce_sum(theirs * upstream)
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), atol=1e-6)
    np.testing.assert_allclose(param.render(params).numpy(), ours.numpy(), atol=0)
    np.testing.assert_allclose(
        tape.gradient(ours_inner, params).numpy(), tape.gradient(theirs_inner, params).numpy(), atol=1e-5
    )


def test_channel_planes_give_the_same_penalty_and_resampling():
    rng = np.random.default_rng(5)
    planes = tf.constant(rng.uniform(size=(2, 3, 20, 24)), tf.float32)
    images = tf.transpose(planes, (0, 2, 3, 1))
    np.testing.assert_allclose(
        vis.total_variation(planes, channels_first=True).numpy(), vis.total_variation(images).numpy(), rtol=1e-6
    )
    seed = tf.constant([1, 2])
    kwargs = dict(output_size=16, seed=seed, jitter=3, scale=0.1, rotation=10.0)
    ours = vis.random_affine(planes, gain=255.0, channels_first=True, **kwargs)
    np.testing.assert_allclose(ours.numpy(), vis.random_affine(images, **kwargs).numpy() * 255.0, atol=1e-4)
    same_size = vis.random_affine(planes[:, :, :16, :16], output_size=16, seed=seed, gain=2.0, channels_first=True)
    np.testing.assert_allclose(same_size.numpy(), images[:, :16, :16].numpy() * 2.0)


def test_total_variation_gradient_equals_autodiff():
    images = tf.constant(np.random.default_rng(3).uniform(size=(2, 9, 11, 3)), tf.float32)
    weights = tf.constant([1.0, -2.0])

    def reference(x):  # the same formula, differentiated by TF
        dy = tf.reduce_mean(tf.abs(x[:, 1:] - x[:, :-1]), axis=(1, 2, 3))
        return dy + tf.reduce_mean(tf.abs(x[:, :, 1:] - x[:, :, :-1]), axis=(1, 2, 3))

    with tf.GradientTape(persistent=True) as tape:
        tape.watch(images)
        ours = tf.reduce_sum(vis.total_variation(images) * weights)
        theirs = tf.reduce_sum(reference(images) * weights)
    np.testing.assert_allclose(float(ours), float(theirs), rtol=1e-6)
    np.testing.assert_allclose(tape.gradient(ours, images).numpy(), tape.gradient(theirs, images).numpy(), atol=1e-7)


def test_total_variation_is_a_per_pixel_mean():
    flat = np.full((1, 16, 16, 3), 0.5, np.float32)
    assert vis.total_variation(flat).numpy()[0] == 0.0
    stripes = np.tile(np.array([0.0, 1.0], np.float32), 8)[None, None, :, None] * np.ones((1, 16, 1, 3), np.float32)
    big = np.repeat(np.repeat(stripes, 2, axis=1), 2, axis=2)  # same pattern, twice the size
    assert vis.total_variation(stripes).numpy()[0] == pytest.approx(1.0)
    assert vis.total_variation(big).numpy()[0] == pytest.approx(15 / 31, rel=1e-5)


# ---------------------------------------------------------------- the CLI


@pytest.fixture
def saved_tiny_classifier(tmp_path):
    model = kt.build_classifier("mobilenet", alpha=0.25, num_classes=3, weights=None, image_size=32, dropout=0.0)
    path = tmp_path / "model" / "model.keras"
    path.parent.mkdir()
    model.save(path)
    save_class_names(["Abyssinian", "Bengal", "pug"], path.parent / "classes.json")
    return path


def test_cli_writes_the_promised_files_for_a_saved_classifier(saved_tiny_classifier, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["--model", str(saved_tiny_classifier), "--class", "bengal", "--class", "2", "--steps", "12"]
    code = ideal_class.main(args + ["--image-every", "5", "--no-progress", "--output-dir", str(out)])
    assert code == 0
    for name in ("ideal_Bengal.png", "ideal_pug.png", "ideal_classes.png", "history.png", "result.json"):
        assert (out / name).is_file(), name
    summary = strict_json(out / "result.json")
    assert [c["class_name"] for c in summary["classes"]] == ["Bengal", "pug"]
    # The image is saved losslessly at model resolution, and the reported
    # probability is the one of the saved file.
    png = np.asarray(Image.open(out / "ideal_pug.png"))
    assert png.shape == (32, 32, 3) and png.dtype == np.uint8
    model = kt.load_model(saved_tiny_classifier)
    expected = kt.class_probabilities(model, png)[0, 2]
    assert summary["classes"][1]["probability"] == pytest.approx(float(expected), abs=1e-5)
    assert summary["classes"][1]["steps"] == 12 and "tv" in summary["classes"][1]["final"]
    assert summary["config"]["seed"] == 0
    events = glob.glob(str(out / "logs" / "events.*"))
    tags = {v.tag for e in events for ev in tf.compat.v1.train.summary_iterator(e) for v in ev.summary.value}
    assert {"probability/Bengal", "tv/pug", "image/Bengal", "image/pug"} <= tags
    assert "ideal_pug.png: pug (2)" in capsys.readouterr().out


def strict_json(path):
    """result.json parsed strictly: a bare NaN or Infinity fails the test."""

    def reject(constant):
        raise AssertionError(f"{path} holds the non-standard JSON constant {constant}")

    return json.loads(path.read_text(), parse_constant=reject)


def run_cli(argv, capsys) -> tuple[int, str]:
    """The exit status of `ideal_class` run in this process, and the one line it printed on stderr."""
    code = ideal_class.main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("python -m keras_transfer.experiments.ideal_class: error: "), lines[0]
    return code, lines[0]


@pytest.fixture(scope="module")
def saved_colour_model(tmp_path_factory):
    """An untrained 5-class colour classifier saved as model.keras with classes.json, and bad files."""
    folder = tmp_path_factory.mktemp("colour_model")
    keras.utils.set_random_seed(0)
    tiny_classifier().save(folder / "model.keras")
    save_class_names(NAMES, folder / "classes.json")
    (folder / "corrupt.keras").write_text("this is a text file renamed .keras")
    (folder / "a_file").write_text("not a folder")
    return folder


def test_cli_rejects_an_unknown_class_with_suggestions(saved_colour_model, tmp_path, capsys):
    args = ["--model", str(saved_colour_model / "model.keras"), "--class", "gren", "--no-progress"]
    code, line = run_cli(args + ["--output-dir", str(tmp_path / "o")], capsys)
    assert code == 2
    assert "'gren'" in line and "'green'" in line
    assert not os.path.exists(tmp_path / "o" / "result.json")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--octaves", "9", "--steps", "9"], "Received: steps=9, octaves=9"),
        (["--octaves", "11"], "Received: --octaves 11"),
        (["--steps", "0"], "Received: --steps 0"),
        (["--scale", "nan"], "Received: --scale nan"),
        (["--parameterization", "dct"], "Received: --parameterization dct"),
        (["--class", "5000"], "Received: 5000"),
        (["--alpha", "0.5"], "alpha applies to --backbone models"),
        (["--backbone", "mobilenet"], "not both"),
        (["--model", "{d}/corrupt.keras"], "corrupt.keras"),
        (["--model", "{d}/missing.keras"], "missing.keras"),
        (["--output-dir", "{d}/a_file"], "a_file"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_status_2(saved_colour_model, tmp_path, capsys, argv, message):
    argv = [a.format(d=saved_colour_model) for a in argv]
    for flag, value in (
        ("--model", str(saved_colour_model / "model.keras")),
        ("--class", "red"),
        ("--output-dir", str(tmp_path / "out")),
    ):
        if flag not in argv:
            argv += [flag, value]
    code, line = run_cli(argv + ["--no-progress"], capsys)
    assert code == 2
    assert message in line, line
    assert not (tmp_path / "out" / "result.json").exists()


def test_cli_writes_strict_json_when_the_speed_is_unmeasured(saved_colour_model, tmp_path, capsys):
    """One step: no step after the compiling one, so no speed; null in result.json, never NaN."""
    out = tmp_path / "out"
    argv = ["--model", str(saved_colour_model / "model.keras"), "--class", "red", "--steps", "1", "--no-progress"]
    assert ideal_class.main(argv + ["--output-dir", str(out)]) == 0
    summary = strict_json(out / "result.json")
    assert summary["steps_per_second"] is None
    assert summary["classes"][0]["file"] == "ideal_red.png"
    assert "speed not measured" in capsys.readouterr().out


def test_cli_help_documents_every_flag(capsys):
    assert ideal_class.main(["--help"]) == 0
    text = capsys.readouterr().out
    for flag in ("--backbone", "--alpha", "--model", "--class", "--steps", "--learning-rate", "--tv-weight",
                 "--parameterization", "--jitter", "--image-size", "--seed", "--output-dir", "--objective"):
        assert flag in text, flag
    parser = ideal_class.build_parser()
    undocumented = [a.dest for a in parser._actions if not a.help]
    assert not undocumented
    # Every visualization setting is a flag, declared once in VisualizationConfig.
    for field in dataclasses.fields(vis.VisualizationConfig):
        assert "--" + field.name.replace("_", "-") in text, field.name


def test_cli_flags_become_the_configuration(tmp_path):
    args = ideal_class.build_parser().parse_args([
        "--class", "tabby", "--class", "281", "--steps", "64", "--octaves", "4", "--jit-compile",
        "--no-progress", "--output-dir", str(tmp_path),
    ])
    config = ideal_class.config_from_args(args)
    assert config.classes == ("tabby", 281) and config.backbone == "mobilenet" and config.model is None
    assert config.visualization == vis.VisualizationConfig(steps=64, octaves=4, jit_compile=True, seed=0)
    assert not config.progress and config.image_every == 50


# ---------------------------------------------------------------- real weights


@requires_shared
@pytest.mark.real
@pytest.mark.slow
def test_ideal_tabby_of_mobilenet_is_a_tabby_and_regularization_smooths_it(tmp_path):
    """Acceptance: MobileNet 0.25 ImageNet weights, 224 px, batch of 1, at most 300 steps."""
    model = kt.build_imagenet_classifier("mobilenet", alpha=0.25)
    start = time.perf_counter()
    config = vis.VisualizationConfig(steps=256, seed=0)  # the defaults otherwise
    result = vis.visualize_classes(model, ["tabby"], config=config, progress=False)
    seconds = time.perf_counter() - start
    path = tmp_path / "ideal_tabby.png"
    files.write_png(path, result.uint8_images[0])
    saved = files.read_png(path)
    probs = kt.class_probabilities(model, saved)[0]
    assert probs.argmax() == 281 and probs[281] >= 0.9, (probs.argmax(), probs[281])
    print(f"ideal tabby: p={probs[281]:.4f} in {seconds:.1f} s ({result.steps_per_second:.1f} steps/s)")

    # Same pixel optimization with and without the total-variation penalty.
    tv = {}
    for weight in (None, 0.0):
        config = vis.VisualizationConfig(parameterization="pixel", tv_weight=weight, steps=100, seed=0)
        images = vis.visualize_classes(model, [281], config=config, progress=False).uint8_images
        tv[weight] = float(vis.total_variation(images / 255.0).numpy()[0])
    print(f"pixel, 100 steps: TV {tv[None]:.4f} with the default weight, {tv[0.0]:.4f} without")
    assert tv[None] < 0.5 * tv[0.0], tv


# ---------------------------------------------------------------- review: class lookup


def test_a_class_named_by_digits_is_found_by_its_name_not_taken_as_an_index():
    # Class folders "1", "10", "2" (sorted as text): the name "1" is class 0, not index 1 ("10").
    names = ["1", "10", "2"]
    assert vis.resolve_targets(["1", "10", "2"], names) == [0, 1, 2]
    assert kt.classes.class_mapping(["2", "1", "10"], names).tolist() == [2, 0, 1]
    assert vis.resolve_targets([1, "0"], names) == [1, 0]  # ints, and digits naming no class, stay indices


def test_a_name_shared_by_several_classes_is_an_error_not_the_first_of_them():
    names = imagenet.class_names()
    with pytest.raises(ValueError, match=r"'crane'.*134.*517"):
        vis.resolve_targets(["crane"], names)
    # Names that differ only in case are told apart by the exact spelling.
    assert vis.resolve_targets(["Cardigan", "cardigan", 517], names) == [264, 474, 517]


def test_cli_run_again_in_the_same_folder_logs_only_the_new_run(saved_colour_model, tmp_path, capsys):
    out = tmp_path / "out"
    base = ["--model", str(saved_colour_model / "model.keras"), "--class", "red", "--no-progress",
            "--output-dir", str(out)]
    assert ideal_class.main(base + ["--steps", "4"]) == 0
    assert ideal_class.main(base + ["--steps", "2", "--seed", "1"]) == 0
    steps = [ev.step for e in glob.glob(str(out / "logs" / "events.*"))
             for ev in tf.compat.v1.train.summary_iterator(e) for v in ev.summary.value if v.tag == "loss/red"]
    assert sorted(steps) == [1, 2], steps  # not also the 4 steps of the earlier run
