"""The classifier builder, freezing, serialization and logits handling."""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_transfer as kt
from keras_transfer import classes, imagenet, models
from keras_transfer.errors import CorruptFileError
from keras_transfer.layers import FeatureStandardization, InferenceBackbone
from conftest import requires_shared
from helpers import assert_layer_round_trip

TINY = {"backbone": "mobilenet", "alpha": 0.25, "weights": None, "image_size": 32}


def tiny_classifier(**kwargs) -> keras.Model:
    return kt.build_classifier(**{**TINY, "num_classes": 3, **kwargs})


def images(rng, n=4, size=32):
    return rng.uniform(0, 255, size=(n, size, size, 3)).astype("float32")


def test_classifier_layout_and_frozen_backbone():
    model = tiny_classifier(augmentation=True, dropout=0.2)
    names = [layer.name for layer in model.layers]
    assert names == ["image", "augmentation", "preprocessing", "backbone", "pooling", "feature_standardization",
                     "dropout", "logits"]
    assert model.output_shape == (None, 3)
    assert not models.get_backbone(model).trainable
    assert [w.name for w in model.trainable_weights] == ["kernel", "bias"]
    # The defaults are the training defaults: no dropout, no regularizer.
    default = tiny_classifier()
    assert "dropout" not in [layer.name for layer in default.layers]
    assert default.get_layer("logits").kernel_regularizer is None


def test_kernel_l2_is_the_raw_keras_factor(rng):
    model = tiny_classifier(kernel_l2=0.25)
    kernel = rng.normal(size=(256, 3)).astype("float32")
    model.get_layer("logits").set_weights([kernel, np.zeros(3, "float32")])
    model(images(rng, n=1))
    (penalty,) = model.losses
    np.testing.assert_allclose(float(penalty), 0.25 * np.sum(kernel.astype("float64") ** 2), rtol=1e-5)


def test_layers_survive_serialization(tmp_path, rng):
    standardization = FeatureStandardization(name="standardization")
    standardization.build((None, 5))
    standardization.set_statistics(rng.normal(2.0, 3.0, size=(20, 5)))
    assert_layer_round_trip(standardization, rng.normal(size=(4, 5)).astype("float32"), tmp_path)

    backbone = kt.build_backbone("mobilenet", alpha=0.25, image_size=32, weights=None)
    wrapped = InferenceBackbone(backbone, name="wrapped_backbone")
    assert_layer_round_trip(wrapped, images(rng) / 127.5 - 1.0, tmp_path)


def test_keras_round_trip_predicts_identically(tmp_path, rng):
    model = tiny_classifier(augmentation=True, dropout=0.2)
    x = images(rng)
    # Make the head non-trivial so equal predictions mean something.
    model.get_layer("logits").set_weights([rng.normal(size=(256, 3)).astype("float32"), np.arange(3.0)])
    models.set_feature_statistics(model, rng.normal(2.0, 3.0, size=(10, 256)))
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = kt.load_model(path)
    np.testing.assert_array_equal(model.predict(x, verbose=0), loaded.predict(x, verbose=0))
    assert [layer.name for layer in loaded.layers] == [layer.name for layer in model.layers]
    assert not models.get_backbone(loaded).trainable
    # Inference needs no optimizer; training on does, on request.
    assert getattr(loaded, "optimizer", None) is None
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.optimizer.build(model.trainable_variables)
    model.save(path)
    assert kt.load_model(path, compile=True).optimizer is not None


def test_load_model_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.keras"):
        kt.load_model(tmp_path / "nothing.keras")
    other = tmp_path / "model.h5"
    other.write_bytes(b"x")
    with pytest.raises(ValueError, match=r"model\.h5") as info:
        kt.load_model(other)
    assert "`.keras` model file saved by keras_transfer" in str(info.value)


