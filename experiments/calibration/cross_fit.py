"""Out-of-sample calibration of a finished run: temperature fitted on one half of validation, ECE on the other.

`--calibrate` fits the temperature on the whole validation split and
metrics.json reports the ECE of those same images, an optimistic figure.
This script splits the validation images in two halves (alternating, so
both halves hold every class), fits T on one half and measures the ECE on
the other, both ways, and prints the mean beside the in-sample figures.

    python experiments/calibration/cross_fit.py RUN_DIR --data-dir ../shared/data/oxford_pets

The run's own loader settings (`metrics.json` "config") rebuild the same
validation split. A calibrated run's saved logits are divided by its T:
they are multiplied back to get the uncalibrated ones.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--data-dir", required=True)
    args = parser.parse_args()

    import keras_transfer as kt
    from keras_transfer import calibration, evaluation, phases

    with open(os.path.join(args.run_dir, "metrics.json")) as f:
        metrics = json.load(f)
    data_config = metrics["config"]["data"]
    data = kt.load_oxford_pets(args.data_dir, image_size=data_config["image_size"] or 224,
                               val_split=data_config["val_split"], seed=metrics["config"]["train"]["seed"],
                               resize=data_config["resize"], target=data_config["target"])
    model = kt.load_model(os.path.join(args.run_dir, "model.keras"))
    labels = evaluation.labels_of(data.val)
    logits = model.predict(phases.image_batches(data.val, batch_size=32), verbose=0)
    temperature = metrics["calibration"]["temperature"] or 1.0
    raw = logits * temperature  # the model before calibration

    def ece(z, y):
        return evaluation.Evaluation(logits=z, labels=y, class_names=data.class_names).reliability.ece

    halves = [np.arange(len(labels))[i::2] for i in (0, 1)]
    out = []
    for fit, test in (halves, halves[::-1]):
        t = calibration.fit_temperature(raw[fit], labels[fit])
        out.append({"T": t, "ece_before": ece(raw[test], labels[test]), "ece_after": ece(raw[test] / t, labels[test])})
    summary = {
        "run": os.path.abspath(args.run_dir),
        "val_images": int(len(labels)),
        "in_sample": {"T": temperature, "ece_before": ece(raw, labels), "ece_after": ece(raw / temperature, labels)},
        "two_fold": out,
        "two_fold_mean": {k: float(np.mean([o[k] for o in out])) for k in ("T", "ece_before", "ece_after")},
    }
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
