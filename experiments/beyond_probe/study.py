"""Which fine-tuning levers pay (pets, or cats vs dogs): phase 2 variants against the head and the linear probe, per split.

For each split seed this does once what the main job's phase 1 does (the
MobileNetV2 features of the training images, of their mirror images and of
the validation images; the head fitted 100 epochs on them, Adam 1e-3; the
scikit-learn linear probe on the same features), and computes the frozen
bottom of the backbone once per view (the main job's default top third
unfrozen, `--cache-bottom`). Then every variant starts from that head and
fine-tunes the top on the cached bottom with `keras_transfer.phases.run_phase`,
the loop `train` runs: early stopping on the validation loss against the
head's (patience 3, ending on the best epoch or on the head), the variant's
optimizer, schedule, weight averaging or layer-wise rates (and two variants
that run every epoch and end on the last, to see accuracy beyond the loss).
A variant's augmentation is therefore the flip only (mixup/CutMix, which mix
pixels, are not in this study). Printed and written to `--output` (JSON):
per split and variant the validation accuracy and loss, the epochs run and the
epoch ended on, the seconds, and the probe's and the head's accuracy.

    KERAS_HOME=... python experiments/beyond_probe/study.py --seeds 0 1 2 3 4 --output experiments/beyond_probe/pets.json
    KERAS_HOME=... python experiments/beyond_probe/study.py --task cats_vs_dogs --output experiments/beyond_probe/cvd.json

Needs KERAS_HOME with the MobileNetV2 weights and ../shared/data.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import keras
import numpy as np

import keras_transfer as kt
from keras_transfer import evaluation, models, phases, probe, training

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.path.join(HERE, "..", "..", "..", "shared", "data")
# task -> (loader, its data folder under ../shared/data)
TASKS = {"pets": (kt.load_oxford_pets, "oxford_pets"), "cats_vs_dogs": (kt.load_cats_vs_dogs, "cats_vs_dogs/train")}
BATCH = 32

# name -> (phases.Optimization keyword arguments, lowest_layer_rate, epochs, early-stopping patience or None).
# Label smoothing is not a variant here: it changes the loss early stopping compares with the head's, so it
# belongs to both phases (as TrainConfig.label_smoothing has it), not to phase 2 alone.
COSINE = dict(learning_rate=1e-4, schedule="cosine", warmup_epochs=1)
VARIANTS = {
    "default (1e-5 constant)": (dict(learning_rate=1e-5), 1.0, 10, 3),
    "1e-4 cosine": (COSINE, 1.0, 10, 3),
    "1e-4 cosine + EMA 0.99": (dict(COSINE, ema_momentum=0.99), 1.0, 10, 3),
    "3e-4 cosine + EMA 0.99": (dict(COSINE, learning_rate=3e-4, ema_momentum=0.99), 1.0, 10, 3),
    "1e-4 cosine + layer rates 0.1": (COSINE, 0.1, 10, 3),
    "1e-4 cosine + AdamW 0.05": (dict(COSINE, weight_decay=0.05), 1.0, 10, 3),
    "1e-4 cosine, all 10 epochs": (COSINE, 1.0, 10, None),
    "1e-4 cosine + EMA 0.99, all 10 epochs": (dict(COSINE, ema_momentum=0.99), 1.0, 10, None),
}


def prepare(task: str, seed: int) -> dict:
    """Phase 1 of the main job on one split, and the cached bottom of its phase 2."""
    start = time.perf_counter()
    load, folder = TASKS[task]
    data = load(os.path.join(SHARED, folder), image_size=224, val_split=0.2, seed=seed)
    keras.utils.set_random_seed(seed)
    n = len(data.train)
    model = kt.build_classifier("mobilenet_v2", num_classes=len(data.class_names), image_size=224,
                                kernel_l2=1.0 / (2.0 * n))  # TrainConfig's head_l2=1
    labels = {split: evaluation.labels_of(getattr(data, split)) for split in ("train", "val")}
    train_x = phases.extract_features(model, data.train)
    flip_x = phases.extract_features(model, phases.mirrored(data.train))
    val_x = phases.extract_features(model, data.val)
    val_flip_x = phases.extract_features(model, phases.mirrored(data.val))
    probe_result = probe.linear_probe(train_x, labels["train"], val_x, labels["val"])
    records = phases.fit_head_on_features(model, np.concatenate([train_x, flip_x]),
                                          np.concatenate([labels["train"]] * 2), val_features=val_x,
                                          val_labels=labels["val"], epochs=100, learning_rate=1e-3, seed=seed)
    head = records[max(records)]
    # Test-time flip averaging of the head: the mean of the logits of each validation image and its mirror image.
    logits = [np.asarray(models.head(model).predict(x, verbose=0)) for x in (val_x, val_flip_x)]
    flip_accuracy = float(np.mean(((logits[0] + logits[1]) / 2).argmax(-1) == labels["val"]))
    training.unfreeze_for_fine_tuning(model, None, train_batchnorm=False)
    bottom, _ = models.split_below_trainable(model)

    views = [phases.predict_images(bottom, ds, batch_size=BATCH) for ds in (data.train, phases.mirrored(data.train))]
    return {"model": model, "weights": model.get_weights(), "views": views, "labels": labels,
            "val_bottom": phases.predict_images(bottom, data.val, batch_size=BATCH), "probe": probe_result.val_accuracy,
            "head": {"val_accuracy": head["val_accuracy"], "val_loss": head["val_loss"],
                     "val_accuracy_flip_averaged": flip_accuracy},
            "prepare_s": time.perf_counter() - start}


def fine_tune(prepared: dict, name: str, *, seed: int) -> dict:
    """One variant of phase 2 from the head's weights, on the cached bottom."""
    kwargs, lowest, epochs, patience = VARIANTS[name]
    model = prepared["model"]
    model.set_weights(prepared["weights"])
    factors = models.layer_rate_factors(model, lowest=lowest) if lowest != 1.0 else None
    _, top = models.split_below_trainable(model)
    keras.utils.set_random_seed(seed)
    val = phases.feature_batches(prepared["val_bottom"], prepared["labels"]["val"], batch_size=BATCH)
    plan = phases.PhasePlan("fine_tune", top, phases.view_batches(prepared["views"], prepared["labels"]["train"],
                                                                  batch_size=BATCH, seed=seed),
                            val, 100, epochs, phases.Optimization(rate_factors=factors, **kwargs),
                            early_stop=None if patience is None else phases.EarlyStop(
                                patience, baseline=prepared["head"]["val_loss"]))
    start = time.perf_counter()
    records = phases.run_phase(plan, options=phases.FitOptions(verbose=0))
    seconds = time.perf_counter() - start
    loss, accuracy = top.evaluate(val, verbose=0)[:2]
    best = plan.early_stop.best(records) if plan.early_stop else max(records)
    return {"val_accuracy": float(accuracy), "val_loss": float(loss), "epochs": len(records),
            "ended_on": best, "seconds": seconds}


