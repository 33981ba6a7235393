"""Mixup and CutMix: what a mixed batch is made of, its randomness, and the wrapper that trains on it.

The mixing itself runs on small random images; the wrapper on the tiny
32 px MobileNet and the coloured synthetic images of `helpers` (no real
weights needed).
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_transfer import adversarial_training, mixing, settings
from keras_transfer import models as models_lib
from keras_transfer.mixing import MixedSampleFineTuning, MixedSamples
from helpers import synthetic_images

MIXUP = MixedSamples(mixup_alpha=1.0)
CUTMIX = MixedSamples(cutmix_alpha=1.0)


def _batch(n: int, size: int = 12, seed: int = 0):
    """Random float32 images (all pixels distinct) and unique labels, so `y_other` is the permutation."""
    x = np.random.default_rng(seed).uniform(0, 255, (n, size, size, 3)).astype(np.float32)
    return x, np.arange(n, dtype=np.int32)


def _mix(config: MixedSamples, x, y, seed):
    mixed, y_other, lam = config.mix(tf.constant(x), tf.constant(y), tf.constant(seed, tf.int32))
    return mixed.numpy(), y_other.numpy(), float(lam.numpy())


def _pasted(mixed, x, partners):
    """Each image's pixels that are not its own (all channels changed), for images with another partner."""
    return [np.any(mixed[i] != x[i], axis=-1) for i in range(len(x)) if partners[i] != i]


def _is_cutmix(mixed, x, partners) -> bool:
    """Whether every pixel is the image's own or its partner's (a mixup blend is neither)."""
    return all(np.all((mixed[i] == x[i]) | (mixed[i] == x[j])) for i, j in enumerate(partners) if j != i)


def test_mixup_blends_each_image_with_its_partner_exactly():
    x, y = _batch(6)
    mixed, y_other, lam = _mix(MIXUP, x, y, [1, 2])
    assert 0 < lam < 1
    assert sorted(y_other) == list(y) and not np.array_equal(y_other, y)  # a permutation of the batch
    lam32 = np.float32(lam)
    np.testing.assert_array_equal(mixed, lam32 * x + (np.float32(1) - lam32) * x[y_other])
    # Stateless: the same seed gives the same batch, another step another one.
    again, y_again, lam_again = _mix(MIXUP, x, y, [1, 2])
    np.testing.assert_array_equal(mixed, again)
    assert lam_again == lam and np.array_equal(y_again, y_other)
    other, y_next, lam_next = _mix(MIXUP, x, y, [1, 3])
    assert lam_next != lam and not np.array_equal(other, mixed)


def test_lam_is_drawn_from_the_beta_distribution():
    x, y = _batch(2, size=4)
    step = tf.function(lambda seed: MIXUP.mix(x, y, seed)[2])
    lams = np.array([float(step(tf.constant([7, s]))) for s in range(300)])
    assert np.all((lams > 0) & (lams < 1))
    assert abs(lams.mean() - 0.5) < 0.05  # Beta(1, 1) is uniform: sd of the mean 0.017
    # Many draws at once: the moments of Beta(a, a) (mean 1/2, variance 1 / (4 (2a + 1))), and the
    # uniform's distribution function for a = 1 (Kolmogorov-Smirnov distance).
    for alpha in (0.2, 1.0, 4.0):
        draws = mixing.beta_sample(alpha, tf.constant([3, 4]), shape=[20000]).numpy()
        assert not np.isnan(draws).any() and draws.min() >= 0 and draws.max() <= 1
        assert abs(draws.mean() - 0.5) < 0.01, alpha
        assert abs(draws.var() - 1 / (4 * (2 * alpha + 1))) < 0.01, alpha
    uniform = np.sort(mixing.beta_sample(1.0, tf.constant([5, 6]), shape=[5000]).numpy())
    assert np.max(np.abs(uniform - np.arange(1, 5001) / 5000)) < 0.025
    # A tiny alpha is nearly a coin flip between 0 and 1; its draws underflow but are not NaN.
    coins = mixing.beta_sample(1e-3, tf.constant([1, 1]), shape=[2000]).numpy()
    assert not np.isnan(coins).any() and 0.4 < np.mean(coins > 0.5) < 0.6


def test_cutmix_pastes_one_rectangle_of_the_partner_and_lam_is_its_area():
    x, y = _batch(6, size=16)
    clipped = interior = 0
    lams = []
    for step in range(20):
        mixed, partners, lam = _mix(CUTMIX, x, y, [5, step])
        lams.append(lam)
        masks = _pasted(mixed, x, partners)
        box = masks[0]
        assert all(np.array_equal(mask, box) for mask in masks)  # one box for the whole batch
        rows, cols = np.flatnonzero(box.any(axis=1)), np.flatnonzero(box.any(axis=0))
        if box.any():  # one axis-aligned rectangle: contiguous rows times contiguous columns
            assert np.array_equal(rows, np.arange(rows[0], rows[-1] + 1))
            assert np.array_equal(cols, np.arange(cols[0], cols[-1] + 1))
            assert np.array_equal(box, np.outer(box.any(axis=1), box.any(axis=0)))
            touches = rows[0] == 0 or cols[0] == 0 or rows[-1] == 15 or cols[-1] == 15
            clipped, interior = clipped + touches, interior + (not touches)
        expected = np.where(box[None, :, :, None], x[partners], x)
        np.testing.assert_array_equal(mixed, expected)  # pixels only from the image or its partner
        assert lam == pytest.approx(1 - box.sum() / box.size, abs=1e-6)
    assert clipped and interior and len(set(lams)) > 10


