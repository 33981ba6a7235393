"""Adversarial attacks: invariants, success, logits handling, metrics, CLI, real weights."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import requires_shared
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import keras
import tensorflow as tf

from keras_transfer import adversarial as adv
from keras_transfer import files, run_folder

NUM_CLASSES = 3
# Float results may exceed eps by float32 rounding of x0 + delta (< 1e-4 at 255).
FLOAT_TOLERANCE = 1e-3


def _synthetic(n: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Grey noise photos whose class is the brightest colour channel."""
    labels = rng.integers(0, NUM_CLASSES, n)
    images = rng.normal(128, 25, size=(n, size, size, 3))
    images[np.arange(n), :, :, labels] += 12
    return np.clip(np.round(images), 0, 255).astype(np.uint8), labels.astype(np.int32)


def _tiny_model(*, input_size: int | None = None) -> keras.Model:
    inputs = keras.Input((input_size, input_size, 3), name="image")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(inputs)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(NUM_CLASSES, name="logits")(x)
    return keras.Model(inputs, outputs)


def _train(model: keras.Model, size: int, seed: int = 0) -> keras.Model:
    rng = np.random.default_rng(seed)
    x, y = _synthetic(512, size, rng)
    model.compile(
        optimizer=keras.optimizers.Adam(0.02),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(x.astype("float32"), y, epochs=15, batch_size=64, verbose=0)
    return model


@pytest.fixture(scope="module")
def tiny():
    """A trained tiny classifier that takes any image size, and held-out data."""
    keras.utils.set_random_seed(0)
    model = _train(_tiny_model(), 12)
    x, y = _synthetic(64, 12, np.random.default_rng(1))
    accuracy = float(np.mean(np.argmax(adv.predict_logits(model, x), axis=1) == y))
    assert accuracy > 0.9, f"the tiny model should learn the brightest channel; accuracy {accuracy}"
    return model, x, y


def _check_invariants(result, originals, *, norm: str, eps: float | None, quantize: bool) -> None:
    a = np.asarray(result.adversarial)
    assert a.shape == originals.shape
    assert a.dtype == (np.uint8 if quantize else np.float32)
    assert np.all(np.isfinite(a.astype(np.float64)))
    assert a.min() >= 0 and a.max() <= 255
    if eps is not None:
        linf, l2 = adv.perturbation_norms(originals, a)
        size = linf if norm == "inf" else l2
        tolerance = 0.0 if quantize else FLOAT_TOLERANCE
        assert np.all(size <= eps + tolerance), (size.max(), eps)


# ---------------------------------------------------------------------------
# Invariants, for every attack, norm, epsilon, shape and criterion.


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    size=st.integers(8, 16),
    batch=st.integers(1, 4),
    norm=st.sampled_from(["inf", "2"]),
    eps_scale=st.floats(0.05, 1.0),
    attack_name=st.sampled_from(["lesson", "lesson_bounded", "fgsm", "pgd", "bim", "pgd_margin_restarts", "apgd"]),
    target=st.one_of(st.none(), st.integers(0, NUM_CLASSES - 1)),
    quantize=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_results_stay_in_the_ball_and_pixel_range(tiny, size, batch, norm, eps_scale, attack_name, target, quantize, seed):
    model = tiny[0]
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(batch, size, size, 3)).astype(np.uint8)
    # Extremes (0 and 255) are where clipping and rounding matter.
    images[:, : size // 3] = rng.choice(np.array([0, 255], np.uint8), size=(batch, size // 3, size, 3))
    # Fractional radii included; L2 radii scaled to the image's dimension.
    eps = eps_scale * (32.0 if norm == "inf" else 8.0 * np.sqrt(size * size * 3))
    eps = float(np.round(eps, 2)) or 0.05
    kwargs = dict(norm=norm, quantize=quantize)
    attack = {
        "lesson": lambda: adv.LessonAttack(steps=4, step_size=3.0, **kwargs),
        "lesson_bounded": lambda: adv.LessonAttack(steps=4, step_size=3.0, eps=eps, **kwargs),
        "fgsm": lambda: adv.FGSM(eps=eps, **kwargs),
        "pgd": lambda: adv.PGD(eps=eps, steps=4, **kwargs),
        "bim": lambda: adv.BIM(eps=eps, steps=4, step_size=eps / 2, **kwargs),
        "pgd_margin_restarts": lambda: adv.PGD(eps=eps, steps=2, loss="margin", restarts=2, **kwargs),
        "apgd": lambda: adv.APGD(eps=eps, steps=4, loss="margin", **kwargs),
    }[attack_name]()
    criterion = adv.TargetedMisclassification(target) if target is not None else adv.Misclassification()
    result = attack(model, images, criterion, batch_size=3, seed=seed)
    bound = None if attack_name == "lesson" else eps
    _check_invariants(result, images, norm=norm, eps=bound, quantize=quantize)
    # Success is judged on the very images returned (after rounding).
    logits = adv.predict_logits(model, result.adversarial)
    np.testing.assert_array_equal(result.success, adv.is_adversarial(logits, result.classes, targeted=target is not None))
    np.testing.assert_allclose(result.logits, logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("norm, eps", [("inf", 4.0), ("2", 50.0)])
def test_random_starts_are_uniform_in_the_ball_and_a_function_of_the_seed(norm, eps):
    ops = adv.norm_ops(norm)
    shape = tf.constant([2000, 8, 8, 3])
    noise = ops.random_noise(shape, tf.constant([3, 4], tf.int64), tf.constant(eps)).numpy().reshape(2000, -1)
    if norm == "inf":
        assert np.abs(noise).max() <= eps
        # Uniform on [-eps, eps]: mean 0, mean |x| eps / 2, each tenth of the range a tenth of the draws.
        assert abs(noise.mean()) < 0.01 * eps and abs(np.abs(noise).mean() - eps / 2) < 0.01 * eps
        np.testing.assert_allclose(np.histogram(noise, bins=10, range=(-eps, eps))[0] / noise.size, 0.1, atol=0.005)
    else:
        # Uniform in the volume of a 192-dimensional ball: P(|x| <= r) = (r / eps)^192.
        lengths = np.linalg.norm(noise, axis=1)
        assert lengths.max() <= eps * (1 + 1e-6)
        assert np.mean(lengths <= eps * 0.5 ** (1 / 192)) == pytest.approx(0.5, abs=0.04)
        # Directions spread evenly: the mean unit vector is near 0.
        assert np.linalg.norm((noise / lengths[:, None]).mean(axis=0)) < 0.1
    again = ops.random_noise(shape, tf.constant([3, 4], tf.int64), tf.constant(eps)).numpy().reshape(2000, -1)
    other = ops.random_noise(shape, tf.constant([3, 5], tf.int64), tf.constant(eps)).numpy().reshape(2000, -1)
    np.testing.assert_array_equal(noise, again)
    assert not np.allclose(noise, other)


@pytest.mark.parametrize("norm, eps", [("inf", 4.0), ("2", 50.0)])
def test_an_images_random_start_depends_on_its_own_seed_alone(norm, eps):
    # Drawn for all entering images at once, each from its own seed: the same seed gives the same
    # start whatever else enters with it, and no two images share a start.
    ops = adv.norm_ops(norm)
    seeds = tf.constant([[7, i] for i in range(6)], tf.int64)
    every = ops.random_points(tf.constant([6, 5, 5, 3]), seeds, tf.constant(eps)).numpy()
    two = ops.random_points(tf.constant([2, 5, 5, 3]), tf.gather(seeds, [4, 1]), tf.constant(eps)).numpy()
    np.testing.assert_array_equal(two, every[[4, 1]])
    flat = every.reshape(6, -1)
    assert all(not np.allclose(flat[i], flat[j]) for i in range(6) for j in range(i))
    assert np.abs(flat).max() <= eps if norm == "inf" else np.linalg.norm(flat, axis=1).max() <= eps * (1 + 1e-6)


def test_linf_rounding_goes_toward_the_original_at_the_ball_edge():
    x0 = np.full((1, 1, 1, 3), 100.0, np.float32)
    x = x0 + np.array([2.5, -2.5, 1.7], np.float32).reshape(1, 1, 1, 3)
    q = adv.round_into_ball(x, x0, norm="inf", eps=2.5)
    np.testing.assert_array_equal(q.ravel(), [102, 98, 102])


def test_l2_rounding_keeps_as_much_of_the_perturbation_as_fits():
    # Six pixels at +0.6: nearest rounding gives norm sqrt(6) > eps = 1.5;
    # the largest integer perturbation inside is two pixels at +1 (norm sqrt 2).
    x0 = np.full((1, 1, 2, 3), 100.0, np.float32)
    q = adv.round_into_ball(x0 + 0.6, x0, norm="2", eps=1.5)
    delta = (q - x0).ravel()
    assert sorted(delta.tolist()) == [0, 0, 0, 0, 1, 1]
    # Inside the ball already: plain nearest rounding.
    x = x0 + np.array([0.6, 0.7, 0.9, 0.55, 1.6, -2.6], np.float32).reshape(x0.shape)
    q = adv.round_into_ball(x, x0, norm="l2", eps=10.0)
    np.testing.assert_array_equal((q - x0).ravel(), [1, 1, 1, 1, 2, -3])


@pytest.mark.parametrize("eps", [4.0, 2.5, float("inf")])
def test_linf_box_step_equals_the_generic_projection_and_rounding(eps):
    # The attack loop steps L-inf images with clips to a per-image box; the
    # generic form (project x + move - x0 into the ball, clip to [0, 255],
    # round into the ball) must give the same images.
    rng = np.random.default_rng(0)
    x0 = tf.constant(rng.integers(0, 256, (4, 6, 6, 3)), tf.float32)
    norm, generic = adv._NORMS["inf"], adv._Norm
    radius = tf.constant(np.floor(eps), tf.float32)
    eps_t = tf.constant(eps, tf.float32)
    box = norm.box(x0, eps_t, radius, quantize=True)
    x = tf.clip_by_value(x0 + tf.constant(rng.uniform(-min(eps, 9), min(eps, 9), x0.shape), tf.float32), 0.0, 255.0)
    move = tf.constant(rng.choice([-1.5, 1.5], x0.shape), tf.float32)
    np.testing.assert_allclose(norm.advance(x, move, box, eps_t), generic.advance(norm, x, move, (x0,), eps_t), atol=1e-4)
    inside = norm.advance(x, move, box, eps_t)
    np.testing.assert_array_equal(norm.rounded(inside, box, eps_t, radius), norm.quantize(inside, x0, eps_t, radius))


def test_network_rate_times_the_bare_network(tiny):
    model, x, _ = tiny
    assert adv.network_rate(model, batch_size=4, steps=2, image_shape=x.shape[1:]) > 0
    assert adv.network_rate(model, batch_size=4, steps=2, backward=False, image_shape=x.shape[1:]) > 0


def test_uint8_output_still_fools_the_model_after_saving_as_png(tiny):
    model, x, y = tiny
    for norm, eps in (("inf", 6.0), ("2", 60.0)):
        result = adv.PGD(norm=norm, eps=eps, steps=10)(model, x, adv.Misclassification(y), seed=0)
        assert result.adversarial.dtype == np.uint8
        # Save and reload as PNG: the decoded images are the returned ones, and still succeed.
        reloaded = np.stack([tf.io.decode_png(tf.io.encode_png(a)).numpy() for a in result.adversarial])
        np.testing.assert_array_equal(reloaded, result.adversarial)
        again = adv.is_adversarial(adv.predict_logits(model, reloaded), y, targeted=False)
        np.testing.assert_array_equal(again, result.success)


def test_fractional_float_originals_are_rejected_with_quantize_and_accepted_without(tiny):
    model = tiny[0]
    images = np.full((1, 12, 12, 3), 100.25, np.float32)
    with pytest.raises(ValueError, match="integer-valued originals"):
        adv.PGD(eps=2.0)(model, images)
    result = adv.PGD(eps=2.0, quantize=False, steps=2)(model, images)
    assert result.adversarial.dtype == np.float32
    assert np.abs(result.adversarial - images).max() <= 2.0 + FLOAT_TOLERANCE
    # Integer-valued floats are fine with quantize.
    assert adv.PGD(eps=2.0, steps=1)(model, np.round(images)).adversarial.dtype == np.uint8


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: adv.PGD(eps=-1), "Received: eps=-1"),
        (lambda: adv.PGD(eps=4, steps=0), "Received: steps=0"),
        (lambda: adv.PGD(eps=4, norm="l1"), "Received: norm='l1'"),
        (lambda: adv.FGSM(eps=float("nan")), "Received: eps=nan"),
        (lambda: adv.LessonAttack(objective="prob"), "Received: objective='prob'"),
        (lambda: adv.make_attack("cw"), "Received: name='cw'"),
        (lambda: adv.make_attack("fgsm", steps=5), "Received: steps=5"),
        # Radii beyond the pixel range mean nothing (255 moves a pixel anywhere).
        (lambda: adv.PGD(eps=300), "<= 255 (L-inf"),
        (lambda: adv.PGD(eps=1e6), "Received: eps=1000000.0"),
        (lambda: adv.PGD(eps=4, step_size=1e9), "Received: step_size=1000000000.0"),
        (lambda: adv.LessonAttack(step_size=256.0), "Received: step_size=256.0"),
        (lambda: adv.LessonAttack(eps=256.0), "Received: eps=256.0"),
        (lambda: adv.PGD(eps=4, loss="hinge"), "Received: loss='hinge'"),
        (lambda: adv.PGD(eps=4, restarts=0), "Received: restarts=0"),
        # Without a random start every restart repeats the first run.
        (lambda: adv.BIM(eps=4, restarts=2), "Received: restarts=2, random_start=False"),
        (lambda: adv.APGD(eps=4, random_start=False, restarts=3), "Received: restarts=3, random_start=False"),
        (lambda: adv.APGD(eps=300), "<= 255 (L-inf"),
        (lambda: adv.make_attack("apgd", step_size=1.0), "Received: step_size=1.0"),
        (lambda: adv.make_attack("fgsm", restarts=2), "Received: restarts=2"),
        (lambda: adv.make_attack("lesson", loss="margin"), "Received: loss='margin'"),
    ],
)
def test_bad_arguments_say_what_is_valid(make, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make()


def test_softmax_is_keras_softmax_in_float64():
    logits = np.random.default_rng(0).normal(0, 8, size=(5, 7)).astype(np.float32)
    expected = keras.ops.convert_to_numpy(keras.ops.softmax(logits.astype(np.float64))).astype(np.float32)
    np.testing.assert_array_equal(adv.softmax(logits), expected)
    np.testing.assert_allclose(adv.softmax(logits).sum(axis=1), 1.0, rtol=1e-6)


def test_bad_inputs_are_explained(tiny):
    model = tiny[0]
    # An L2 radius beyond the diagonal of the pixel cube (255 * sqrt(12 * 12 * 3)) is rejected before any step.
    with pytest.raises(ValueError, match=r"<= 5300.*L2 on 12x12x3 images.*Received: eps=1000000.0"):
        adv.PGD(norm="2", eps=1e6)(model, np.zeros((1, 12, 12, 3), np.uint8))
    with pytest.raises(ValueError, match="Received: epsilons=300.0"):
        adv.robust_accuracy(model, np.zeros((1, 12, 12, 3), np.uint8), [0], epsilons=[0, 300])
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        adv.PGD(eps=2.0)(model, np.full((1, 12, 12, 3), 300, np.int32))
    with pytest.raises(ValueError, match="out of range"):
        adv.PGD(eps=2.0)(model, np.zeros((1, 12, 12, 3), np.uint8), adv.TargetedMisclassification(7))
    with pytest.raises(ValueError, match="one class per image"):
        adv.PGD(eps=2.0)(model, np.zeros((2, 12, 12, 3), np.uint8), adv.Misclassification([0, 1, 2]))


# ---------------------------------------------------------------------------
# Success on a trained model.


def test_attacks_succeed_on_a_trained_model(tiny):
    model, x, y = tiny
    correct = np.argmax(adv.predict_logits(model, x), axis=1) == y
    x, y = x[correct], y[correct]
    untargeted = adv.PGD(eps=8.0, steps=10)(model, x, adv.Misclassification(y))
    assert untargeted.success_rate >= 0.9
    targets = (y + 1) % NUM_CLASSES
    targeted = adv.PGD(eps=8.0, steps=20)(model, x, adv.TargetedMisclassification(targets))
    assert targeted.success_rate >= 0.9
    assert np.all(np.argmax(targeted.logits[targeted.success], axis=1) == targets[targeted.success])
    # Early stopping: images stop as soon as they succeed.
    assert targeted.gradient_steps.mean() < 20
    # L2 and one-step FGSM work too; BIM (no random start) as well as PGD.
    assert adv.PGD(norm="2", eps=150.0, steps=10)(model, x, adv.Misclassification(y)).success_rate >= 0.9
    assert adv.BIM(eps=8.0, steps=10)(model, x, adv.Misclassification(y)).success_rate >= 0.9
    assert adv.FGSM(eps=12.0)(model, x, adv.Misclassification(y)).success_rate >= 0.9
    assert adv.FGSM(eps=2.0)(model, x, adv.Misclassification(y)).success_rate < 0.2
    # The lesson's unbounded attack also gets there, with a larger perturbation than PGD needs.
    lesson = adv.LessonAttack(steps=200, step_size=2.0)(model, x, adv.TargetedMisclassification(targets))
    assert lesson.success_rate >= 0.9
    lesson_linf, _ = adv.perturbation_norms(x, lesson.adversarial)
    assert np.median(lesson_linf) > 8.0


def test_more_budget_means_more_success_and_early_stop_costs_less(tiny):
    model, x, y = tiny
    rates = [adv.PGD(eps=e, steps=10)(model, x, adv.Misclassification(y)).success_rate for e in (1.0, 4.0, 16.0)]
    assert rates[0] <= rates[1] <= rates[2]
    assert rates[2] > rates[0]
    full = adv.PGD(eps=16.0, steps=10, early_stop=False)(model, x, adv.Misclassification(y))
    early = adv.PGD(eps=16.0, steps=10)(model, x, adv.Misclassification(y))
    assert np.all(full.gradient_steps == 10)
    assert early.gradient_steps.sum() < full.gradient_steps.sum()
    # Early stopping returns the first success, a smaller perturbation on average.
    assert adv.perturbation_norms(x, early.adversarial)[1].mean() < adv.perturbation_norms(x, full.adversarial)[1].mean()


def test_same_seed_same_result_whatever_the_batch_size(tiny):
    model, x, y = tiny
    attack = adv.PGD(norm="2", eps=80.0, steps=5)
    a = attack(model, x[:10], adv.Misclassification(y[:10]), batch_size=3, seed=5)
    b = attack(model, x[:10], adv.Misclassification(y[:10]), batch_size=10, seed=5)
    assert np.mean(np.all(a.adversarial == b.adversarial, axis=(1, 2, 3))) >= 0.9
    c = attack(model, x[:10], adv.Misclassification(y[:10]), batch_size=10, seed=6)
    assert not np.array_equal(b.adversarial, c.adversarial)


def test_windows_of_originals_and_progress_updates_give_the_same_result(tiny, monkeypatch):
    # The compiled loop takes the originals a window at a time (a large set is not copied whole) and
    # returns to Python every few steps when a progress bar is shown: neither may change a result.
    model, x, y = tiny
    attacks = [adv.PGD(norm="inf", eps=6.0, steps=6, step_size=2.0), adv.PGD(norm="2", eps=80.0, steps=5)]
    whole = [attack(model, x[:20], adv.Misclassification(y[:20]), batch_size=4, seed=2) for attack in attacks]
    assert all(0 < np.mean(r.success) < 1 for r in whole)  # images finish at different steps, some out of budget
    monkeypatch.setattr(adv, "_WINDOW_BYTES", 5 * x[0].size * 4)  # windows of 5 images: 4 windows
    monkeypatch.setattr(adv, "_PROGRESS_STEPS", 2)
    for attack, expected in zip(attacks, whole):
        for verbose in (0, 1):
            got = attack(model, x[:20], adv.Misclassification(y[:20]), batch_size=4, seed=2, verbose=verbose)
            np.testing.assert_array_equal(got.adversarial, expected.adversarial)
            np.testing.assert_array_equal(got.logits, expected.logits)
            np.testing.assert_array_equal(got.success, expected.success)
            np.testing.assert_array_equal(got.gradient_steps, expected.gradient_steps)


# ---------------------------------------------------------------------------
# Logits: a model ending in softmax is attacked like its logits twin.


def _softmax_twins(model: keras.Model) -> list[keras.Model]:
    """The same classifier ending in a Softmax layer, and in a Dense with softmax activation."""
    with_layer = keras.Model(model.input, keras.layers.Softmax()(model.output))
    dense = model.get_layer("logits")
    outputs = keras.layers.Dense(NUM_CLASSES, activation="softmax", name="probabilities")(dense.input)
    with_dense = keras.Model(model.input, outputs)
    with_dense.get_layer("probabilities").set_weights(dense.get_weights())
    return [with_layer, with_dense]


def test_softmax_models_are_attacked_through_their_logits(tiny):
    model, x, y = tiny
    attack = adv.PGD(eps=8.0, steps=10)
    reference = attack(model, x, adv.Misclassification(y), seed=3)
    for twin in _softmax_twins(model):
        np.testing.assert_allclose(twin.predict(x[:4], verbose=0).sum(axis=1), 1.0, rtol=1e-5)
        result = attack(twin, x, adv.Misclassification(y), seed=3)
        assert result.success_rate == reference.success_rate
        np.testing.assert_allclose(result.logits, reference.logits, rtol=1e-4, atol=1e-4)
        assert np.mean(np.all(result.adversarial == reference.adversarial, axis=(1, 2, 3))) >= 0.95


# ---------------------------------------------------------------------------
# Metrics.


def test_perturbation_norms_and_attack_metrics_on_known_arrays():
    originals = np.zeros((2, 2, 2, 3), np.uint8)
    adversarials = originals.copy()
    adversarials[0, 0, 0, 0] = 3
    adversarials[0, 1, 1, 2] = 4
    adversarials[1] = 1
    linf, l2 = adv.perturbation_norms(originals, adversarials)
    np.testing.assert_allclose(linf, [4, 1])
    np.testing.assert_allclose(l2, [5, np.sqrt(12)])
    logits = np.log(np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]]))
    metrics = adv.attack_metrics(
        originals=originals,
        adversarials=adversarials,
        logits=logits,
        classes=[0, 1],
        targeted=True,
        clean_logits=np.log(np.array([[0.1, 0.8, 0.1], [0.1, 0.8, 0.1]])),
    )
    assert metrics.num_images == 2
    assert metrics.success_rate == 0.5  # image 0 predicts its target 0, image 1 predicts 2, not 1
    assert metrics.mean_linf == pytest.approx(2.5) and metrics.max_linf == 4
    assert metrics.mean_l2 == pytest.approx((5 + np.sqrt(12)) / 2) and metrics.max_l2 == pytest.approx(5)
    assert metrics.mean_linf_success == 4 and metrics.mean_l2_success == pytest.approx(5)
    assert metrics.target_confidence == pytest.approx((0.7 + 0.3) / 2)
    assert metrics.prediction_confidence == pytest.approx((0.7 + 0.6) / 2)
    assert metrics.already_adversarial == 0.5  # image 1 was its target (1) already
    untargeted = adv.attack_metrics(
        originals=originals, adversarials=adversarials, logits=logits, classes=[0, 1], targeted=False
    )
    assert untargeted.success_rate == 0.5 and np.isnan(untargeted.already_adversarial)