def test_a_corrupt_model_file_is_reported_as_such(tmp_path):
    good = models.save_model(tiny_classifier(), tmp_path / "good.keras")
    data = open(good, "rb").read()
    for name, content in [("text.keras", b"not a model\n"), ("empty.keras", b""),
                          ("truncated.keras", data[: len(data) // 2])]:
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(CorruptFileError, match=name):
            kt.load_model(path)


def test_save_model_is_atomic_and_loads_back(tmp_path, rng):
    model = tiny_classifier()
    path = models.save_model(model, tmp_path / "model.keras")
    assert os.listdir(tmp_path) == ["model.keras"]  # no temporary file left
    x = images(rng)
    np.testing.assert_array_equal(model.predict(x, verbose=0), kt.load_model(path).predict(x, verbose=0))
    with pytest.raises(ValueError, match="model.h5"):
        models.save_model(model, tmp_path / "model.h5")


def test_find_layer_by_name_or_index_with_suggestions():
    model = tiny_classifier()
    backbone = models.get_backbone(model)
    assert models.find_layer(model, "conv_pw_13") is backbone.get_layer("conv_pw_13")  # a classifier: its backbone
    assert models.find_layer(backbone, "conv_pw_13") is backbone.get_layer("conv_pw_13")
    assert models.find_layer(backbone, 1) is backbone.layers[1]
    assert models.find_layer(backbone, -1) is backbone.layers[-1]
    with pytest.raises(ValueError, match=r"'conv_pw_14'.*Close matches: .*'conv_pw_13'"):
        models.find_layer(model, "conv_pw_14")
    n = len(backbone.layers)
    with pytest.raises(ValueError, match=f"has {n} layers.*layer={n}"):
        models.find_layer(backbone, n)


def test_check_layer_name_needs_no_model_and_changes_nothing():
    keras.utils.set_random_seed(0)
    before = tiny_classifier(weights=None)
    names = [l.name for l in models.get_backbone(before).layers]
    weights = [w.numpy() for w in before.weights]
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    models._backbone_layer_names.cache_clear()
    assert models.check_layer_name("mobilenet", "conv_pw_13", alpha=0.25, image_size=32) == "conv_pw_13"
    assert models.check_layer_name("mobilenet", 3, alpha=0.25, image_size=32) == names[3]
    with pytest.raises(ValueError, match=r"'conv_pw_14'.*conv_pw_1"):
        models.check_layer_name("mobilenet", "conv_pw_14", alpha=0.25, image_size=32)
    with pytest.raises(ValueError, match="layer=1000"):
        models.check_layer_name("mobilenet", 1000, alpha=0.25, image_size=32)
    # The throwaway build left automatic names and random state alone.
    after = tiny_classifier(weights=None)
    assert [l.name for l in models.get_backbone(after).layers] == names
    for a, b in zip(weights, after.weights):
        np.testing.assert_array_equal(a, b.numpy())


def test_backbone_stays_in_inference_mode_while_fine_tuning(rng, tiny_backbone_weights):
    """BatchNorm moving statistics do not move, even with every layer trainable."""
    model = tiny_classifier(dropout=0.0, weights=tiny_backbone_weights)
    kt.unfreeze_backbone(model, train_batchnorm=True)
    x = images(rng, n=16)
    np.testing.assert_allclose(model(x, training=True), model(x, training=False), rtol=1e-5, atol=1e-5)
    bn = [l for l in models.get_backbone(model).layers if isinstance(l, keras.layers.BatchNormalization)]
    before = [v.numpy().copy() for layer in bn for v in (layer.moving_mean, layer.moving_variance)]
    gamma_before = bn[0].gamma.numpy().copy()
    model.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, rng.integers(0, 3, size=16), epochs=2, batch_size=8, verbose=0)
    after = [v.numpy() for layer in bn for v in (layer.moving_mean, layer.moving_variance)]
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(gamma_before, bn[0].gamma.numpy())  # it did train


def test_unfreeze_top_n_and_from_layer():
    model = tiny_classifier()
    backbone = models.get_backbone(model)
    n = kt.unfreeze_backbone(model, from_layer="conv_pw_13")
    trainable = [l.name for l in backbone.layers if l.trainable and l.weights]
    assert trainable == ["conv_pw_13"] and n == 1
    n = kt.unfreeze_backbone(model, top_n=6, train_batchnorm=True)
    assert [l.name for l in backbone.layers if l.trainable and l.weights] == [
        "conv_dw_13", "conv_dw_13_bn", "conv_pw_13", "conv_pw_13_bn"
    ] and n == 4
    kt.freeze_backbone(model)
    assert not backbone.trainable_weights
    with pytest.raises(ValueError, match="conv_pw_14.*conv_pw_1"):
        kt.unfreeze_backbone(model, from_layer="conv_pw_14")
    with pytest.raises(ValueError, match="top_n=-1"):
        kt.unfreeze_backbone(model, top_n=-1)


def test_head_and_feature_extractor_share_the_classifier_layers(rng):
    model = tiny_classifier()
    head, features = models.head(model), models.feature_extractor(model)
    x = images(rng)
    pooled = features.predict(x, verbose=0)
    assert models.set_feature_statistics(model, pooled)
    standardized = keras.Model(model.input, model.get_layer("feature_standardization").output).predict(x, verbose=0)
    np.testing.assert_allclose(standardized.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(standardized.std(0)[pooled.std(0) > 1e-6], 1, atol=1e-3)
    head.get_layer("logits").set_weights([np.ones((256, 3), "float32"), np.zeros(3, "float32")])
    np.testing.assert_allclose(model.predict(x, verbose=0), head.predict(features.predict(x, verbose=0), verbose=0),
                               rtol=1e-5, atol=1e-5)


def test_logits_are_float32_under_mixed_precision(rng):
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = tiny_classifier()
        assert models.get_backbone(model).layers[2].compute_dtype == "bfloat16"
        out = model(images(rng))
        assert out.dtype == tf.float32
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("kwargs, fragment", [
    ({"num_classes": 1}, "num_classes=1"),
    ({"pooling": "mean"}, "pooling='mean'"),
    ({"dropout": 1.5}, "dropout=1.5"),
    ({"kernel_l2": -1.0}, "kernel_l2=-1.0"),
])
def test_bad_classifier_arguments(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        kt.build_classifier(**{**TINY, "num_classes": 3, **kwargs})


def test_as_logits_model_strips_a_final_softmax(rng):
    x = images(rng, size=8)
    inputs = keras.Input((8, 8, 3))
    pre = keras.layers.Dense(5)(keras.layers.Flatten()(inputs))
    logits_model = keras.Model(inputs, pre)
    for probs in (keras.layers.Softmax()(pre), keras.layers.Activation("softmax")(pre)):
        softmax_model = keras.Model(inputs, probs)
        np.testing.assert_allclose(models.as_logits_model(softmax_model)(x), logits_model(x), rtol=1e-5)
    dense_softmax = keras.Model(inputs, keras.layers.Dense(5, activation="softmax")(keras.layers.Flatten()(inputs)))
    stripped = models.as_logits_model(dense_softmax)
    np.testing.assert_allclose(tf.nn.softmax(stripped(x)), dense_softmax(x), rtol=1e-5, atol=1e-6)
    assert np.abs(stripped(x).numpy().sum(axis=1) - 1).max() > 1e-3  # not probabilities any more
    assert models.as_logits_model(logits_model) is logits_model


def test_as_logits_model_rejects_a_model_without_class_scores():
    inputs = keras.Input((8, 8, 3))
    with pytest.raises(ValueError, match=r"\(batch, num_classes\)"):
        models.as_logits_model(keras.Model(inputs, keras.layers.Conv2D(2, 3)(inputs)))


def test_resolve_class_by_index_name_and_close_matches():
    names = imagenet.class_names()
    assert classes.resolve_class(281, names) == 281
    assert classes.resolve_class("281", names) == 281
    assert classes.resolve_class("tabby cat", names) == 281
    assert classes.resolve_class("Egyptian cat", names) == classes.resolve_class("egyptian_cat", names) == 285
    with pytest.raises(ValueError, match="tabby") as info:
        classes.resolve_class("tabbby", names)
    assert "'tabbby'" in str(info.value)
    with pytest.raises(ValueError, match="0 <= index < 1000"):
        classes.resolve_class(1000, names)


def test_class_names_for_a_saved_model(tmp_path):
    models.save_class_names(["cat", "dog"], tmp_path / "classes.json")
    assert classes.class_names_for_model(tmp_path / "model.keras", 2) == ["cat", "dog"]
    with pytest.raises(ValueError, match="2 classes but the model has 3"):
        classes.class_names_for_model(tmp_path / "model.keras", 3)
    assert classes.class_names_for_model(None, 1000)[281] == "tabby"


@pytest.mark.real
@requires_shared
def test_real_mobilenet_imagenet_classifier_sees_cats_and_dogs(shared_data):
    """Real MobileNet 0.25 with its ImageNet top: cat photos -> cat classes, dog photos -> dog classes."""
    model = kt.build_imagenet_classifier("mobilenet", alpha=0.25)
    def load(path):
        return tf.image.resize(tf.io.decode_jpeg(tf.io.read_file(path), channels=3), (224, 224)).numpy()
    cats = np.stack([load(os.path.join(shared_data, "cats_vs_dogs/train/cats", f"cat.{i}.jpg")) for i in range(1, 21)])
    dogs = np.stack([load(os.path.join(shared_data, "cats_vs_dogs/train/dogs", f"dog.{i}.jpg")) for i in range(1, 21)])
    cat_pred = model.predict(cats, verbose=0).argmax(1)
    dog_pred = model.predict(dogs, verbose=0).argmax(1)
    # ImageNet: 281-293 are cats (domestic and wild), 151-268 dogs.
    assert np.mean((cat_pred >= 281) & (cat_pred <= 293)) >= 0.6
    assert np.mean((dog_pred >= 151) & (dog_pred <= 268)) >= 0.6


def test_imagenet_cat_and_dog_groups_are_the_domestic_cats_and_the_dog_breeds():
    names = imagenet.class_names()
    assert [names[i] for i in imagenet.CAT_CLASSES] == ["tabby", "tiger_cat", "Persian_cat", "Siamese_cat",
                                                        "Egyptian_cat"]
    assert (names[imagenet.DOG_CLASSES[0]], names[imagenet.DOG_CLASSES[-1]]) == ("Chihuahua", "Mexican_hairless")
    assert len(imagenet.DOG_CLASSES) == 118 and names[269] == "timber_wolf" and names[150] == "sea_lion"
    assert dict(imagenet.PET_GROUPS) == {"cats": imagenet.CAT_CLASSES, "dogs": imagenet.DOG_CLASSES}


def test_group_probabilities_sum_the_softmax_of_each_group(rng):
    # A model whose logits are its bias, whatever the image: a hand-made ImageNet output.
    logits = np.zeros(1000, "float32")
    logits[[281, 285]] = [4.0, 2.0]  # tabby, Egyptian cat
    logits[[151, 200, 268]] = [3.0, 1.0, 1.0]  # Chihuahua, Tibetan terrier, Mexican hairless
    logits[292] = 5.0  # tiger: a cat, but not a domestic one
    inputs = keras.Input((8, 8, 3))
    dense = keras.layers.Dense(1000, kernel_initializer="zeros")
    model = keras.Model(inputs, dense(keras.layers.GlobalAveragePooling2D()(inputs)))
    dense.set_weights([np.zeros((3, 1000), "float32"), logits])
    p = np.exp(logits.astype("float64")) / np.exp(logits.astype("float64")).sum()
    mass = imagenet.group_probabilities(model, images(rng, n=3, size=8))
    assert list(mass) == ["cats", "dogs"]
    np.testing.assert_allclose(mass["cats"], [p[281:286].sum()] * 3, rtol=1e-5)
    np.testing.assert_allclose(mass["dogs"], [p[151:269].sum()] * 3, rtol=1e-5)
    custom = imagenet.group_probabilities(model, images(rng, n=1, size=8), groups={"tiger": [292], "top2": [292, 281]})
    np.testing.assert_allclose(custom["tiger"], [p[292]], rtol=1e-5)
    np.testing.assert_allclose(custom["top2"], [p[292] + p[281]], rtol=1e-5)
    # The same from probabilities.
    exact = imagenet.group_mass(np.stack([p, np.full(1000, 1e-3)]))
    np.testing.assert_allclose(exact["cats"], [p[281:286].sum(), 5e-3])


@pytest.mark.parametrize("groups, fragment", [
    ({}, "non-empty mapping"),
    ({"cats": []}, "non-empty sequence"),
    ({"cats": "281"}, "non-empty sequence"),
    ({"cats": [281, 1000]}, r"indices in \[0, 1000\). Received: \[1000\]"),
    ({"cats": [281, 281]}, "distinct classes"),
    ({"": [281]}, "non-empty strings"),
])
def test_bad_groups(groups, fragment):
    with pytest.raises(ValueError, match=fragment):
        imagenet.group_mass(np.full((1, 1000), 1e-3), groups)


@pytest.mark.real
@requires_shared
def test_real_cat_photos_have_more_cat_than_dog_mass_for_imagenet_mobilenet(shared_data):
    """Real MobileNet 0.25 (ImageNet top) on 12 real cat and 12 real dog photos.

    A weak judge of cats: over cat.1-100 the mean masses are 0.39 (cats) and 0.32 (dogs), the 118 dog
    classes drawing mass from the 5 cat ones; over dog.1-100, 0.01 and 0.90.
    """
    model = kt.build_imagenet_classifier("mobilenet", alpha=0.25)
    root = os.path.join(shared_data, "cats_vs_dogs", "train")
    def load(kind):
        paths = [os.path.join(root, f"{kind}s", f"{kind}.{i}.jpg") for i in range(1, 13)]
        return kt.load_images(paths, image_size=224).images
    cats = imagenet.group_probabilities(model, load("cat"))
    dogs = imagenet.group_probabilities(model, load("dog"))
    assert cats["cats"].mean() > cats["dogs"].mean() + 0.1  # 0.48 > 0.31
    assert dogs["dogs"].mean() > 0.8 > 0.05 > dogs["cats"].mean()  # 0.94, 0.01
    assert cats["cats"].mean() > 10 * dogs["cats"].mean()


def test_seeded_augmentation_draws_each_transform_independently():
    # One seed for the whole augmentation: each layer must still draw from a stream of its own, or every
    # flipped image is also rotated clockwise, zoomed in and lower in contrast (the same uniform draw).
    aug = kt.build_augmentation(seed=3)
    batch = np.zeros((64, 8, 8, 3), "float32")
    draws = {layer.name: layer.get_random_transformation(batch, training=True) for layer in aug.layers}
    flips = np.asarray(draws["random_flip"]["flips"]).ravel()
    angles = np.asarray(draws["random_rotation"]["angle"]).ravel()
    zooms = np.asarray(draws["random_zoom"]["height_zoom"]).ravel()
    contrasts = np.asarray(draws["random_contrast"]["contrast_factor"]).ravel()
    assert 0 < flips.mean() < 1
    assert not np.array_equal(flips, angles < 0)
    assert abs(np.corrcoef(angles, zooms)[0, 1]) < 0.5
    assert abs(np.corrcoef(angles, contrasts)[0, 1]) < 0.5
    # Still a function of the seed.
    again = kt.build_augmentation(seed=3)
    np.testing.assert_array_equal(again(batch + 100.0, training=True), aug.__class__.from_config(
        aug.get_config())(batch + 100.0, training=True))


def test_augmentation_outputs_float32_pixels_under_mixed_precision(rng):
    # As in build_classifier: the augmentation is the first layer of a functional model.
    def augmented(x):
        inputs = keras.Input(shape=x.shape[1:])
        return keras.Model(inputs, kt.build_augmentation(seed=5)(inputs))(x, training=True)

    x = images(rng, n=2, size=16)
    expected = keras.ops.convert_to_numpy(augmented(x))
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        out = augmented(x)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert out.dtype == tf.float32
    np.testing.assert_allclose(keras.ops.convert_to_numpy(out), expected, rtol=1e-5, atol=1e-3)


def test_feature_statistics_of_no_features_say_so():
    standardization = FeatureStandardization()
    standardization.build((None, 5))
    with pytest.raises(ValueError, match=r"at least one feature vector.*Received: 0"):
        standardization.set_statistics(np.zeros((0, 5)))


def test_num_classes_may_be_a_numpy_int():
    # e.g. num_classes=labels.max() + 1
    model = kt.build_classifier(**{**TINY, "num_classes": np.int64(3)})
    assert model.output_shape == (None, 3)
    with pytest.raises(ValueError, match="num_classes=True"):
        kt.build_classifier(**{**TINY, "num_classes": True})


def test_an_augmentation_layer_of_your_own_is_the_layer_named_augmentation():
    # Phase 2's train steps (training_wrapper.split_augmentation) find the augmentation by its fixed name; a user
    # layer kept its own name, so they ran it inside the network, drawing a new transform at every forward pass.
    from keras_transfer import training_wrapper

    flip = keras.layers.RandomFlip("horizontal", seed=1)
    model = tiny_classifier(augmentation=flip)
    augmentation, body = training_wrapper.split_augmentation(model)
    assert augmentation is model.get_layer(models.AUGMENTATION_NAME)
    assert flip in augmentation._flatten_layers() and body is not model