@pytest.mark.parametrize("switch_prob, cutmix_batches", [(0.0, 0), (1.0, 20), (0.5, None)])
def test_switch_prob_chooses_cutmix_or_mixup_per_batch(switch_prob, cutmix_batches):
    config = MixedSamples(mixup_alpha=0.4, cutmix_alpha=1.0, switch_prob=switch_prob)
    x, y = _batch(6, size=8)
    kinds = []
    for step in range(20):
        mixed, partners, _ = _mix(config, x, y, [9, step])
        kinds.append(_is_cutmix(mixed, x, partners))
    if cutmix_batches is None:
        assert 3 <= sum(kinds) <= 17  # both, at about half the batches each
    else:
        assert sum(kinds) == cutmix_batches


@pytest.mark.parametrize("config", [MIXUP, CUTMIX, MixedSamples(mixup_alpha=0.2, cutmix_alpha=1.0)],
                         ids=["mixup", "cutmix", "both"])
def test_short_batches_of_unknown_size_mix_in_a_compiled_function(config):
    step = tf.function(config.mix, input_signature=[tf.TensorSpec([None, 8, 8, 3], tf.float32),
                                                    tf.TensorSpec([None], tf.int32), tf.TensorSpec([2], tf.int32)])
    for n in (1, 3):
        x, y = _batch(n, size=8)
        mixed, y_other, lam = step(x, y, tf.constant([2, 7]))
        assert mixed.shape == x.shape and y_other.shape == (n,) and 0 <= float(lam) <= 1
        # As in eager mode (up to the rounding of the graph's fused blend).
        np.testing.assert_allclose(mixed.numpy(), _mix(config, x, y, [2, 7])[0], rtol=1e-6)
        if n == 1:  # its own partner: nothing changes
            np.testing.assert_array_equal(y_other.numpy(), y)
            np.testing.assert_allclose(mixed.numpy(), x, rtol=1e-6)


def test_settings_are_checked_with_the_bad_value_and_declared_once():
    with pytest.raises(ValueError, match=r"Received: mixup_alpha=0.0, cutmix_alpha=0.0"):
        MixedSamples()
    with pytest.raises(ValueError, match=r"Received: mixup_alpha=-0.2"):
        MixedSamples(mixup_alpha=-0.2)
    with pytest.raises(ValueError, match=r"Received: switch_prob=1.5"):
        MixedSamples(mixup_alpha=0.2, cutmix_alpha=1.0, switch_prob=1.5)
    with pytest.raises(ValueError, match=r"Received: cutmix_alpha=nan"):
        MixedSamples(cutmix_alpha=float("nan"))
    assert MixedSamples(mixup_alpha=0.2).describe() == "mixup alpha=0.2"
    assert MixedSamples(cutmix_alpha=1).describe() == "CutMix alpha=1"
    assert MixedSamples(mixup_alpha=0.2, cutmix_alpha=1, switch_prob=0.25).describe() == (
        "mixup alpha=0.2 or CutMix alpha=1 (CutMix on 25% of batches)")

    @dataclasses.dataclass(kw_only=True)
    class Config:
        mixup_alpha: float = mixing.config_setting("mixup_alpha", group="training")
        adversarial_norm: str = adversarial_training.config_setting("norm")

        def __post_init__(self):
            settings.validate(self)

    (mixup_field, mixup), (norm_field, norm) = settings.specs(Config)
    assert mixup_field.default == 0.0 and mixup.group == "training"
    assert mixup.kind == settings.spec_of(dataclasses.fields(MixedSamples)[0]).kind
    assert "Zhang et al. 2018" in mixup.help
    assert norm_field.default == "inf" and norm.group is None
    assert settings.flag_name(norm_field, norm) == "--adversarial-norm"
    with pytest.raises(ValueError, match=r"Received: mixup_alpha=-1"):
        Config(mixup_alpha=-1)
    with pytest.raises(ValueError, match=r"Received: name='alpha'"):
        settings.declared(MixedSamples, "alpha")


def _classifier(weights: str, *, augmentation=False) -> keras.Model:
    return models_lib.build_classifier("mobilenet", num_classes=3, image_size=32, alpha=0.25, weights=weights,
                                       augmentation=augmentation, kernel_l2=0.01)


def _compile(model: keras.Model, learning_rate: float) -> None:
    model.compile(optimizer=keras.optimizers.SGD(learning_rate, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])


