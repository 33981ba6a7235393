"""Explaining predictions: the methods' mechanics, faithfulness, the sanity checks of Adebayo et al., the CLI."""

from __future__ import annotations

import glob
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_transfer as kt
from keras_transfer import explain as ex
from keras_transfer import files
from keras_transfer.experiments import explain as explain_cli
from keras_transfer.models import save_class_names
from conftest import SHARED_DATA, requires_shared

SIZE = 96  # MobileNet's last block is 3x3 here: Grad-CAM has a map to show
NUM_CLASSES = 4
QUICK = dict(smoothgrad_samples=4, ig_steps=8, occlusion_window=32, occlusion_stride=32, batch_size=8)


def photos(n: int, seed: int = 0, size: int = SIZE) -> np.ndarray:
    """Noise with a bright blob and a coloured background: something for the filters to respond to."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 255, (n, size, size, 3)) * 0.3 + rng.uniform(0, 180, (n, 1, 1, 3))
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        cy, cx = rng.integers(size // 4, 3 * size // 4, 2)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (size / 8) ** 2))
        x[i] += blob[..., None] * rng.uniform(60, 160, 3)
    return np.clip(x, 0, 255).astype(np.float32)


def randomize(layer: keras.layers.Layer, seed: int) -> None:
    """New Gaussian weights (kernel and bias), of the scale of the old kernel or 0.1."""
    rng = np.random.default_rng(seed)
    for weight in layer.trainable_weights or layer.weights:
        old = keras.ops.convert_to_numpy(weight)
        scale = float(old.std()) or 0.1
        weight.assign(rng.normal(0.0, scale, old.shape).astype(old.dtype))


@pytest.fixture(scope="module")
def tiny_model(tiny_backbone_weights) -> keras.Model:
    """MobileNet 0.25 at 96 px (calibrated random weights) with a random, non-zero linear head."""
    keras.utils.set_random_seed(0)
    model = kt.build_classifier(
        "mobilenet", alpha=0.25, num_classes=NUM_CLASSES, image_size=SIZE, weights=tiny_backbone_weights
    )
    randomize(model.get_layer("logits"), seed=1)
    return model


@pytest.fixture(scope="module")
def explainer(tiny_model) -> ex.Explainer:
    return ex.Explainer(tiny_model, config=ex.ExplainConfig(**QUICK))


# ---------------------------------------------------------------- mechanics


def test_every_method_gives_normalized_maps_of_the_predicted_class(explainer, tiny_model):
    images = photos(3)
    logits = keras.ops.convert_to_numpy(tiny_model(images))
    probabilities = keras.ops.convert_to_numpy(keras.ops.softmax(logits))
    for method in ex.METHODS:
        result = explainer(images, method=method)
        assert result.maps.shape == (3, SIZE, SIZE) and result.maps.dtype == np.float32, method
        assert result.maps.min() == 0.0 and result.maps.max() == 1.0, method
        np.testing.assert_array_equal(result.classes, logits.argmax(1))
        np.testing.assert_allclose(result.probabilities, probabilities.max(1), rtol=1e-4)
        assert (result.layer is not None) == (method in ex.CAM_METHODS)


def test_batching_equals_one_by_one(explainer):
    images = photos(3, seed=1)  # batch_size 8 runs them together; then one at a time
    for method in ex.METHODS:
        together = explainer(images, method=method).maps
        alone = np.concatenate([explainer(images[i : i + 1], method=method).maps for i in range(3)])
        np.testing.assert_allclose(together, alone, atol=2e-4, err_msg=method)


def test_a_given_class_is_explained_instead_of_the_predicted_one(explainer, tiny_model):
    images = photos(2, seed=2)
    predicted = explainer(images, method="gradcam")
    other = (predicted.classes + 1) % NUM_CLASSES
    given = explainer(images, method="gradcam", classes=other)
    np.testing.assert_array_equal(given.classes, other)
    probabilities = keras.ops.convert_to_numpy(keras.ops.softmax(tiny_model(images)))
    np.testing.assert_allclose(given.probabilities, probabilities[[0, 1], other], rtol=1e-3, atol=1e-6)
    same_for_all = explainer(images, method="gradients", classes=2)
    np.testing.assert_array_equal(same_for_all.classes, [2, 2])


def test_gradcam_uses_the_last_conv_layer_inside_the_backbone(explainer, tiny_model):
    assert ex.find_last_conv_layer(tiny_model) == "conv_pw_13_relu"
    images = photos(2, seed=3)
    result = explainer(images, method="gradcam", classes=1)
    assert result.layer == "conv_pw_13_relu" and result.layer_maps.shape == (2, 3, 3)
    # Grad-CAM by hand on the backbone alone: preprocessing, backbone, pooling and head applied in turn.
    import tensorflow as tf

    backbone = kt.models.get_backbone(tiny_model)
    inner = keras.Model(backbone.input, [backbone.get_layer("conv_pw_13_relu").output, backbone.output])
    with tf.GradientTape() as tape:
        activations, features = inner(images / 127.5 - 1.0)
        logits = tiny_model.get_layer("logits")(tf.reduce_mean(features, axis=(1, 2)))
        score = tf.reduce_sum(logits[:, 1])
    gradients = tape.gradient(score, activations)
    cam = tf.nn.relu(tf.reduce_sum(activations * tf.reduce_mean(gradients, axis=(1, 2), keepdims=True), -1)).numpy()
    spread = np.ptp(cam, axis=(1, 2), keepdims=True)
    cam = np.where(spread > 0, (cam - cam.min(axis=(1, 2), keepdims=True)) / np.maximum(spread, 1e-30), 0.0)
    np.testing.assert_allclose(result.layer_maps, cam, atol=1e-3)


def test_a_named_layer_is_used_and_a_wrong_name_suggests_close_ones(tiny_model):
    images = photos(1, seed=4)
    result = ex.explain(tiny_model, images, method="gradcam", config=ex.ExplainConfig(layer="conv_pw_11_relu"))
    assert result.layer == "conv_pw_11_relu" and result.layer_maps.shape == (1, 6, 6)
    with pytest.raises(ValueError, match="conv_pw_11_relu"):
        ex.Explainer(tiny_model, config=ex.ExplainConfig(layer="conv_pw_11_rel")).layer


@pytest.mark.parametrize("name", ["base_model", "backbone"])
def test_gradcam_of_a_keras_model_around_a_nested_base_model(name):
    """The usual Keras transfer-learning model, `Dense(GAP(base_model(inputs)))`: the default layer is the nested
    model, whose own `output` belongs to its inner graph (it crashed: "Output ... is not connected to inputs"). Only a
    keras_transfer classifier's InferenceBackbone is searched inside, as models.find_layer does: a plain model named
    "backbone" was searched for the layer, which was then not found outside ("no layer 'conv2d'")."""
    keras.utils.set_random_seed(0)
    inner_input = keras.Input((32, 32, 3))
    features = keras.layers.Conv2D(4, 3, strides=2, activation="relu")(keras.layers.Rescaling(1 / 255)(inner_input))
    base = keras.Model(inner_input, features, name=name)
    inputs = keras.Input((32, 32, 3))
    head = keras.layers.Dense(3, kernel_initializer=keras.initializers.RandomNormal(stddev=1.0, seed=1))
    model = keras.Model(inputs, head(keras.layers.GlobalAveragePooling2D()(base(inputs))))
    images = photos(2, seed=12, size=32)
    result = ex.explain(model, images, method="gradcam", classes=[0, 1])
    assert result.layer == name and result.layer_maps.shape == (2, 15, 15) and result.maps.shape == (2, 32, 32)
    # The same map by hand, from the base model's output.
    import tensorflow as tf

    with tf.GradientTape() as tape:
        activations = base(images)
        tape.watch(activations)
        logits = head(tf.reduce_mean(activations, axis=(1, 2)))
        score = tf.reduce_sum(tf.gather(logits, [0, 1], axis=1, batch_dims=1))
    gradients = tape.gradient(score, activations)
    cam = tf.nn.relu(tf.reduce_sum(activations * tf.reduce_mean(gradients, axis=(1, 2), keepdims=True), -1)).numpy()
    assert np.all(np.ptp(cam, axis=(1, 2)) > 0)
    cam = (cam - cam.min(axis=(1, 2), keepdims=True)) / np.ptp(cam, axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(result.layer_maps, cam, atol=1e-4)


def smooth_model(size: int = 32) -> keras.Model:
    """A small flat convnet with smooth activations: the midpoint rule converges fast along its paths.

    (The tiny MobileNet's random weights make its logit jump about along a path, so no affordable number
    of steps would integrate it.)
    """
    keras.utils.set_random_seed(0)
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    init = keras.initializers.RandomNormal(stddev=0.5, seed=0)
    x = keras.layers.Conv2D(8, 3, activation="softplus", kernel_initializer=init)(x)
    x = keras.layers.Conv2D(8, 3, strides=2, activation="tanh", kernel_initializer=init)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    head = keras.layers.Dense(3, kernel_initializer=keras.initializers.RandomNormal(stddev=3.0, seed=1))
    return keras.Model(inputs, head(x))


def test_gradcam_of_a_mixed_precision_model_matches_its_float32_twin():
    """Under a mixed policy the layer's activations are float16: the map must be the float32 model's (it crashed:
    the gradient was asked of a float32 copy of the activations, which the logits do not depend on)."""
    images = photos(2, seed=11, size=32)
    reference = smooth_model()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        mixed = smooth_model()
    finally:
        keras.mixed_precision.set_global_policy("float32")
    mixed.set_weights(reference.get_weights())
    for method in ex.CAM_METHODS:
        expected = ex.explain(reference, images, method=method, classes=[0, 2])
        result = ex.explain(mixed, images, method=method, classes=[0, 2])
        assert result.maps.dtype == np.float32 and result.layer_maps.shape == expected.layer_maps.shape == (2, 14, 14)
        np.testing.assert_allclose(result.layer_maps, expected.layer_maps, atol=0.02, err_msg=method)
        np.testing.assert_allclose(result.maps, expected.maps, atol=0.02, err_msg=method)


def test_integrated_gradients_add_up_to_the_logit_difference():
    model = smooth_model()
    images = photos(2, seed=5, size=32)
    for baseline in ("black", "blur", "noise"):
        explainer = ex.Explainer(model, config=ex.ExplainConfig(ig_steps=32, ig_baseline=baseline))
        attributions = explainer.integrated_gradients(images, classes=[0, 2])
        logits = keras.ops.convert_to_numpy(model(images))[[0, 1], [0, 2]]
        base = keras.ops.convert_to_numpy(model(explainer.baseline(images)))[[0, 1], [0, 2]]
        assert np.all(np.abs(logits - base) > 0.1), (baseline, logits - base)  # something to attribute
        np.testing.assert_allclose(attributions.sum(axis=(1, 2, 3)), logits - base, rtol=0.01, atol=1e-4)


def region_model(size: int = 32, region: int = 16) -> keras.Model:
    """A flat model whose class-0 logit is 10x the mean red of the top-left `region` square; class 1 is 0."""
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Cropping2D(((0, size - region), (0, size - region)))(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    head = keras.layers.Dense(2)
    outputs = head(x)
    head.set_weights([np.array([[10.0, 0], [0, 0], [0, 0]], np.float32), np.zeros(2, np.float32)])
    return keras.Model(inputs, outputs)


def test_occlusion_finds_the_only_region_the_model_looks_at():
    model = region_model()
    images = photos(2, seed=6, size=32)
    images[:, :16, :16, 0] = 255.0  # any occlusion of the region lowers the logit
    config = ex.ExplainConfig(occlusion_window=8, occlusion_stride=4)
    maps = ex.explain(model, images, method="occlusion", classes=0, config=config).maps
    # Windows that reach the region start before row/column 16, so they cover pixels < 23 only.
    assert np.all(maps[:, 23:, :] == 0.0) and np.all(maps[:, :, 23:] == 0.0)
    assert np.all(maps[:, 4:12, 4:12] > 0.9)


def test_occlusion_with_gaps_between_windows_is_refused():
    """A stride longer than the window leaves pixels never occluded: their map was 0 / 0, and the NaNs made the
    whole map silently 0."""
    # Refused where the settings are made, before any method computes anything.
    with pytest.raises(ValueError, match=r"occlusion_stride <= occlusion_window.*Received: occlusion_stride=16"):
        ex.ExplainConfig(occlusion_window=8, occlusion_stride=16)
    with pytest.raises(ValueError, match=r"Received: occlusion_stride=9, occlusion_window=8"):
        ex.occlusion_masks(32, window=8, stride=9)
    assert ex.occlusion_masks(32, window=8, stride=8).sum(axis=0).min() == 1.0


def test_deletion_of_a_perfect_map_falls_faster_than_a_random_one():
    model = region_model()
    images = photos(4, seed=7, size=32)
    images[:, :16, :16, 0] = 255.0
    perfect = np.zeros((4, 32, 32), np.float32)
    perfect[:, :16, :16] = 1.0
    scorer = ex.Faithfulness(model, config=ex.FaithfulnessConfig(curve_steps=16))
    good = scorer(images, perfect, classes=0)
    bad = scorer(images, ex.random_maps(4, 32, seed=0), classes=0)
    assert good.deletion.shape == (4, 17)
    assert np.all(good.deletion_auc < bad.deletion_auc - 0.05)
    assert np.all(good.insertion_auc > bad.insertion_auc)
    # The region (a quarter of the pixels) is gone after 4 of the 16 steps: p = softmax([0, 0]) = 0.5.
    np.testing.assert_allclose(good.deletion[:, 4:], 0.5, atol=1e-6)
    patches = scorer.with_config(ex.FaithfulnessConfig(curve_steps=16, patch=8))(images, perfect, classes=0)
    np.testing.assert_allclose(patches.deletion, good.deletion, atol=1e-6)  # squares aligned with the region


def test_rank_correlation_matches_spearman_with_ties():
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    a = np.round(rng.random((3, 8, 8)), 1)  # many ties
    b = a + rng.normal(0, 0.3, a.shape)
    expected = [scipy_stats.spearmanr(x.ravel(), y.ravel())[0] for x, y in zip(a, b)]
    np.testing.assert_allclose(ex.rank_correlation(a, b), expected, atol=1e-12)
    assert float(ex.rank_correlation(a[0], a[0])) == pytest.approx(1.0)


def test_random_maps():
    pixels = ex.random_maps(2, 16, seed=1)
    blobs = ex.random_maps(2, 16, cells=4, seed=1)
    assert pixels.shape == blobs.shape == (2, 16, 16) and blobs.min() == 0.0 and blobs.max() == 1.0
    np.testing.assert_array_equal(pixels, ex.random_maps(2, 16, seed=1))
    # Blobs are smooth: neighbours differ far less than in independent pixels.
    assert np.abs(np.diff(blobs, axis=2)).mean() < 0.3 * np.abs(np.diff(pixels, axis=2)).mean()


def test_bad_arguments_name_the_value_and_the_valid_ones(explainer):
    images = photos(1)
    with pytest.raises(ValueError, match=r"Expected method to be one of 'gradcam'.*Received: method='foo'"):
        explainer(images, method="foo")
    with pytest.raises(ValueError, match=r"classes.*\[0, 4\).*Received: classes=7"):
        explainer(images, method="gradcam", classes=7)
    with pytest.raises(ValueError, match=r"\(N, 96, 96, 3\).*Received: shape=\(1, 64, 64, 3\)"):
        explainer(photos(1, size=64), method="gradcam")
    with pytest.raises(ValueError, match="Expected ig_baseline to be one of"):
        ex.ExplainConfig(ig_baseline="white")


# ------------------------------------------- sanity checks (Adebayo et al. 2018)


def correlations(maps_a: np.ndarray, maps_b: np.ndarray) -> list[float]:
    """Rank correlation of each pair of maps whose first map is not constant (Grad-CAM maps of a class
    with no positive evidence are all zero, which correlates with nothing)."""
    return [float(ex.rank_correlation(a, b)) for a, b in zip(maps_a, maps_b) if np.ptp(a) > 0]


def test_sanity_maps_change_when_the_head_and_top_blocks_are_randomized(tiny_backbone_weights):
    keras.utils.set_random_seed(0)
    model = kt.build_classifier(
        "mobilenet", alpha=0.25, num_classes=NUM_CLASSES, image_size=SIZE, weights=tiny_backbone_weights
    )
    randomize(model.get_layer("logits"), seed=1)
    explainer = ex.Explainer(model, config=ex.ExplainConfig(**QUICK))
    images = photos(4, seed=8)
    methods = ("gradcam", "gradcam_pp", "gradients", "integrated_gradients")
    first = explainer(images, method="gradcam")
    before = {m: explainer(images, method=m, classes=first.classes).maps for m in methods}
    backbone = kt.models.get_backbone(model)
    # Cascading randomization, from the top: the head, then the last block's two convolutions.
    cascade = (model.get_layer("logits"), backbone.get_layer("conv_pw_13"), backbone.get_layer("conv_dw_13"))
    for depth, layer in enumerate(cascade, 1):
        randomize(layer, seed=10 + depth)
        for method in methods:
            after = explainer(images, method=method, classes=first.classes).maps
            values = correlations(before[method], after)
            # Every step changes the maps; with the whole cascade random they have little left in common
            # (on this tiny backbone input gradients keep ~0.58: most of their structure is below the top).
            bound = 0.65 if depth == len(cascade) else 0.9
            assert len(values) >= 3 and np.mean(values) < bound, (method, layer.name, values)


def test_sanity_maps_of_different_classes_differ(explainer):
    images = photos(4, seed=9)
    for method in ("gradcam", "gradcam_pp", "integrated_gradients"):
        maps = [explainer(images, method=method, classes=c).maps for c in range(NUM_CLASSES)]
        again = correlations(maps[0], explainer(images, method=method, classes=0).maps)
        assert again == pytest.approx([1.0] * len(again))
        different = [v for a in range(NUM_CLASSES) for b in range(a) for v in correlations(maps[a], maps[b])]
        assert len(different) >= 6 and np.mean(different) < 0.5, (method, different)


# ---------------------------------------------------------------- the command line


@pytest.fixture(scope="module")
def saved_model(tiny_model, tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("explain_model")
    path = kt.models.save_model(tiny_model, folder / "model.keras")
    save_class_names(["cat", "dog", "fox", "owl"], folder / "classes.json")
    return path


def test_cli_writes_overlays_panel_and_result(saved_model, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, image in enumerate(photos(3, seed=10)):
        files.write_png(folder / f"photo {i}.png", image.astype(np.uint8))
    (folder / "broken.jpg").write_bytes(b"not an image")
    out = tmp_path / "out"
    status = explain_cli.main([
        "--model", saved_model, "--images", str(folder), "--method", "gradcam", "--method", "occlusion",
        "--occlusion-window", "48", "--occlusion-stride", "48", "--curve-steps", "4", "--patches", "1,8",
        "--panel-images", "2", "--no-progress", "--output-dir", str(out),
    ])
    assert status == 0
    for name in ("photo_0_gradcam.png", "photo_2_occlusion.png", "panel.png", "curves_patch8.png"):
        assert (out / name).is_file(), name
    assert files.read_png(out / "photo_0_gradcam.png").shape == (SIZE, SIZE, 3)
    assert glob.glob(str(out / "logs" / "events.out.tfevents.*"))
    result = json.loads((out / "result.json").read_text())
    assert result["skipped"]["count"] == 1 and result["skipped"]["files"][0].endswith("broken.jpg")
    assert result["layer"] == "conv_pw_13_relu" and result["methods"] == ["gradcam", "occlusion"]
    image = result["images"][0]
    assert image["class_name"] in ("cat", "dog", "fox", "owl") and 0 < image["probability"] <= 1
    aucs = image["faithfulness"]["patch_8"]
    assert set(aucs) == {"gradcam", "occlusion", "random", "random_blocks"}
    assert 0 <= aucs["gradcam"]["deletion_auc"] <= 1 and 0 <= aucs["random"]["insertion_auc"] <= 1
    assert set(result["faithfulness"]["patch_1"]["auc"]["occlusion"]) >= {"deletion_auc", "insertion_auc"}


def test_cli_run_again_in_the_same_folder_shows_only_the_new_overlays_in_tensorboard(saved_model, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, image in enumerate(photos(2, seed=11)):
        files.write_png(folder / f"p{i}.png", image.astype(np.uint8))
    out = tmp_path / "out"
    base = ["--model", saved_model, "--images", str(folder), "--no-measure", "--no-progress", "--output-dir", str(out)]
    assert explain_cli.main(base + ["--method", "gradcam"]) == 0
    assert explain_cli.main(base + ["--method", "gradients"]) == 0
    tags = {v.tag for e in glob.glob(str(out / "logs" / "events.*"))
            for ev in tf.compat.v1.train.summary_iterator(e) for v in ev.summary.value}
    assert tags and all(tag.startswith("gradients/") for tag in tags), tags  # no gradcam image of the first run


@pytest.mark.parametrize(
    "args, message",
    [
        (["--images", "/nonexistent"], "No folder at '/nonexistent'"),
        (["--method", "gradcam++"], "argument --method: expected one of"),
        (["--class", "zebra"], "Unknown class 'zebra'"),
        (["--layer", "conv_pw_13_rel"], "Close matches: ['conv_pw_13_relu'"),
        (["--occlusion-window", "200"], "occlusion_window <= the model's input size 96"),
    ],
)
def test_cli_bad_input_is_one_line_and_status_2(saved_model, tmp_path, capsys, args, message):
    photo = tmp_path / "a.png"
    files.write_png(photo, photos(1)[0].astype(np.uint8))
    argv = ["--model", saved_model, "--image", str(photo), "--output-dir", str(tmp_path / "out"), *args]
    assert explain_cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


# ---------------------------------------------------------------- real weights


@pytest.mark.real
@requires_shared
def test_real_gradcam_points_at_the_cat_for_cat_and_at_the_dog_for_dog():
    """A cat photo beside a dog photo: Grad-CAM of the best cat class lies on the cat's half, of the best dog class
    on the dog's."""
    from keras_transfer.data import load_image_files

    paths = [os.path.join(SHARED_DATA, "cats_vs_dogs", "train", kind, f"{kind[:-1]}.{i}.jpg") for kind, i in
             (("cats", 1), ("dogs", 1))]
    halves, _, _ = load_image_files(paths, image_size=224)
    image = np.concatenate([halves[0][:, 56:168], halves[1][:, 56:168]], axis=1)[None].astype(np.float32)
    model = kt.build_imagenet_classifier("mobilenet", alpha=0.25)
    logits = keras.ops.convert_to_numpy(model(image))[0]
    cat = 281 + int(np.argmax(logits[281:286]))  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    dog = 151 + int(np.argmax(logits[151:269]))
    maps = ex.explain(model, np.repeat(image, 2, 0), method="gradcam", classes=[cat, dog]).maps
    left = maps[:, :, :112].sum(axis=(1, 2)) / maps.sum(axis=(1, 2))
    assert left[0] > 0.6 and left[1] < 0.4, left