def test_transfer_metrics_score_on_the_second_model(tiny):
    model, x, y = tiny
    second = _train(_tiny_model(), 12, seed=7)
    result = adv.PGD(eps=10.0, steps=10)(model, x, adv.Misclassification(y))
    metrics, clean, after = adv.transfer_metrics(
        second, originals=x, adversarials=result.adversarial, criterion=adv.Misclassification(y),
        source_success=result.success,
    )
    expected = np.mean(np.argmax(adv.predict_logits(second, result.adversarial), axis=1) != y)
    assert metrics.success_rate == pytest.approx(expected)
    assert metrics.clean_rate == pytest.approx(np.mean(np.argmax(clean, axis=1) != y))
    assert metrics.num_images == len(x)
    # The same brightest-channel task: the adversarial images transfer far above the clean error.
    assert metrics.success_rate > metrics.clean_rate + 0.3


def test_robust_accuracy_versus_epsilon(tiny):
    from matplotlib.figure import Figure

    from keras_transfer.plotting.adversarial import plot_robust_accuracy

    model, x, y = tiny
    curve = adv.robust_accuracy(model, x, y, epsilons=[0, 2, 8, 24], attack=adv.PGD(eps=1.0, steps=8))
    clean = float(np.mean(np.argmax(adv.predict_logits(model, x), axis=1) == y))
    assert curve.clean_accuracy == pytest.approx(clean)
    assert curve.accuracy[0] == pytest.approx(clean)
    assert all(a >= b for a, b in zip(curve.accuracy, curve.accuracy[1:]))
    assert curve.accuracy[-1] < 0.2
    # A tf.data dataset of (images, labels) gives the same numbers.
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    again = adv.robust_accuracy(model, ds, epsilons=[0, 2, 8, 24], attack=adv.PGD(eps=1.0, steps=8))
    assert again.accuracy == curve.accuracy
    figure = plot_robust_accuracy([curve], labels=["PGD L-inf"])
    assert isinstance(figure, Figure) and figure.axes[0].lines