def summarize(results: dict) -> str:
    """A markdown table: per variant, mean validation accuracy and standard error over the splits, beside the probe."""
    seeds = sorted(results, key=int)
    probe_mean = np.mean([results[s]["probe"] for s in seeds])
    rows = {"linear probe": [results[s]["probe"] for s in seeds],
            "head (phase 1 only)": [results[s]["head"]["val_accuracy"] for s in seeds]}
    if all("val_accuracy_flip_averaged" in results[s]["head"] for s in seeds):
        rows["head, flip-averaged"] = [results[s]["head"]["val_accuracy_flip_averaged"] for s in seeds]
    names = [n for n in VARIANTS if all(n in results[s] for s in seeds)]
    rows.update({n: [results[s][n]["val_accuracy"] for s in seeds] for n in names})
    lines = [f"{len(seeds)} splits (seeds {', '.join(seeds)}); accuracy on each split's validation images",
             "", "| | mean | s.e. | minus probe (points) | per split | epochs (mean) | seconds (mean) |",
             "|---|---|---|---|---|---|---|"]
    for name, values in rows.items():
        mean, se = evaluation.mean_and_standard_error(values)
        epochs = seconds = ""
        if name in names:
            epochs = f"{np.mean([results[s][name]['epochs'] for s in seeds]):.1f}"
            seconds = f"{np.mean([results[s][name]['seconds'] for s in seeds]):.0f}"
        se_text = "—" if se is None else f"{se:.4f}"
        lines.append(f"| {name} | {mean:.4f} | {se_text} | {100 * (mean - probe_mean):+.2f} | "
                     f"{' '.join(f'{v:.3f}' for v in values)} | {epochs} | {seconds} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=list(TASKS), default="pets", help="the data set (default: pets)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS), metavar="NAME",
                        help="the phase-2 variants to run (none: phase 1, the probe and flip averaging only)")
    parser.add_argument("--output", default=None, help="JSON file of the results (rewritten after each split)")
    parser.add_argument("--summarize", nargs="+", default=None, metavar="JSON",
                        help="only print the table of these result files (merged by split)")
    args = parser.parse_args()
    if args.summarize:
        merged: dict = {}
        for path in args.summarize:
            with open(path) as f:
                for seed, row in json.load(f).items():
                    merged.setdefault(seed, {}).update({k: v for k, v in row.items() if k != "head"})
                    merged[seed].setdefault("head", {}).update(row["head"])
        print(summarize(merged))
        return
    results = {}
    for seed in args.seeds:
        prepared = prepare(args.task, seed)
        row = {"probe": prepared["probe"], "head": prepared["head"], "prepare_s": prepared["prepare_s"]}
        print(f"split {seed}: probe {row['probe']:.4f}, head {row['head']['val_accuracy']:.4f} "
              f"(loss {row['head']['val_loss']:.4f}; flip-averaged {row['head']['val_accuracy_flip_averaged']:.4f}),"
              f" prepared in {row['prepare_s']:.0f} s", flush=True)
        for name in args.variants:
            row[name] = fine_tune(prepared, name, seed=seed)
            r = row[name]
            print(f"  {name:32s} {r['val_accuracy']:.4f} (loss {r['val_loss']:.4f}), {r['epochs']} epochs, "
                  f"ends on {r['ended_on']}, {r['seconds']:.0f} s", flush=True)
        results[str(seed)] = row
        keras.backend.clear_session()
        if args.output:
            with open(args.output, "w") as f:
                json.dump(results, f, indent=1)
    print(summarize(results))


if __name__ == "__main__":
    main()
