"""The classifier of an adversarial fine-tuning run that is still going, from its last epoch backup.

    python experiments/robustness/run_checkpoint.py ../robust_runs/cvd_adv_long ../robust_runs/cvd_adv_long_checkpoint

A run folder keeps the last committed epoch of phase 2 as `state/backup_fine_tune/epoch_<N>.weights.h5`
(the weights of `AdversarialFineTuning` with its optimizer). This rebuilds the run's classifier from the
configuration in `state/run.json`, loads that backup with an optimizer built as the run built it, and
saves the plain classifier as `.keras` — with the averaged weights when the run kept an average
(`ema_momentum`), which are the weights its validation judged and the run would end on — so the
study scripts (`ensemble.py`, `ideal_images.py`, the corruptions command) can measure a long run before it
ends: `OUTPUT_DIR/model.keras` and `classes.json`. It writes nothing into the run folder.
"""

from __future__ import annotations

import glob
import json
import os
import sys

from keras_transfer import models as models_lib
from keras_transfer import training
from keras_transfer.adversarial_training import AdversarialFineTuning
from keras_transfer.layers import build_augmentation


def main(run_dir: str, output: str) -> None:
    state = json.load(open(os.path.join(run_dir, "state", "run.json")))
    config = training.TrainConfig(**state["fingerprint"]["train"])
    data = state["fingerprint"]["data"]
    backups = sorted(glob.glob(os.path.join(run_dir, "state", "backup_fine_tune", "epoch_*.weights.h5")),
                     key=lambda p: int(p.rsplit("_", 1)[1].split(".")[0]))
    if not backups:
        sys.exit(f"No epoch backup of phase 2 in {run_dir}/state/backup_fine_tune")
    model = models_lib.build_classifier(
        config.backbone, num_classes=len(data["class_names"]), image_size=data["image_size"], alpha=config.alpha,
        weights=None, pooling=config.pooling, dropout=config.dropout,
        augmentation=build_augmentation(seed=config.seed) if config.augment else False,
        standardize_features=config.standardize_features,
        kernel_l2=config.head_l2 / (2.0 * max(data["used"]["train"], 1)),
    )
    training.unfreeze_for_fine_tuning(model, config.fine_tune_at, train_batchnorm=config.train_batchnorm)
    wrapper = AdversarialFineTuning(model, attack=config.training_attack)
    # The optimizer's variables must match the backup's (the average of the weights among them).
    optimization = training.fine_tune_optimization(config, model)
    wrapper.compile(optimizer=optimization.optimizer(steps_per_epoch=1, epochs=1),
                    loss="sparse_categorical_crossentropy")
    wrapper.optimizer.build(wrapper.trainable_variables)
    wrapper.load_weights(backups[-1])
    if config.ema_momentum:
        wrapper.optimizer.finalize_variable_values(wrapper.trainable_variables)
    os.makedirs(output, exist_ok=True)
    models_lib.save_model(model, os.path.join(output, "model.keras"))
    models_lib.save_class_names(data["class_names"], os.path.join(output, "classes.json"))
    print(f"{backups[-1]} -> {output}/model.keras")


if __name__ == "__main__":
    main(*sys.argv[1:3])
