"""Adversarial fine-tuning: the training attack's bounds, the wrapper's weights, a run that gets more robust.

Runs on the tiny 32 px MobileNet and the coloured synthetic images of
`test_training` (no real weights needed).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_transfer import adversarial, training
from keras_transfer import models as models_lib
from keras_transfer.adversarial_training import AdversarialFineTuning, AdversarialTraining
from helpers import synthetic_images
from test_training import Interrupt, image_data, tiny_config


def _classifier(weights: str, *, augmentation=False) -> keras.Model:
    return models_lib.build_classifier("mobilenet", num_classes=3, image_size=32, alpha=0.25, weights=weights,
                                       augmentation=augmentation, kernel_l2=0.01)


@pytest.mark.parametrize("norm, eps", [("inf", 6.0), ("2", 300.0)])
def test_training_attack_stays_in_the_ball_and_raises_the_loss(backbone_weights, norm, eps):
    model = _classifier(backbone_weights)
    kernel = model.get_layer(models_lib.LOGITS_NAME).kernel
    kernel.assign(np.random.default_rng(0).normal(0, 0.1, kernel.shape))
    images, labels = synthetic_images(16, seed=5)
    x = tf.constant(images, tf.float32)
    attack = AdversarialTraining(eps=eps, norm=norm, steps=3)
    x_adv = attack.perturb(lambda t: model(t, training=False), x, tf.constant(labels), tf.constant([1, 2]))
    delta = (x_adv - x).numpy().reshape(16, -1)
    bound = np.abs(delta).max(axis=1) if norm == "inf" else np.linalg.norm(delta, axis=1)
    assert bound.max() <= eps * (1 + 1e-5)
    assert x_adv.numpy().min() >= 0 and x_adv.numpy().max() <= 255
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)
    before, after = ce(labels, model(x)).numpy(), ce(labels, model(x_adv)).numpy()
    assert np.mean(after) > 2 * np.mean(before) and np.mean(after > before) >= 0.75
    # Stateless random starts: the same seed gives the same batch, another step another one.
    again = attack.perturb(lambda t: model(t, training=False), x, tf.constant(labels), tf.constant([1, 2]))
    other = attack.perturb(lambda t: model(t, training=False), x, tf.constant(labels), tf.constant([1, 3]))
    np.testing.assert_array_equal(x_adv.numpy(), again.numpy())
    assert not np.array_equal(x_adv.numpy(), other.numpy())


def test_attack_settings_are_checked_with_the_bad_value():
    with pytest.raises(ValueError, match="weight"):
        AdversarialTraining(eps=2.0, weight=0.0)
    with pytest.raises(ValueError, match="eps"):
        AdversarialTraining(eps=300.0)
    assert AdversarialTraining(eps=4.0, steps=1).effective_step_size == 5.0  # 1.25 * eps for one step
    assert AdversarialTraining(eps=4.0, steps=5).effective_step_size == 2.0
    with pytest.raises(ValueError, match="fine_tune_epochs=0"):
        tiny_config(None, fine_tune_epochs=0, adversarial_eps=2.0)


def test_wrapper_trains_the_classifier_itself_with_its_regularization_once(backbone_weights):
    model = _classifier(backbone_weights, augmentation=True)
    models_lib.unfreeze_backbone(model, top_n=5)
    kernel = model.get_layer(models_lib.LOGITS_NAME).kernel
    kernel.assign(np.full(kernel.shape, 0.5, np.float32))
    wrapper = AdversarialFineTuning(model, attack=AdversarialTraining(eps=2.0))
    assert {id(v) for v in wrapper.trainable_variables} == {id(v) for v in model.trainable_variables}
    assert len(wrapper.trainable_variables) == len(model.trainable_variables)
    np.testing.assert_allclose(float(sum(wrapper.losses)), float(sum(model.losses)))
    assert float(sum(model.losses)) > 0
    images, _ = synthetic_images(4, seed=6)
    np.testing.assert_allclose(wrapper(images).numpy(), model(images, training=False).numpy())


def test_adversarial_fine_tuning_makes_the_model_more_robust_and_resumes(backbone_weights, tmp_path):
    data = image_data(96, 60)
    x_val, y_val = synthetic_images(60, seed=2)
    attack = adversarial.PGD(eps=1.0, steps=10)
    robust = {}
    for eps in (0.0, 8.0):  # standard, then adversarial fine-tuning
        config = tiny_config(backbone_weights, epochs=3, fine_tune_epochs=3, fine_tune_learning_rate=1e-3,
                             adversarial_eps=eps)
        out = tmp_path / f"eps{eps:g}"
        if eps:  # killed after phase 2's first epoch, then resumed
            with pytest.raises(KeyboardInterrupt):
                training.train(data, config, output_dir=out, callbacks=[Interrupt(4)])
        result = training.train(data, config, output_dir=out)
        robust[eps] = adversarial.robust_accuracy(result.model, x_val, y_val, epsilons=[2.0], attack=attack)
    history = result.history["fine_tune"]
    assert history["epoch"] == [3, 4, 5]
    for key in ("adversarial_accuracy", "val_adversarial_accuracy", "val_adversarial_loss", "val_accuracy"):
        assert len(history[key]) == 3, key
    metrics = json.loads((tmp_path / "eps8" / "metrics.json").read_text())
    assert metrics["resumed_at"] == {"head": 3, "fine_tune": 1}
    assert metrics["config"]["train"]["adversarial_eps"] == 8.0
    # Measured: 0.33 after adversarial fine-tuning (3 attack steps), at a clean accuracy of 0.67 (the tiny
    # random backbone pays for robustness with accuracy); about 0.07 after standard fine-tuning.
    assert robust[8.0].accuracy[0] >= robust[0.0].accuracy[0] + 0.1
    assert robust[8.0].clean_accuracy >= 0.6
    # The saved model is the plain classifier, and predicts as the trained one.
    loaded = models_lib.load_model(tmp_path / "eps8" / "model.keras")
    np.testing.assert_allclose(loaded.predict(x_val[:8], verbose=0), result.model.predict(x_val[:8], verbose=0),
                               atol=1e-5)


@pytest.mark.slow
def test_two_replicas_log_and_learn_as_one_device(backbone_weights):
    # The same batches on one device and split over two logical CPUs (MirroredStrategy): the same losses
    # in the logs (Keras divides each replica's loss by the number of replicas; the logs must not) and the
    # same weights after. No random start and no dropout, so nothing differs between the two but the split;
    # 20 images in batches of 8 leave a last batch of 4, which the epoch's mean must weight by its size.
    script = textwrap.dedent(
        f"""
        import json, sys
        import numpy as np
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        import keras
        from helpers import synthetic_images
        from keras_transfer import models as models_lib
        from keras_transfer.adversarial_training import AdversarialFineTuning, AdversarialTraining
        x, y = synthetic_images(20, seed=1)
        x_val, y_val = synthetic_images(10, seed=2)
        runs = {{}}
        for name in ("one", "two"):
            strategy = (tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]) if name == "two"
                        else tf.distribute.get_strategy())
            with strategy.scope():
                model = models_lib.build_classifier("mobilenet", num_classes=3, image_size=32, alpha=0.25,
                                                    weights={backbone_weights!r}, kernel_l2=0.01)
                models_lib.unfreeze_backbone(model, top_n=3)
                kernel = model.get_layer(models_lib.LOGITS_NAME).kernel
                kernel.assign(np.random.default_rng(0).normal(0, 0.5, kernel.shape))
                wrapper = AdversarialFineTuning(model, attack=AdversarialTraining(eps=4.0, random_start=False))
                wrapper.compile(optimizer=keras.optimizers.SGD(0.05),
                                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
            history = wrapper.fit(x, y, batch_size=8, epochs=2, shuffle=False, validation_data=(x_val, y_val),
                                  verbose=0).history
            runs[name] = (history, [w.numpy() for w in model.weights])
        (one, weights_one), (two, weights_two) = runs["one"], runs["two"]
        # Each replica draws its own random starts: the seeds of its part of a batch differ.
        seeds = strategy.run(lambda: wrapper.step_seed(7))
        seeds = [s.numpy().tolist() for s in strategy.experimental_local_results(seeds)]
        print("RESULT" + json.dumps({{
            "logs": {{k: [one[k], two[k]] for k in one}},
            "seeds": seeds,
            "weights": max(float(np.max(np.abs(a - b))) for a, b in zip(weights_one, weights_two)),
            "moved": max(float(np.max(np.abs(a - b))) for a, b in zip(weights_one, [w.numpy() for w in
                         models_lib.build_classifier("mobilenet", num_classes=3, image_size=32, alpha=0.25,
                                                     weights={backbone_weights!r}).weights])),
        }}))
        """
    )
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULT", 1)[1])
    for key in ("loss", "adversarial_loss", "accuracy", "adversarial_accuracy", "val_loss", "val_adversarial_loss",
                "val_accuracy", "val_adversarial_accuracy"):
        one, two = result["logs"][key]
        np.testing.assert_allclose(two, one, rtol=1e-4, err_msg=key)
    assert result["moved"] > 1e-3  # the step changed the weights, and both runs the same way
    assert result["weights"] < 1e-4
    assert len(result["seeds"]) == 2 and result["seeds"][0] != result["seeds"][1]