def test_wrapper_is_the_classifier_and_its_step_descends_the_mixed_loss(backbone_weights):
    model = _classifier(backbone_weights, augmentation=True)
    models_lib.unfreeze_backbone(model, top_n=5)
    kernel = model.get_layer(models_lib.LOGITS_NAME).kernel
    kernel.assign(np.random.default_rng(0).normal(0, 0.5, kernel.shape))
    config = MixedSamples(mixup_alpha=0.4, cutmix_alpha=1.0, seed=3)
    wrapper = MixedSampleFineTuning(model, mixing=config)
    assert {id(v) for v in wrapper.trainable_variables} == {id(v) for v in model.trainable_variables}
    assert len(wrapper.trainable_variables) == len(model.trainable_variables)
    np.testing.assert_allclose(float(sum(wrapper.losses)), float(sum(model.losses)))
    regularization = float(sum(model.losses))
    assert regularization > 0
    images, labels = synthetic_images(12, seed=6)
    np.testing.assert_allclose(wrapper(images).numpy(), model(images, training=False).numpy())
    # Evaluation is the classifier's own (no mixing).
    _compile(model, 0.0)
    expected = model.evaluate(images, labels, batch_size=5, verbose=0, return_dict=True)
    _compile(wrapper, 0.0)
    assert wrapper.evaluate(images, labels, batch_size=5, verbose=0, return_dict=True) == pytest.approx(expected)

    # One step at learning rate 0: its loss is lam * CE(y) + (1 - lam) * CE(y_other) + the regularization
    # once, on the batch mixed from the wrapper's seed and step 0 (augmentation off, so the mixing is
    # all there is to replay).
    model = _classifier(backbone_weights)
    model.get_layer(models_lib.LOGITS_NAME).kernel.assign(kernel)
    wrapper = MixedSampleFineTuning(model, mixing=config)
    _compile(wrapper, 0.0)
    wrapper.optimizer.build(wrapper.trainable_variables)
    seed = wrapper.step_seed(config.seed + mixing._MIXING_STREAM)
    mixed, y_other, lam = config.mix(tf.cast(images, tf.float32), labels, seed)
    logits = model(mixed).numpy()
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    lam = float(lam)
    expected_loss = lam * float(ce(labels, logits)) + (1 - lam) * float(ce(y_other, logits)) + regularization
    logs = wrapper.train_step((tf.constant(images), tf.constant(labels)))
    assert float(logs["loss"]) == pytest.approx(expected_loss, rel=1e-5)
    dominant = labels if lam >= 0.5 else y_other.numpy()
    assert float(logs["accuracy"]) == pytest.approx(np.mean(logits.argmax(axis=1) == dominant))
    assert int(wrapper.optimizer.iterations) == 1


def test_fit_learns_and_a_resumed_run_mixes_as_an_uninterrupted_one(backbone_weights, tmp_path):
    x, y = synthetic_images(48, seed=1)
    x_val, y_val = synthetic_images(30, seed=2)
    config = MixedSamples(mixup_alpha=0.4, cutmix_alpha=1.0, seed=1)

    def wrapper() -> MixedSampleFineTuning:
        keras.utils.set_random_seed(0)
        model = _classifier(backbone_weights)
        models_lib.unfreeze_backbone(model, top_n=3)
        fitted = MixedSampleFineTuning(model, mixing=config)
        _compile(fitted, 0.01)
        return fitted

    def fit(fitted, initial_epoch: int, epochs: int, callbacks=()):
        return fitted.fit(x, y, batch_size=20, initial_epoch=initial_epoch, epochs=epochs, shuffle=False,
                          validation_data=(x_val, y_val), callbacks=list(callbacks), verbose=0).history

    whole = wrapper()
    start = whole.evaluate(x_val, y_val, verbose=0, return_dict=True)
    backup = str(tmp_path / "epoch_2.weights.h5")  # the wrapper's weights: the classifier's and the optimizer's
    history = fit(whole, 0, 4, [keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: epoch == 1 and whole.save_weights(backup))])
    # Measured: validation loss 1.10 (the zero head) -> 0.30, accuracy 0.87; training accuracy against
    # the dominant labels 0.52 -> 0.81 (the training loss of mixed batches is noisy: it depends on lam).
    assert history["val_loss"][-1] < 0.5 * start["loss"]
    assert history["val_accuracy"][-1] >= 0.8
    assert history["accuracy"][-1] > history["accuracy"][0] + 0.15
    # Killed after 2 epochs: the backup after epoch 2 (its optimizer step included) is restored, and the
    # last 2 epochs mix their batches as the uninterrupted run did, to the same weights.
    resumed = wrapper()
    resumed.optimizer.build(resumed.trainable_variables)
    resumed.load_weights(backup)
    assert int(resumed.optimizer.iterations) == 6
    fit(resumed, 2, 4)
    for a, b in zip(whole.classifier.weights, resumed.classifier.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)