def test_example_figure_has_a_row_per_image(tiny):
    from keras_transfer.plotting.adversarial import plot_adversarial_examples

    model, x, y = tiny
    result = adv.PGD(eps=12.0, steps=5)(model, x[:3], adv.Misclassification(y[:3]))
    figure = plot_adversarial_examples(
        x[:3],
        result.adversarial,
        probabilities_before=adv.softmax(adv.predict_logits(model, x[:3])),
        probabilities_after=result.probabilities,
        class_names=["red", "green", "blue"],
        target_classes=y[:3],
        top_k=3,
    )
    assert len(figure.axes) == 3 * 5


# ---------------------------------------------------------------------------
# Stronger evaluation: the margin loss, restarts, APGD, the worst case over attacks.


def test_margin_loss_values_and_gradient_on_hand_made_logits():
    logits = np.array([[1.0, 3.0, 2.0], [5.0, 1.0, 4.0]], np.float32)
    # Untargeted: the largest other logit minus the class's (ascended; > 0 when misclassified).
    np.testing.assert_allclose(adv.attack_loss(logits, [1, 0], loss="margin"), [2.0 - 3.0, 4.0 - 5.0])
    np.testing.assert_allclose(adv.attack_loss(logits, [2, 1], loss="margin"), [3.0 - 2.0, 5.0 - 1.0])
    # Targeted: the target's logit minus the largest other.
    np.testing.assert_allclose(adv.attack_loss(logits, [2, 2], loss="margin", targeted=True), [2.0 - 3.0, 4.0 - 5.0])
    # Its gradient raises the best other class and lowers the true one, nothing else.
    z = tf.constant(logits)
    with tf.GradientTape() as tape:
        tape.watch(z)
        total = tf.reduce_sum(adv._objective(z, tf.constant([1, 0]), kind="margin", targeted=False))
    np.testing.assert_array_equal(tape.gradient(total, z).numpy(), [[0, -1, 1], [-1, 0, 1]])
    # On a saturated softmax the cross-entropy's gradient vanishes (in float32), the margin's does not.
    saturated = tf.constant([[60.0, 0.0, -5.0]])
    for kind, expected in (("crossentropy", 0.0), ("margin", np.sqrt(2.0))):
        with tf.GradientTape() as tape:
            tape.watch(saturated)
            value = tf.reduce_sum(adv._objective(saturated, tf.constant([0]), kind=kind, targeted=False))
        assert float(tf.norm(tape.gradient(value, saturated))) == pytest.approx(expected, abs=1e-6), kind


