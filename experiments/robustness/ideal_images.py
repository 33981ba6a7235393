"""Ideal class images that another network recognizes (issue 11).

For each saved cats-vs-dogs model (`--model NAME=PATH`, repeated; classes
from the `classes.json` beside it) and each seed, renders the model's ideal
image of every class with `keras_transfer.visualize_classes` at its defaults
(as `experiments/ideal_class` does), saves it as PNG and reads it back, and
scores it twice: by the model itself (p(class)) and by an independent
network, the ImageNet MobileNet 0.25 (`build_imagenet_classifier("mobilenet",
alpha=0.25)`), as the probability mass of its domestic-cat classes (281-285)
and of its dog classes (151-268) (`keras_transfer.imagenet.PET_GROUPS`, each
matched to the model's class of the same name). So "looks like a cat"
becomes a number, comparable between a standard and an adversarially robust
model. The judge also scores the real validation photos of each class, for
reference. Writes in `--output-dir`:

- `<model>/seed<k>_<class>.png`: every image (224 px, lossless);
- `ideal_images.png`: a grid, one row per model and class, one column per seed;
- `result.json`: every image's scores, and per model and class the mean and
  standard error over seeds;
- `results.md`: the table.

    python experiments/robustness/ideal_images.py \\
        --model standard=../runs_after/cats_vs_dogs/model.keras --model robust=PATH/model.keras \\
        --output-dir experiments/robustness/ideal_images
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402

JUDGE = {"backbone": "mobilenet", "alpha": 0.25}


def render(model, class_names, seeds, folder: str, *, objective: str) -> tuple[list[dict], list[np.ndarray], float]:
    """The ideal image of every class at every seed, written as PNG and read back; rows without scores."""
    from keras_transfer import files, naming
    from keras_transfer import visualization as vis

    os.makedirs(folder, exist_ok=True)
    stems = naming.unique_stems(class_names)
    rows, images, rates = [], [], []
    for seed in seeds:
        config = vis.VisualizationConfig(seed=seed, objective=objective)
        result = vis.visualize_classes(model, list(class_names), config=config, class_names=class_names,
                                       progress=False)
        rates.append(result.steps_per_second)
        for image, name, stem in zip(result.uint8_images, result.class_names, stems):
            path = os.path.join(folder, f"seed{seed}_{stem}.png")
            files.write_png(path, image)
            images.append(files.read_png(path))  # score what was saved
            rows.append({"seed": seed, "class": name, "file": path, "steps": config.steps})
        print(f"  seed {seed}: {result.steps_per_second:.1f} steps/s", flush=True)
    return rows, images, float(np.nanmean(rates))


def score(rows, images, *, model, judge, class_names, groups) -> None:
    """Adds the model's p(class) and the judge's group masses (and top ImageNet class) to every row."""
    from keras_transfer import imagenet, models

    images = np.stack(images)
    own = models.class_probabilities(model, images)
    judged = models.class_probabilities(judge, images)
    masses = imagenet.group_mass(judged, groups)
    names = imagenet.class_names()
    for i, row in enumerate(rows):
        row["own_probability"] = float(own[i, class_names.index(row["class"])])
        row["judge"] = {group: float(mass[i]) for group, mass in masses.items()}
        top = int(np.argmax(judged[i]))
        row["judge_top1"] = {"index": top, "name": names[top], "probability": float(judged[i, top])}


def aggregate(rows, class_names) -> list[dict]:
    """Per class: mean and standard error over seeds of the judge's masses and of the model's p(class)."""
    from keras_transfer import evaluation

    table = []
    for name in class_names:
        chosen = [r for r in rows if r["class"] == name]
        entry = {"class": name, "seeds": len(chosen)}
        entry["own_probability"] = evaluation.mean_and_standard_error([r["own_probability"] for r in chosen])
        for group in chosen[0]["judge"]:
            entry[f"judge_{group}"] = evaluation.mean_and_standard_error([r["judge"][group] for r in chosen])
        table.append(entry)
    return table


def reference(judge, args, *, image_size: int, resize: str, class_names, groups) -> list[dict]:
    """The judge's group masses on the real held-out photos of each class (mean and standard error)."""
    from keras_transfer import evaluation, imagenet, models

    images, labels = _common.validation_images(
        args.data_dir, image_size=image_size, resize=resize, val_split=args.val_split, seed=args.split_seed,
        class_names=class_names,
    )
    masses = imagenet.group_mass(models.class_probabilities(judge, images), groups)
    table = []
    for index, name in enumerate(class_names):
        keep = labels == index
        entry = {"class": name, "photos": int(keep.sum())}
        for group, mass in masses.items():
            entry[f"judge_{group}"] = evaluation.mean_and_standard_error(mass[keep])
        table.append(entry)
    return table


def _cell(value) -> str:
    mean, se = value
    return f"{mean:.3f}" if se is None else f"{mean:.3f} ± {se:.3f}"


