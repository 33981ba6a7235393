"""Robust accuracy of an ensemble beside its members (issue 11: the lesson's defence).

Builds `keras_transfer.build_ensemble` of the given saved models (one Keras
model: the log of the mean of the members' softmax, attacked as a whole) and
measures, on the validation split of a class-per-folder data set (the split
`keras_transfer.load_folder` draws with `--val-split` and `--split-seed`, the
one the cats-vs-dogs runs held out), the clean accuracy and the accuracy
under an untargeted attack of each L-inf budget, for every member and for
the ensemble. Writes `result.json` and `results.md` in `--output-dir`.

    python experiments/robustness/ensemble.py \\
        --model mobilenet_v2=../runs_after/cats_vs_dogs/model.keras \\
        --model mobilenet_0.25=../robust_runs/cvd_mobilenet025/model.keras \\
        --output-dir experiments/robustness/ensemble_standard

The attacks are chosen in `make_attacks` only (`--attacks pgd`: PGD, 10 steps
of 2.5 * eps / 10, random start; `--attacks strong`: the package's default
cascade, worst case per image). Images are float32 by default, since on the
uint8 grid an L-inf budget below 1 allows no change at all.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402


def make_attacks(*, kind: str, steps: int, quantize: bool) -> list:
    """The attacks whose `eps` `robust_accuracy` varies (worst case per image): change them here, and only here.

    `"pgd"`: cross-entropy PGD, `steps` steps of 2.5 * eps / steps, one random start. `"strong"`:
    `keras_transfer.adversarial.default_attacks()` (margin PGD-10 with 2 restarts, then APGD-CE-20).
    """
    import dataclasses

    from keras_transfer.adversarial import PGD, default_attacks

    if kind == "pgd":
        return [PGD(norm="inf", eps=1.0, steps=steps, quantize=quantize)]
    return [dataclasses.replace(attack, quantize=quantize) for attack in default_attacks("inf")]


def evaluate(models: dict, images, labels, *, epsilons, attack, batch_size: int) -> list[dict]:
    """Clean and robust accuracy of every model; one row each, printed as it finishes."""
    import keras_transfer as kt

    rows = []
    for name, model in models.items():
        result = kt.robust_accuracy(
            model, images, labels, epsilons=epsilons, attacks=attack, batch_size=batch_size, seed=0
        )
        rows.append({
            "model": name,
            "clean_accuracy": result.clean_accuracy,
            "robust_accuracy": dict(zip([f"{e:g}" for e in result.epsilons], result.accuracy)),
            "attack": result.attack,
            "found_by": result.found_by,
            "gradient_steps": result.gradient_steps,
            "seconds": result.seconds,
        })
        robust = ", ".join(f"eps {k}: {v:.3f}" for k, v in rows[-1]["robust_accuracy"].items())
        print(f"{name}: clean {result.clean_accuracy:.3f}, {robust} ({result.seconds:.0f} s)", flush=True)
    return rows


def markdown(summary: dict) -> str:
    epsilons = [f"{e:g}" for e in summary["epsilons"]]
    lines = [
        f"Accuracy on {summary['num_images']} validation images of `{summary['data']}` "
        f"(val_split {summary['val_split']}, seed {summary['split_seed']}); attack: {summary['attack']}; "
        f"eps in pixel levels (0-255), {'uint8' if summary['quantize'] else 'float32'} images.",
        "",
        "| model | clean | " + " | ".join(f"eps {e}" for e in epsilons) + " | seconds |",
        "|---|---|" + "---|" * len(epsilons) + "---|",
    ]
    for row in summary["rows"]:
        robust = " | ".join(f"{row['robust_accuracy'][e]:.3f}" for e in epsilons)
        lines.append(f"| {row['model']} | {row['clean_accuracy']:.3f} | {robust} | {row['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _common.add_model_flag(parser)
    parser.add_argument("--data-dir", default=_common.DEFAULT_DATA,
                        help="class-per-folder images (default: %(default)s)")
    parser.add_argument("--val-split", type=float, default=0.2, help="held-out fraction per class (default: 0.2)")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the held-out split (default: 0)")
    parser.add_argument("--epsilons", default="0.5,1,2", help="L-inf budgets in pixel levels (default: %(default)s)")
    parser.add_argument("--combine", default="probabilities", choices=("probabilities", "logits"))
    parser.add_argument("--attacks", default="pgd", choices=("pgd", "strong"),
                        help="pgd: cross-entropy PGD of --steps, one start; strong: margin PGD-10 x2 restarts, "
                             "then APGD-CE-20, worst case per image (default: pgd, as the first tables)")
    parser.add_argument("--steps", type=int, default=10, help="steps of --attacks pgd (default: 10)")
    parser.add_argument("--quantize", action=argparse.BooleanOptionalAction, default=False,
                        help="attack on the uint8 grid (default: float32 images)")
    parser.add_argument("--max-images", type=int, default=None, help="evaluate only this many (spread) images")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--save-ensemble", default=None, metavar="PATH.keras", help="also save the ensemble")
    parser.add_argument("--output-dir", required=True)
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    import keras_transfer as kt
    from keras_transfer import files, models as models_lib

    start = time.perf_counter()
    paths = _common.parse_models(args.models)
    members, class_names, resize = _common.load_models(paths)
    ensemble = kt.build_ensemble(list(members.values()), combine=args.combine, name="ensemble")
    if args.save_ensemble:
        models_lib.save_model(ensemble, args.save_ensemble)
    images, labels = _common.validation_images(
        args.data_dir, image_size=models_lib.image_size_of(ensemble), resize=resize, val_split=args.val_split,
        seed=args.split_seed, class_names=class_names, max_images=args.max_images,
    )
    epsilons = tuple(float(e) for e in args.epsilons.split(","))
    attack = make_attacks(kind=args.attacks, steps=args.steps, quantize=args.quantize)
    # One model is its own table (an ensemble of one would only repeat it).
    models = {**members, f"ensemble ({args.combine})": ensemble} if len(members) > 1 else members
    rows = evaluate(models, images, labels,
                    epsilons=epsilons, attack=attack, batch_size=args.batch_size)
    summary = {
        "command": " ".join(["python", *sys.argv]),
        "models": {name: os.path.abspath(path) for name, path in paths.items()},
        "class_names": class_names, "combine": args.combine, "data": args.data_dir, "val_split": args.val_split,
        "split_seed": args.split_seed, "resize": resize, "num_images": int(len(images)),
        "class_counts": np.bincount(labels, minlength=len(class_names)).tolist(), "epsilons": epsilons,
        "attack": rows[0]["attack"], "quantize": args.quantize, "rows": rows,
        "seconds_total": time.perf_counter() - start,
    }
    os.makedirs(args.output_dir, exist_ok=True)
    files.write_json(os.path.join(args.output_dir, "result.json"), summary)
    with open(os.path.join(args.output_dir, "results.md"), "w") as f:
        f.write(markdown(summary))
    print(markdown(summary))
    print(f"{summary['seconds_total']:.0f} s; results in {os.path.abspath(args.output_dir)}")


if __name__ == "__main__":
    main()