def test_margin_attacks_break_a_saturated_model_that_crossentropy_attacks_cannot(tiny):
    model, x, y = tiny
    x, y = x[:24], y[:24]
    # The same classifier with logits x 10^4: identical predictions, a softmax saturated to exactly 0 or 1.
    saturated = keras.Model(model.input, keras.layers.Rescaling(1e4, name="times_10000")(model.output))
    for attack in (adv.PGD, functools.partial(adv.APGD, steps=10)):
        ce = attack(eps=8.0)(saturated, x, adv.Misclassification(y))
        margin = attack(eps=8.0, loss="margin")(saturated, x, adv.Misclassification(y))
        assert ce.success_rate < 0.1  # no gradient: only the random start moves
        assert margin.success_rate >= 0.9  # as much as cross-entropy PGD on the unscaled model


def test_restarts_add_successes_deterministically_and_rerun_only_the_unbroken_images(tiny):
    model, x, y = tiny
    steps = 3
    one = adv.PGD(eps=8.0, steps=steps, step_size=2.0)(model, x, adv.Misclassification(y), seed=1)
    attack = adv.PGD(eps=8.0, steps=steps, step_size=2.0, restarts=4)
    many = attack(model, x, adv.Misclassification(y), seed=1)
    # The first run is the single-start attack itself: every success is kept, more may follow.
    assert np.all(many.success >= one.success)
    assert many.success.sum() > one.success.sum()
    np.testing.assert_array_equal(many.adversarial[one.success], one.adversarial[one.success])
    np.testing.assert_array_equal(many.gradient_steps[one.success], one.gradient_steps[one.success])
    np.testing.assert_array_equal(many.restart[one.success], 0)
    # An image broken at restart r paid for r full runs first; an unbroken one for all of them.
    later = many.restart > 0
    assert later.any()
    assert np.all(many.gradient_steps[later] > many.restart[later] * steps)
    assert np.all(many.gradient_steps[later] <= (many.restart[later] + 1) * steps)
    np.testing.assert_array_equal(many.gradient_steps[~many.success], 4 * steps)
    np.testing.assert_array_equal(many.restart[~many.success], -1)
    # Deterministic for a seed, and success is judged on the returned images.
    again = attack(model, x, adv.Misclassification(y), seed=1)
    np.testing.assert_array_equal(again.adversarial, many.adversarial)
    np.testing.assert_array_equal(again.restart, many.restart)
    logits = adv.predict_logits(model, many.adversarial)
    np.testing.assert_array_equal(adv.is_adversarial(logits, y, targeted=False), many.success)


