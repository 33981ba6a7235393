"""`build_ensemble`: several classifiers as one Keras model, saved, loaded and differentiated."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_transfer as kt
from keras_transfer import adversarial, models

TINY = {"backbone": "mobilenet", "alpha": 0.25, "image_size": 32}


def member(name, rng, *, weights=None, num_classes=3, image_size=32, scale=0.3) -> keras.Model:
    """A tiny classifier with a random head, so members disagree and logits are far from uniform."""
    model = kt.build_classifier(**{**TINY, "image_size": image_size}, weights=weights, num_classes=num_classes,
                                name=name)
    kernel = rng.normal(scale=scale, size=(256, num_classes)).astype("float32")
    model.get_layer("logits").set_weights([kernel, rng.normal(size=num_classes).astype("float32")])
    return model


def with_softmax(model: keras.Model) -> keras.Model:
    inputs = keras.Input((32, 32, 3), name="image")
    return keras.Model(inputs, keras.layers.Softmax(name="probabilities")(model(inputs)), name=f"{model.name}_probs")


def pixels(rng, n=6):
    return np.round(rng.uniform(0, 255, size=(n, 32, 32, 3))).astype("float32")


def test_ensemble_softmax_is_the_mean_of_the_members_softmax(rng, tiny_backbone_weights):
    a, b, c = (member(name, rng, weights=tiny_backbone_weights) for name in ("a", "b", "c"))
    members = [a, b, with_softmax(c)]  # a member ending in softmax is used through its logits
    x = pixels(rng)
    expected = np.mean([tf.nn.softmax(a(x)), tf.nn.softmax(b(x)), tf.nn.softmax(c(x))], axis=0)
    assert np.ptp(expected.argmax(axis=1)) > 0 or np.abs(expected - 1 / 3).max() > 0.1  # not a trivial case

    ensemble = models.build_ensemble(members)
    assert [layer.name for layer in ensemble.layers] == ["image", "a", "b", "c_probs_logits", "logits"]
    assert ensemble.input_shape == (None, 32, 32, 3) and ensemble.output_shape == (None, 3)
    logits = ensemble(x).numpy()
    assert logits.dtype == np.float32
    np.testing.assert_allclose(tf.nn.softmax(logits), expected, rtol=1e-5, atol=1e-6)
    # Its logits are the log of the mean probability, exactly.
    np.testing.assert_allclose(logits, np.log(expected), rtol=1e-4, atol=1e-5)
    # The alternative: the mean of the logits.
    mean_logits = models.build_ensemble(members, combine="logits", name="by_logits")
    np.testing.assert_allclose(mean_logits(x), np.mean([a(x), b(x), c(x)], axis=0), rtol=1e-5, atol=1e-5)


def test_saturated_members_give_finite_ensemble_logits(rng, tiny_backbone_weights):
    # Logits hundreds apart: each member's softmax rounds to exact 0s and 1s in float32, so the
    # log of the mean softmax would be -inf; the ensemble's logits stay finite and exact.
    a, b = (member(name, rng, weights=tiny_backbone_weights, scale=300.0) for name in ("a", "b"))
    x = pixels(rng)
    za, zb = (np.asarray(m(x), np.float64) for m in (a, b))
    assert np.ptp(za, axis=1).min() > 200
    log_softmax = [z - z.max(1, keepdims=True) - np.log(np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True))
                   for z in (za, zb)]
    stacked = np.stack(log_softmax)
    expected = stacked.max(0) + np.log(np.exp(stacked - stacked.max(0)).sum(0)) - np.log(2)
    logits = models.build_ensemble([a, b])(x).numpy()
    assert np.all(np.isfinite(logits))
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-2)


def test_ensemble_of_one_model_predicts_its_probabilities(rng):
    a = member("a", rng)
    x = pixels(rng, n=2)
    np.testing.assert_allclose(tf.nn.softmax(models.build_ensemble([a])(x)), tf.nn.softmax(a(x)), rtol=1e-5, atol=1e-7)


def test_mismatched_members_are_rejected_with_their_sizes_and_classes(rng):
    small, large = member("small", rng), member("large", rng, image_size=40)
    with pytest.raises(ValueError, match="same input size") as info:
        models.build_ensemble([small, large])
    assert "members=['small' (32 px, 3 classes), 'large' (40 px, 3 classes)]" in str(info.value)
    binary = member("binary", rng, num_classes=2)
    with pytest.raises(ValueError, match="same number of classes") as info:
        models.build_ensemble([small, binary])
    assert "'binary' (32 px, 2 classes)" in str(info.value)


def test_bad_ensemble_arguments(rng):
    a = member("a", rng)
    with pytest.raises(ValueError, match=r"Received: members=\[\]"):
        models.build_ensemble([])
    with pytest.raises(TypeError, match="Received: members="):
        models.build_ensemble(a)
    with pytest.raises(TypeError, match=r"members\[1\] of type str"):
        models.build_ensemble([a, "b.keras"])
    with pytest.raises(ValueError, match="Received: combine='median'"):
        models.build_ensemble([a], combine="median")
    with pytest.raises(ValueError, match="share no weights"):
        models.build_ensemble([a, a])


def test_ensemble_round_trip_predicts_the_same(tmp_path, rng, tiny_backbone_weights):
    # Two members with the same name (two runs of one backbone): the second is renamed.
    first, second = member("mobilenet_classifier", rng, weights=tiny_backbone_weights), member(
        "mobilenet_classifier", rng, weights=tiny_backbone_weights
    )
    ensemble = models.build_ensemble([first, with_softmax(second)])
    second_name = ensemble.layers[2].name
    assert [layer.name for layer in ensemble.layers][:2] == ["image", "mobilenet_classifier"]
    path = models.save_model(ensemble, tmp_path / "ensemble.keras")
    loaded = kt.load_model(path)
    assert [layer.name for layer in loaded.layers] == ["image", "mobilenet_classifier", second_name, "logits"]
    assert isinstance(loaded.get_layer("logits"), models.EnsembleLogits)
    assert loaded.get_layer("logits").combine == "probabilities"
    x = pixels(rng)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), ensemble.predict(x, verbose=0))


def test_gradients_flow_to_the_input_and_attacks_take_the_ensemble(rng, tiny_backbone_weights):
    ensemble = models.build_ensemble([member(n, rng, weights=tiny_backbone_weights) for n in ("a", "b")])
    x = tf.constant(pixels(rng, n=3))
    labels = tf.constant([0, 1, 2])
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = keras.losses.sparse_categorical_crossentropy(labels, ensemble(x), from_logits=True)
    gradient = tape.gradient(loss, x).numpy()
    assert np.all(np.isfinite(gradient))
    assert np.all(np.abs(gradient).reshape(3, -1).max(axis=1) > 0)  # every image gets a gradient
    # The attacks differentiate the ensemble's own output (no softmax to strip).
    assert adversarial._logits_model(ensemble) is ensemble
    np.testing.assert_allclose(adversarial.predict_logits(ensemble, x.numpy()), ensemble(x), rtol=1e-4, atol=1e-3)