def markdown(summary: dict) -> str:
    groups = list(summary["groups"])
    ranges = ", ".join(f"{g}: {indices[0]}-{indices[-1]}" for g, indices in summary["groups"].items())
    lines = [
        f"Judge: ImageNet MobileNet 0.25; its probability mass of each group of ImageNet classes ({ranges}). "
        f"Mean ± standard error over {len(summary['seeds'])} seeds (ideal images) or over the photos (real).",
        "",
        "| model | class | images | " + " | ".join(f"judge p({g})" for g in groups) + " | model's own p(class) |",
        "|---|---|---|" + "---|" * len(groups) + "---|",
    ]
    for model, table in summary["per_model"].items():
        for entry in table:
            masses = " | ".join(_cell(entry[f"judge_{g}"]) for g in groups)
            lines.append(f"| {model} | {entry['class']} | ideal × {entry['seeds']} | {masses} | "
                         f"{_cell(entry['own_probability'])} |")
    for entry in summary["reference"]:
        masses = " | ".join(_cell(entry[f"judge_{g}"]) for g in groups)
        lines.append(f"| real photos (val) | {entry['class']} | {entry['photos']} photos | {masses} | |")
    return "\n".join(lines) + "\n"


def save_grid(summary: dict, images: dict, path: str) -> None:
    from keras_transfer import files
    from keras_transfer.plotting.visualization import plot_class_images

    shown, titles = [], []
    for model, rows in summary["images"].items():
        for name in summary["class_names"]:
            for row, image in zip(rows, images[model]):
                if row["class"] == name:
                    shown.append(image)
                    judge = " ".join(f"{g} {v:.2f}" for g, v in row["judge"].items())
                    titles.append(f"{model}: {name}, seed {row['seed']}\nown p={row['own_probability']:.2f}\n"
                                  f"judge: {judge}")
    figure = plot_class_images(np.stack(shown), titles=titles, ncols=len(summary["seeds"]), image_inches=2.6,
                               suptitle="judge: ImageNet MobileNet 0.25 mass")
    files.save_figure(figure, path, dpi=80)


def match_groups(class_names) -> dict[str, tuple[int, ...]]:
    """The judge's class group of each model class, by name (the model's classes are "cats" and "dogs")."""
    from keras_transfer import imagenet

    missing = [name for name in class_names if name not in imagenet.PET_GROUPS]
    if missing:
        raise SystemExit(f"Expected model classes among {list(imagenet.PET_GROUPS)}. Received: {list(class_names)}")
    return {name: imagenet.PET_GROUPS[name] for name in class_names}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _common.add_model_flag(parser)
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0 .. N-1 per model (default: 5)")
    parser.add_argument("--data-dir", default=_common.DEFAULT_DATA,
                        help="real photos scored for reference: the held-out split (default: %(default)s)")
    parser.add_argument("--val-split", type=float, default=0.2, help="held-out fraction per class (default: 0.2)")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the held-out split (default: 0)")
    parser.add_argument("--objective", default="logit+log_prob",
                        help="what each image maximizes for its class, one of keras_transfer.visualization's "
                             "OBJECTIVES (default: %(default)s, the package's)")
    parser.add_argument("--output-dir", required=True)
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    import keras_transfer as kt
    from keras_transfer import files, models as models_lib

    start = time.perf_counter()
    paths = _common.parse_models(args.models)
    models, class_names, resize = _common.load_models(paths)
    groups = match_groups(class_names)
    judge = kt.build_imagenet_classifier(JUDGE["backbone"], alpha=JUDGE["alpha"])
    summary = {"command": " ".join(["python", *sys.argv]), "models": {n: os.path.abspath(p) for n, p in paths.items()},
               "class_names": class_names, "groups": groups, "judge": JUDGE, "seeds": list(range(args.seeds)),
               "objective": args.objective,
               "images": {}, "per_model": {}, "steps_per_second": {}}
    images = {}
    for name, model in models.items():
        print(f"{name}:", flush=True)
        rows, images[name], rate = render(model, class_names, summary["seeds"], os.path.join(args.output_dir, name),
                                       objective=args.objective)
        score(rows, images[name], model=model, judge=judge, class_names=class_names, groups=groups)
        for row in rows:
            row["file"] = os.path.relpath(row["file"], args.output_dir)
        summary["images"][name], summary["steps_per_second"][name] = rows, rate
        summary["per_model"][name] = aggregate(rows, class_names)
    image_size = models_lib.image_size_of(next(iter(models.values())))
    summary["reference"] = reference(judge, args, image_size=image_size, resize=resize, class_names=class_names,
                                     groups=groups)
    save_grid(summary, images, os.path.join(args.output_dir, "ideal_images.png"))
    summary["seconds_total"] = time.perf_counter() - start
    files.write_json(os.path.join(args.output_dir, "result.json"), summary)
    with open(os.path.join(args.output_dir, "results.md"), "w") as f:
        f.write(markdown(summary))
    print(markdown(summary))
    print(f"{summary['seconds_total']:.0f} s; results in {os.path.abspath(args.output_dir)}")


if __name__ == "__main__":
    main()