def test_apgd_checkpoints_follow_the_paper():
    # p = 0, 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99 (then > 1); w = ceil(p * steps).
    assert adv.apgd_checkpoints(100) == (22, 41, 57, 70, 80, 87, 93, 99)
    assert adv.apgd_checkpoints(10) == (3, 5, 6, 7, 8, 9)
    assert adv.apgd_checkpoints(20) == (5, 9, 12, 14, 16, 18, 19)
    assert adv.apgd_checkpoints(1) == ()
    for steps in range(1, 300):
        points = adv.apgd_checkpoints(steps)
        assert list(points) == sorted(set(points)) and all(0 < w < steps for w in points)


def test_apgd_halves_on_oscillation_or_stall():
    def halves(increases, reduced=False, best=2.0, at_checkpoint=1.0):
        return bool(adv.apgd_halves(
            increases=np.array([increases]), interval=10, reduced=np.array([reduced]), best=np.array([best]),
            best_at_checkpoint=np.array([at_checkpoint]),
        )[0])

    # Condition 1: the loss rose at fewer than 75% of the 10 steps since the last checkpoint.
    assert halves(7) and not halves(8) and not halves(10)
    # Condition 2: no halving last time and no better loss since.
    assert halves(10, reduced=False, best=1.0, at_checkpoint=1.0)
    assert not halves(10, reduced=True, best=1.0, at_checkpoint=1.0)
    assert not halves(10, reduced=False, best=1.5, at_checkpoint=1.0)


@pytest.mark.parametrize("norm, eps, quantize", [("inf", 3.0, True), ("inf", 2.5, True), ("2", 60.0, True),
                                                 ("inf", 3.0, False)])
def test_apgd_stays_in_the_ball_and_is_judged_on_the_returned_images(tiny, norm, eps, quantize):
    model, x, y = tiny
    result = adv.APGD(norm=norm, eps=eps, steps=12, loss="margin", quantize=quantize)(
        model, x, adv.Misclassification(y), batch_size=16
    )
    _check_invariants(result, x, norm=norm, eps=eps, quantize=quantize)
    logits = adv.predict_logits(model, result.adversarial)
    np.testing.assert_array_equal(result.success, adv.is_adversarial(logits, y, targeted=False))
    np.testing.assert_allclose(result.logits, logits, rtol=1e-4, atol=1e-4)
    assert 0 < result.success_rate < 1  # a budget where it matters
    assert np.all((result.gradient_steps >= 1) & (result.gradient_steps <= 12))
    np.testing.assert_array_equal(result.gradient_steps[~result.success], 12)


def test_apgd_targeted_and_without_early_stop(tiny):
    model, x, y = tiny
    targets = (y + 1) % NUM_CLASSES
    early = adv.APGD(eps=8.0, steps=20)(model, x, adv.TargetedMisclassification(targets))
    full = adv.APGD(eps=8.0, steps=20, early_stop=False)(model, x, adv.TargetedMisclassification(targets))
    assert early.success_rate >= 0.9 and full.success_rate >= early.success_rate - 0.05
    assert np.all(full.gradient_steps == 20) and early.gradient_steps.mean() < 20
    assert np.all(np.argmax(early.logits[early.success], axis=1) == targets[early.success])


def test_uint8_budget_below_one_grey_level_changes_nothing_and_costs_no_step(tiny):
    model, x, y = tiny
    result = adv.APGD(eps=0.75, steps=50)(model, x, adv.Misclassification(y))
    np.testing.assert_array_equal(result.adversarial, x)
    assert np.all(result.gradient_steps == 0)


