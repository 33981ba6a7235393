"""Calibration: reliability bins, ECE, temperature scaling folded into the model; top-k accuracy."""

from __future__ import annotations

import numpy as np
import pytest

import keras_transfer as kt
from keras_transfer import calibration, evaluation


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def sampled(n: int, *, classes: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels drawn from the logits' own softmax: calibrated by construction."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2.0, (n, classes))
    p = softmax(logits)
    labels = (p.cumsum(axis=1) > rng.uniform(size=(n, 1))).argmax(axis=1)
    return logits, labels


def test_reliability_bins_by_hand():
    probabilities = np.array([[0.95, 0.05], [0.9, 0.1], [0.35, 0.65], [0.6, 0.4]])
    labels = np.array([0, 1, 1, 0])
    rel = calibration.reliability(probabilities, labels, bins=2)
    np.testing.assert_array_equal(rel.counts, [0, 4])  # every top probability is above 0.5
    assert rel.confidence[1] == pytest.approx((0.95 + 0.9 + 0.65 + 0.6) / 4)
    assert rel.accuracy[1] == pytest.approx(3 / 4)
    assert rel.ece == pytest.approx(abs(0.75 - 0.775))
    assert np.isnan(rel.confidence[0])
    again = calibration.Reliability.from_dict(rel.to_dict())
    assert again.ece == pytest.approx(rel.ece) and again.to_dict()["confidence"][0] is None


def test_ece_is_small_when_calibrated_and_large_when_over_confident():
    logits, labels = sampled(20000)
    calibrated = calibration.expected_calibration_error(softmax(logits), labels)
    over_confident = calibration.expected_calibration_error(softmax(3.0 * logits), labels)
    assert calibrated < 0.015
    assert over_confident > 0.1


def test_fitted_temperature_undoes_a_known_scaling_and_keeps_predictions():
    logits, labels = sampled(20000, seed=1)
    for factor in (0.5, 3.0):
        temperature = calibration.fit_temperature(factor * logits, labels)
        assert temperature == pytest.approx(factor, rel=0.05)
        ece_after = calibration.expected_calibration_error(softmax(factor * logits / temperature), labels)
        assert ece_after < 0.015
    # Argmax never changes with a positive temperature.
    np.testing.assert_array_equal((logits / 2.7).argmax(1), logits.argmax(1))


def test_fit_temperature_stops_at_float_precision_and_names_a_bad_tolerance(monkeypatch):
    logits, labels = sampled(200, seed=2)
    default = calibration.fit_temperature(logits, labels)
    nll, calls = calibration._nll, []

    def counted(*args):  # turns a search that never ends into a failure
        calls.append(1)
        if len(calls) > 1000:
            raise RuntimeError("fit_temperature did not stop after 1000 evaluations")
        return nll(*args)

    monkeypatch.setattr(calibration, "_nll", counted)
    # A width of log(T) below float64's resolution: stop where the interval stops shrinking.
    assert calibration.fit_temperature(logits, labels, tolerance=1e-300) == pytest.approx(default, rel=1e-5)
    for tolerance in (0, -1.0, float("nan")):
        calls.clear()
        with pytest.raises(ValueError, match=rf"Received: tolerance={tolerance!r}$"):
            calibration.fit_temperature(logits, labels, tolerance=tolerance)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="Received: 0 images"):
        calibration.fit_temperature(np.zeros((0, 3)), np.zeros(0))
    with pytest.raises(ValueError, match=r"labels in \[0, 2\]"):
        calibration.reliability(np.full((2, 3), 1 / 3), [0, 3])
    with pytest.raises(ValueError, match="Received: bins=0"):
        calibration.reliability(np.full((2, 3), 1 / 3), [0, 1], bins=0)


def test_temperature_folded_into_the_model_survives_saving(tiny_backbone_weights, tmp_path):
    model = kt.build_classifier("mobilenet", alpha=0.25, num_classes=4, image_size=32,
                                weights=tiny_backbone_weights)
    rng = np.random.default_rng(0)
    dense = model.get_layer("logits")
    dense.kernel.assign(rng.normal(0, 0.5, dense.kernel.shape).astype("float32"))
    dense.bias.assign(rng.normal(0, 0.5, dense.bias.shape).astype("float32"))
    images = rng.uniform(0, 255, (6, 32, 32, 3)).astype("float32")
    before = model.predict(images, verbose=0)
    calibration.apply_temperature(model, 2.5)
    after = model.predict(images, verbose=0)
    np.testing.assert_allclose(after, before / 2.5, rtol=1e-5, atol=1e-6)
    path = kt.models.save_model(model, tmp_path / "calibrated.keras")
    np.testing.assert_allclose(kt.load_model(path).predict(images, verbose=0), after, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="Received: temperature=0"):
        calibration.apply_temperature(model, 0)
    imagenet = kt.build_imagenet_classifier("mobilenet", alpha=0.25, weights=None)
    with pytest.raises(ValueError, match="Dense layer named 'logits'"):
        calibration.apply_temperature(imagenet, 2.0)


def test_top_k_accuracy_and_summary():
    logits = np.array([[3.0, 2.0, 1.0, 0.0], [0.0, 1.0, 2.0, 3.0], [1.0, 3.0, 2.0, 0.0]], np.float32)
    labels = np.array([1, 0, 2])
    result = evaluation.Evaluation(logits=logits, labels=labels, class_names=("a", "b", "c", "d"))
    assert result.top_k_accuracy(1) == 0.0
    assert result.top_k_accuracy(2) == pytest.approx(2 / 3)
    assert result.top_k_accuracy(4) == 1.0
    assert set(result.summary(top_k=3)) == {"loss", "accuracy", "ece", "top3_accuracy"}
    assert set(result.summary(top_k=4)) == {"loss", "accuracy", "ece"}  # top-4 of 4 classes says nothing
    scaled = result.with_temperature(2.0)
    np.testing.assert_allclose(scaled.logits, logits / 2.0)
    assert scaled.accuracy == result.accuracy and scaled.loss != result.loss


def test_a_temperature_at_the_end_of_the_range_is_not_applied():
    """Every validation image right: the loss only asks for more confidence, so the model stays as trained."""
    import types

    import keras

    from keras_transfer import training

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 60)
    logits = rng.normal(0, 1, (60, 3)).astype(np.float32)
    logits[np.arange(60), labels] += 4.0  # every image right, with some margin
    assert calibration.at_search_limit(calibration.fit_temperature(logits, labels))  # T = e^-4: 55x sharper
    noisy, noisy_labels = sampled(200, seed=2)
    assert not calibration.at_search_limit(calibration.fit_temperature(noisy, noisy_labels))

    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(3, name="logits")(inputs))
    kernel = model.get_layer("logits").kernel.numpy()
    said = []
    ctx = types.SimpleNamespace(config=types.SimpleNamespace(calibrate=True), say=said.append)
    val = evaluation.Evaluation(logits=logits, labels=labels, class_names=("a", "b", "c"))
    evaluations, info = training._calibrate(ctx, model, {"val": val})
    np.testing.assert_array_equal(model.get_layer("logits").kernel.numpy(), kernel)
    assert evaluations["val"] is val and info["temperature"] is None and info["fitted_on"] is None
    assert "100.0% of the 60 validation images right" in info["not_applied"]
    assert said and said[0].startswith("Not calibrated")