@pytest.mark.real
@pytest.mark.slow  # 21 s on 2 busy cores
@requires_shared
def test_real_sanity_maps_change_when_the_imagenet_top_is_randomized():
    """Adebayo et al.'s cascading randomization on the real MobileNet: the top, then the last block's convolutions."""
    from keras_transfer.data import load_image_files

    paths = [os.path.join(SHARED_DATA, "cats_vs_dogs", "train", f"{k}s", f"{k}.{i}.jpg") for k in ("cat", "dog")
             for i in (1, 2)]
    images, _, _ = load_image_files(paths, image_size=224)
    model = kt.build_imagenet_classifier("mobilenet", alpha=0.25)
    explainer = ex.Explainer(model, config=ex.ExplainConfig(ig_steps=8))
    methods = ("gradcam", "gradients", "integrated_gradients")
    classes = explainer(images, method="gradcam").classes
    before = {m: explainer(images, method=m, classes=classes).maps for m in methods}
    backbone = kt.models.get_backbone(model)
    for name in ("conv_preds", "conv_pw_13", "conv_dw_13"):
        randomize(backbone.get_layer(name), seed=3)
        for method in methods:
            values = correlations(before[method], explainer(images, method=method, classes=classes).maps)
            assert np.mean(values) < 0.6, (name, method, values)