def test_robust_accuracy_takes_the_worst_case_over_attacks(tiny):
    model, x, y = tiny
    correct = np.argmax(adv.predict_logits(model, x), axis=1) == y
    y_some_wrong = np.where(np.arange(len(y)) < 3, (y + 1) % NUM_CLASSES, y)  # 3 clean errors
    attacks = [adv.FGSM(eps=1.0), adv.PGD(eps=1.0, steps=3, loss="margin", restarts=2), adv.APGD(eps=1.0, steps=6)]
    epsilons = [0, 4, 8]
    alone = adv.robust_accuracy(model, x, y_some_wrong, epsilons=epsilons, attacks=attacks, each_attack_alone=True)
    cascade = adv.robust_accuracy(model, x, y_some_wrong, epsilons=epsilons, attacks=attacks)
    for curve in (alone, cascade):
        assert len(curve.attacks) == 3 and "worst case" in curve.attack
        for e in range(len(epsilons)):
            broken = np.array(curve.broken_by[e])
            assert curve.accuracy[e] == pytest.approx(np.mean(broken == -1))
            assert np.sum(broken == -2) == np.sum(~(correct & (y == y_some_wrong)))
            assert [np.sum(broken == k) for k in range(3)] == [curve.found_by[k][e] for k in range(3)]
        assert curve.accuracy[0] == curve.clean_accuracy and curve.found_by[0][0] == 0
        # The first attack alone is measured either way; the worst case is at most it.
        assert all(w <= a + 1e-12 for w, a in zip(curve.accuracy, curve.attack_accuracy[0]))
    # Each attack alone (measured), and the worst case below every one of them.
    for k in range(3):
        assert all(w <= a + 1e-12 for w, a in zip(alone.accuracy, alone.attack_accuracy[k]))
    assert alone.attack_accuracy[0][1] > alone.accuracy[1]  # FGSM alone overstates robustness
    assert cascade.attack_accuracy[1] == (cascade.accuracy[0], None, None)
    # The cascade attacks only what is left: it spends fewer gradient steps.
    assert sum(map(sum, cascade.gradient_steps)) < sum(map(sum, alone.gradient_steps))
    # Serializes as strict JSON.
    json.loads(json.dumps(files.jsonable(cascade.to_dict()), allow_nan=False))


def test_robust_accuracy_default_attacks_and_bad_combinations(tiny):
    model, x, y = tiny
    curve = adv.robust_accuracy(model, x[:16], y[:16], epsilons=[0, 12])
    assert [a.split(" ")[0] for a in curve.attacks] == ["PGD", "APGD-CE"]
    assert "margin loss" in curve.attacks[0]
    with pytest.raises(ValueError, match="not both"):
        adv.robust_accuracy(model, x, y, epsilons=[1], attack=adv.PGD(eps=1), attacks=[adv.PGD(eps=1)])
    with pytest.raises(ValueError, match="one norm"):
        adv.robust_accuracy(model, x, y, epsilons=[1], attacks=[adv.PGD(eps=1), adv.APGD(norm="2", eps=1)])
    with pytest.raises(TypeError, match="LessonAttack"):
        adv.robust_accuracy(model, x, y, epsilons=[1], attacks=[adv.LessonAttack()])


# ---------------------------------------------------------------------------
# Command line.


def test_cli_writes_the_promised_files(tmp_path, tiny):
    from keras_transfer.experiments import adversarial as cli
    from keras_transfer.models import save_class_names

    keras.utils.set_random_seed(0)
    model = _train(_tiny_model(input_size=16), 16)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    model.save(model_dir / "model.keras")
    save_class_names(["red", "green", "blue"], model_dir / "classes.json")
    images_dir = tmp_path / "photos"
    images_dir.mkdir()
    x, y = _synthetic(4, 16, np.random.default_rng(3))
    names = []
    for i, image in enumerate(x):
        name = f"photo_{i}.png"
        tf.io.write_file(str(images_dir / name), tf.io.encode_png(image))
        names.append(name)
    (images_dir / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    code = cli.main([
        "--model", str(model_dir / "model.keras"), "--images", str(images_dir), "--target-class", "blue",
        "--attack", "pgd", "--eps", "24", "--steps", "15", "--transfer-to", str(model_dir / "model.keras"),
        "--transfer-target-class", "blue", "--output-dir", str(out), "--no-progress",
    ])
    assert code == 0
    result = strict_json(out / "result.json")
    assert (out / "figure.png").stat().st_size > 0
    assert len(result["images"]) == 4
    for i, item in enumerate(result["images"]):
        original = tf.io.decode_png(tf.io.read_file(str(out / item["original_png"]))).numpy()
        adversarial = tf.io.decode_png(tf.io.read_file(str(out / item["adversarial_png"]))).numpy()
        assert item["original_png"] == f"photo_{i}_original.png"
        np.testing.assert_array_equal(original, x[i])  # the exact model-size input
        linf = np.abs(adversarial.astype(int) - original.astype(int)).max()
        assert linf <= 24 and linf == item["linf"]
        for key in ("before", "after"):
            assert set(item[key]) == {"class", "name", "probability"}
        assert item["success"] == item["success_after_reload"]
        assert item["success"] == (item["after"]["name"] == "blue")
        assert item["transfer"]["success"] == item["success"]  # same model: transfer = success
    totals = result["totals"]
    assert totals["success_rate"] == np.mean([i["success"] for i in result["images"]])
    assert totals["success_rate"] >= 0.75
    assert totals["transfer_success_rate"] == totals["success_rate"]
    assert result["criterion"] == {"type": "targeted", "target_class": 2, "target_name": "blue"}
    assert "predicts 'blue'" in result["transfer"]["success_means"]


def test_cli_robust_accuracy_on_a_held_out_folder_split(tmp_path):
    from keras_transfer.experiments import adversarial as cli
    from keras_transfer.models import save_class_names

    keras.utils.set_random_seed(0)
    model = _train(_tiny_model(input_size=16), 16)
    model.save(tmp_path / "model.keras")
    save_class_names(["red", "green", "blue"], tmp_path / "classes.json")
    x, y = _synthetic(30, 16, np.random.default_rng(4))
    for name in ("red", "green", "blue"):
        (tmp_path / "data" / name).mkdir(parents=True)
    for i, (image, label) in enumerate(zip(x, y)):
        folder = tmp_path / "data" / ["red", "green", "blue"][label]
        tf.io.write_file(str(folder / f"{i}.png"), tf.io.encode_png(image))
    out = tmp_path / "out"
    code = cli.main([
        "--model", str(tmp_path / "model.keras"), "--robust-data", str(tmp_path / "data"), "--val-split", "0.5",
        "--epsilons", "0,4,24", "--steps", "8", "--output-dir", str(out), "--no-progress",
    ])
    assert code == 0
    curve = strict_json(out / "result.json")["robust_accuracy"]
    assert curve["epsilons"] == [0.0, 4.0, 24.0]
    assert 10 <= curve["num_images"] <= 20  # about half of the 30 images are held out
    assert curve["accuracy"][0] == curve["clean_accuracy"] >= 0.8
    assert curve["accuracy"][2] < 0.2
    assert curve["class_mapping"] == {"blue": "blue", "green": "green", "red": "red"}
    assert (out / "robust_accuracy.png").stat().st_size > 0


def test_cli_robust_accuracy_combines_attacks(tmp_path, saved_model):
    from keras_transfer.experiments import adversarial as cli

    out = tmp_path / "out"
    code = cli.main([
        "--model", f"{saved_model}/model.keras", "--robust-data", f"{saved_model}/data", "--robust-split", "all",
        "--epsilons", "0,8,64", "--robust-attacks", "pgd-margin,apgd-ce", "--restarts", "2", "--steps", "4",
        "--robust-each-alone", "--output-dir", str(out), "--no-progress",
    ])
    assert code == 0
    curve = strict_json(out / "result.json")["robust_accuracy"]
    assert len(curve["attacks"]) == 2
    assert curve["attacks"][0].startswith("PGD") and "margin loss, 2 runs" in curve["attacks"][0]
    assert curve["attacks"][1].startswith("APGD-CE") and "2 runs" in curve["attacks"][1]
    assert len(curve["found_by"]) == 2 and all(len(f) == 3 for f in curve["found_by"])
    assert len(curve["broken_by"]) == 3 and all(len(b) == curve["num_images"] == 6 for b in curve["broken_by"])
    for k in range(2):  # each attack alone, and the worst case below both
        assert all(w <= a for w, a in zip(curve["accuracy"], curve["attack_accuracy"][k]))
    assert (out / "robust_accuracy.png").stat().st_size > 0


def test_cli_help_documents_every_flag(capsys):
    from keras_transfer.experiments import adversarial as cli

    assert cli.main(["--help"]) == 0
    text = capsys.readouterr().out
    for flag in (
        "--backbone", "--alpha", "--model", "--image", "--images", "--target-class", "--attack", "--norm",
        "--eps", "--steps", "--step-size", "--transfer-to", "--transfer-alpha", "--transfer-target-class",
        "--output-dir", "--no-early-stop", "--no-quantize", "--robust-data", "--robust-split", "--val-split",
        "--split-seed", "--epsilons", "--resize", "--seed", "--batch-size", "--figure-images", "--no-progress",
        "--loss", "--restarts", "--robust-attacks", "--robust-each-alone",
    ):
        assert flag in text, flag
    assert not [a.dest for a in cli.build_parser()._actions if not a.help]
    # The command's choices are the library's, without importing TensorFlow for --help.
    assert cli.ATTACK_CHOICES == adv.ATTACKS and cli.NORM_CHOICES == adv.NORMS and cli.LOSS_CHOICES == adv.LOSSES


def test_cli_flags_become_the_configuration(tmp_path):
    from keras_transfer.experiments import adversarial as cli

    args = cli.build_parser().parse_args([
        "--image", "a.png", "--image", "b.png", "--target-class", "281", "--attack", "bim", "--norm", "2",
        "--eps", "200", "--no-early-stop", "--no-quantize", "--epsilons", "0,0.5,1", "--output-dir", str(tmp_path),
    ])
    config = cli.config_from_args(args)
    assert config.images == ("a.png", "b.png") and config.target_class == 281
    assert (config.attack, config.norm, config.eps) == ("bim", "2", 200.0)
    assert not config.early_stop and not config.quantize and config.epsilons == (0.0, 0.5, 1.0)
    assert config.backbone == "mobilenet" and config.model is None  # the default source
    assert isinstance(config.make_attack(), adv.BIM)


def strict_json(path):
    """result.json parsed strictly: a bare NaN or Infinity fails the test."""

    def reject(constant):
        raise AssertionError(f"{path} holds the non-standard JSON constant {constant}")

    return json.loads(path.read_text(), parse_constant=reject)


def run_cli(main, argv, capsys) -> tuple[int, str]:
    """The exit status of a command run in this process, and the one line it printed on stderr."""
    code = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return code, lines[0]


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    """A tiny 16 px classifier saved as model.keras with classes.json, one photo and a robust-accuracy tree."""
    from keras_transfer.models import save_class_names

    keras.utils.set_random_seed(0)
    folder = tmp_path_factory.mktemp("saved")
    _tiny_model(input_size=16).save(folder / "model.keras")
    save_class_names(["red", "green", "blue"], folder / "classes.json")
    x, y = _synthetic(6, 16, np.random.default_rng(5))
    files.write_png(folder / "a.png", x[0])
    for i, (image, label) in enumerate(zip(x, y)):
        (folder / "data" / ["red", "green", "blue"][label]).mkdir(parents=True, exist_ok=True)
        files.write_png(folder / "data" / ["red", "green", "blue"][label] / f"{i}.png", image)
    (folder / "empty").mkdir()
    (folder / "corrupt.keras").write_text("this is a text file renamed .keras")
    (folder / "model.h5").write_bytes(b"\x89HDF\r\n")
    (folder / "a_file").write_text("not a folder")
    return folder


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--eps", "1e6"], "Received: --eps 1e6"),
        (["--norm", "2", "--eps", "1e6"], "Received: --eps 1e6"),
        (["--eps", "300"], "Received: eps=300.0"),  # L-inf: at most 255
        (["--norm", "2", "--eps", "8000"], "L2 on 16x16x3 images"),  # beyond 255 * sqrt(16 * 16 * 3)
        (["--eps", "abc"], "Received: --eps abc"),
        (["--steps", "0"], "Received: --steps 0"),
        (["--attack", "fgsm", "--steps", "5"], "Received: steps=5"),
        (["--target-class", "5000"], "Received: 5000"),
        (["--target-class", "tabby"], "Unknown class 'tabby'"),
        (["--transfer-target-class", "cats"], "needs a second model"),
        (["--images", "{d}/no_such_folder"], "no_such_folder"),
        (["--images", "{d}/empty"], "No image files"),
        (["--images", "{d}/a_file"], "is a file, not a folder"),
        (["--image", "{d}/missing.png"], "missing.png"),
        (["--robust-data", "{d}/data", "--epsilons", "0,300"], "Received: epsilons=300.0"),
        (["--robust-data", "{d}/data", "--attack", "lesson"], "bounded attack"),
        (["--robust-data", "{d}/data", "--robust-attacks", "pgd,cw"], "Received: --robust-attacks pgd,cw"),
        (["--loss", "hinge"], "Received: --loss hinge"),
        (["--attack", "bim", "--restarts", "2"], "Received: restarts=2, random_start=False"),
        (["--attack", "apgd", "--step-size", "1"], "Received: step_size=1.0"),
        (["--model", "{d}/missing.keras"], "missing.keras"),
        (["--model", "{d}/model.h5"], "model.h5"),
        (["--model", "{d}/corrupt.keras"], "corrupt.keras"),
        (["--model", "{d}/model.keras", "--backbone", "mobilenet"], "not both"),
        (["--backbone", "mobilenett"], "Unknown backbone"),
        (["--output-dir", "{d}/a_file"], "a_file"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_status_2(saved_model, tmp_path, capsys, argv, message):
    from keras_transfer.experiments import adversarial as cli

    defaults = {"--model": f"{saved_model}/model.keras", "--output-dir": str(tmp_path / "out")}
    argv = [a.format(d=saved_model) for a in argv]
    if "--backbone" in argv and "--model" not in argv:
        defaults.pop("--model")
    if not {"--image", "--images", "--robust-data"} & set(argv):
        argv += ["--image", f"{saved_model}/a.png"]
    for flag, value in defaults.items():
        if flag not in argv:
            argv += [flag, value]
    code, line = run_cli(cli.main, argv + ["--no-progress"], capsys)
    assert code == 2
    assert line.startswith("python -m keras_transfer.experiments.adversarial: error: ")
    assert message in line, line
    assert not (tmp_path / "out" / "result.json").exists()


_HOLD_LOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX)
os.pwrite(fd, b"process %d (another run)" % os.getpid(), 0)
print("locked", flush=True)
time.sleep(120)
"""


def test_cli_refuses_a_folder_in_use_and_a_read_only_one(saved_model, tmp_path, capsys):
    from keras_transfer.experiments import adversarial as cli

    out = tmp_path / "out"
    out.mkdir()
    argv = ["--model", f"{saved_model}/model.keras", "--image", f"{saved_model}/a.png", "--no-progress"]
    # Another live process holds the folder's lock (as a running command does).
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(out / run_folder.LOCK_FILE)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, line = run_cli(cli.main, argv + ["--output-dir", str(out)], capsys)
    finally:
        holder.kill()
        holder.wait()
    assert code == 2 and "in use by" in line and "another run" in line
    assert not (out / "result.json").exists()
    if os.geteuid() != 0:  # root writes anywhere
        read_only = tmp_path / "read_only"
        read_only.mkdir()
        read_only.chmod(0o555)
        try:
            code, line = run_cli(cli.main, argv + ["--output-dir", str(read_only)], capsys)
        finally:
            read_only.chmod(0o755)
        assert code == 2 and "read_only" in line


def test_cli_corrupt_model_is_one_line_without_traceback_in_a_real_process(saved_model, tmp_path):
    command = [
        sys.executable, "-m", "keras_transfer.experiments.adversarial", "--model", f"{saved_model}/corrupt.keras",
        "--image", f"{saved_model}/a.png", "--output-dir", str(tmp_path / "out"),
    ]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1 and "corrupt.keras" in errors[0], proc.stderr


# ---------------------------------------------------------------------------
# Real weights: MobileNet 0.25 ImageNet, 368 Oxford-IIIT Pet dog photos.


@requires_shared
@pytest.mark.real
@pytest.mark.slow
def test_pgd_turns_real_dog_photos_into_tabby_cats(shared_data):
    import keras_transfer as kt
    from keras_transfer.data import load_image_files

    folder = os.path.join(shared_data, "oxford_pets", "images")
    dogs = sorted(os.path.join(folder, n) for n in os.listdir(folder) if n[:1].islower())
    assert len(dogs) == 368
    images, kept, skipped = load_image_files(dogs, image_size=224, resize="crop")
    assert not skipped
    model = kt.build_imagenet_classifier("mobilenet", alpha=0.25)
    tabby = 281
    start = time.perf_counter()
    result = adv.PGD(norm="inf", eps=4.0, steps=10)(model, images, adv.TargetedMisclassification(tabby), batch_size=32)
    seconds = time.perf_counter() - start
    print(f"\n368 dogs -> tabby: success {result.success_rate:.4f} in {seconds:.1f} s "
          f"({result.images_per_second:.1f} images/s, {result.gradient_steps.mean():.2f} gradient steps per image)")
    _check_invariants(result, images, norm="inf", eps=4.0, quantize=True)
    # Judged on the uint8 images themselves, as they would be saved.
    predictions = np.argmax(adv.predict_logits(model, result.adversarial), axis=1)
    assert np.mean(predictions == tabby) >= 0.95
    np.testing.assert_array_equal(predictions == tabby, result.success)
    assert np.mean(np.argmax(adv.predict_logits(model, images), axis=1) == tabby) == 0.0


@requires_shared
@pytest.mark.real
@pytest.mark.slow
def test_stronger_evaluation_finds_at_least_what_single_start_pgd_finds_on_real_photos(shared_data):
    import keras_transfer as kt
    from keras_transfer.data import load_image_files

    folder = os.path.join(shared_data, "cats_vs_dogs", "train")
    paths = [os.path.join(folder, kind, f"{kind[:-1]}.{i}.jpg") for kind in ("cats", "dogs") for i in range(1, 7)]
    images, _, skipped = load_image_files(paths, image_size=224, resize="crop")
    assert not skipped
    model = kt.build_imagenet_classifier("mobilenet", alpha=0.25)
    labels = np.argmax(adv.predict_logits(model, images), axis=1)  # untargeted: leave the model's own answer
    # Untargeted on 1000 classes, MobileNet 0.25 falls to a few hundredths of a grey level: float
    # images (uint8 ones cannot move by less than 1), at budgets where PGD-10 leaves some images.
    epsilons = [0.02, 0.04]
    start = time.perf_counter()
    single = adv.robust_accuracy(
        model, images, labels, epsilons=epsilons, attack=adv.PGD(eps=1.0, steps=10, quantize=False)
    )
    strong = adv.robust_accuracy(
        model, images, labels, epsilons=epsilons,
        attacks=[adv.PGD(eps=1.0, steps=10, loss="margin", restarts=2, quantize=False),
                 adv.APGD(eps=1.0, steps=20, quantize=False)],
    )
    print(f"\nPGD-10 CE: {single.accuracy}; margin PGD x2 + APGD-CE: {strong.accuracy} (found by {strong.found_by}); "
          f"{time.perf_counter() - start:.1f} s")
    assert single.clean_accuracy == strong.clean_accuracy == 1.0
    assert 0 < single.accuracy[0] < 1  # a budget where single-start PGD does not break everything
    for weak, worst in zip(single.accuracy, strong.accuracy):
        assert worst <= weak
    for e in range(len(epsilons)):
        assert sum(f[e] for f in strong.found_by) >= single.found_by[0][e]


def test_cli_transfer_alpha_with_a_transfer_model_file_is_refused(saved_model, tmp_path, capsys):
    """--transfer-alpha applies to a --transfer-to backbone; with a .keras file it would be silently ignored."""
    from keras_transfer.experiments import adversarial as cli

    code, line = run_cli(cli.main, [
        "--model", f"{saved_model}/model.keras", "--image", f"{saved_model}/a.png", "--steps", "1",
        "--transfer-to", f"{saved_model}/model.keras", "--transfer-alpha", "0.5",
        "--output-dir", str(tmp_path / "out"), "--no-progress",
    ], capsys)
    assert code == 2
    assert "transfer_alpha=0.5" in line and "model.keras" in line, line
    assert not (tmp_path / "out" / "result.json").exists()


def test_cli_robust_accuracy_counts_the_undecodable_files_it_skipped(saved_model, tmp_path):
    """An undecodable photo in --robust-data is skipped and counted in result.json, as for --images."""
    import shutil

    from keras_transfer.experiments import adversarial as cli

    data = tmp_path / "data"
    shutil.copytree(saved_model / "data", data)
    (data / "red" / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    code = cli.main([
        "--model", f"{saved_model}/model.keras", "--robust-data", str(data), "--robust-split", "all",
        "--epsilons", "0,8", "--steps", "1", "--output-dir", str(out), "--no-progress",
    ])
    assert code == 0
    curve = strict_json(out / "result.json")["robust_accuracy"]
    assert curve["num_images"] == 6
    assert curve["num_skipped"] == 1
    assert [os.path.basename(p) for p in curve["skipped_files"]] == ["broken.png"]
