"""Adversarial photos: change a classifier's answer with an invisible perturbation.

Attacks every input image with `keras_transfer.adversarial` (targeted with
`--target-class`, else untargeted: change the model's prediction) and writes,
in `--output-dir`:

- `<name>_original.png`: the exact model-size input the attack started from
  (lossless);
- `<name>_adversarial.png`: the adversarial image, lossless uint8; success is
  re-measured on the PNG read back from disk;
- `figure.png`: original | adversarial | perturbation magnified | top-5 before
  and after, for the first `--figure-images` images;
- `result.json`: per image the class and probability before and after, the
  L-inf and L2 norms of the perturbation (pixel units of [0, 255]), success
  (in memory and after reloading the PNG), and with `--transfer-to` the
  second model's view; totals: success rate, norms, target confidence,
  transfer success rate; the configuration and timing;
- with `--robust-data DIR`: `robust_accuracy.png` and a `robust_accuracy`
  entry in `result.json`: the model's accuracy on held-out images of a
  class-per-folder tree under an untargeted attack, for every `--epsilons`.

Transfer. `--transfer-to` scores the same adversarial PNGs on a second model
(a backbone's ImageNet classifier or a `.keras` file). Its label space may
differ, so transfer success is defined explicitly and recorded in
`result.json`: with `--transfer-target-class C`, the second model predicts C
(e.g. `cats` for a cats-vs-dogs model); else, if the attack is targeted and
the second model has a class of the same name, it predicts that class; else
its prediction on the adversarial image differs from its prediction on the
original.

Examples::

    python -m keras_transfer.experiments.adversarial --backbone mobilenet --alpha 0.25 \\
        --images ../shared/data/oxford_pets/images --target-class tabby --attack pgd --eps 4 \\
        --output-dir runs/adversarial
    python -m keras_transfer.experiments.adversarial --image dog.jpg --target-class 281 \\
        --transfer-to runs/cats_vs_dogs/model.keras --transfer-target-class cats --output-dir runs/adv1
    python -m keras_transfer.experiments.adversarial --model runs/cats_vs_dogs/model.keras \\
        --robust-data ../shared/data/cats_vs_dogs/train --epsilons 0,0.5,1,2,4 --output-dir runs/robust
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
import time
from collections.abc import Sequence

import numpy as np

from keras_transfer.experiments._classifier_source import DEFAULT_BACKBONE, add_arguments, load_classifier

DEFAULT_EPS = 4.0
ATTACK_CHOICES = ("lesson", "fgsm", "pgd", "bim")
RESIZE_CHOICES = ("stretch", "crop", "pad")
ROBUST_SPLITS = ("val", "train", "all")
DEFAULT_EPSILONS = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0)


@dataclasses.dataclass(frozen=True)
class AdversarialConfig:
    """What to attack, how, and where to write the results.

    Attributes:
        output_dir: folder for the PNGs, `figure.png` and `result.json`.
        images: image files to attack. Defaults to `()`.
        images_dir: a folder whose image files (any case of .jpg, .jpeg,
            .png, .gif, .bmp; not recursive) are attacked too. Defaults to
            `None`.
        backbone: ImageNet classifier to attack (ignored with `model`).
            Defaults to `"mobilenet"`.
        alpha: width multiplier of the backbone. Defaults to `None`: 0.25 for
            `"mobilenet"`, the family default otherwise.
        model: path of a `.keras` classifier saved by this package (class
            names from `classes.json` beside it). Defaults to `None`.
        target_class: class index or name; `None` is untargeted (change the
            prediction). Defaults to `None`.
        attack: `"lesson"`, `"fgsm"`, `"pgd"` or `"bim"`. Defaults to `"pgd"`.
        norm: `"inf"` or `"2"`. Defaults to `"inf"`.
        eps: radius in pixel units of [0, 255]. Defaults to `None`: 4 for the
            bounded attacks, unbounded for `"lesson"`.
        steps: steps of the iterative attacks. Defaults to `None` (the
            attack's default: 10 for PGD/BIM, 100 for the lesson).
        step_size: step length in pixel units. Defaults to `None` (PGD/BIM:
            2.5 * eps / steps; lesson: 1).
        early_stop: stop each image at its first success; `False` runs every
            step (a more confident, larger perturbation). Defaults to `True`.
        quantize: attack the uint8 images as they will be saved (success
            judged after rounding). `False` attacks in float32 and judges
            success before rounding; the PNGs are then rounded to nearest,
            and `success_after_reload` shows what that costs. Defaults to
            `True`.
        transfer_to: a backbone name or a `.keras` path of a second model.
            Defaults to `None`.
        transfer_alpha: width multiplier of a `transfer_to` backbone.
            Defaults to `None` (as for `alpha`).
        transfer_target_class: class of the second model that counts as
            transfer success. Defaults to `None` (see the module docstring).
        resize: how photos become model-size squares: `"stretch"`, `"crop"`
            (central square) or `"pad"`. Defaults to `"crop"`.
        batch_size: images attacked at once. Defaults to `32`.
        seed: seed of the random start. Defaults to `0`.
        figure_images: rows of `figure.png`. Defaults to `6`.
        robust_data: a class-per-folder tree (`root/<class>/<image>`, class
            names as the model's) on which robust accuracy versus epsilon is
            measured with an untargeted `attack` against the true labels.
            Defaults to `None`.
        robust_split: which images of `robust_data`: `"val"` (the held-out
            split that `keras_transfer.data.load_folder` draws with
            `val_split` and `split_seed`, i.e. the validation images of a
            model trained on that folder with the same settings), `"train"`
            or `"all"`. Defaults to `"val"`.
        val_split: fraction held out per class, as in training. Defaults to
            `0.2`.
        split_seed: seed of that split, as in training. Defaults to `0`.
        epsilons: budgets of the robust-accuracy sweep, pixel units.
            Defaults to `(0, 0.5, 1, 2, 4, 8)`.
        progress: show a progress bar. Defaults to `True`.
    """

    output_dir: str
    images: tuple[str, ...] = ()
    images_dir: str | None = None
    backbone: str = DEFAULT_BACKBONE
    alpha: float | None = None
    model: str | None = None
    target_class: str | None = None
    attack: str = "pgd"
    norm: str = "inf"
    eps: float | None = None
    steps: int | None = None
    step_size: float | None = None
    early_stop: bool = True
    quantize: bool = True
    transfer_to: str | None = None
    transfer_alpha: float | None = None
    transfer_target_class: str | None = None
    resize: str = "crop"
    batch_size: int = 32
    seed: int = 0
    figure_images: int = 6
    robust_data: str | None = None
    robust_split: str = "val"
    val_split: float = 0.2
    split_seed: int = 0
    epsilons: tuple[float, ...] = DEFAULT_EPSILONS
    progress: bool = True

    def __post_init__(self):
        if not self.images and self.images_dir is None and self.robust_data is None:
            raise ValueError(
                "Expected --image files or an --images folder to attack, or --robust-data. Received none of them."
            )
        if self.robust_data is not None and self.attack == "lesson":
            raise ValueError(
                "Robust accuracy needs a bounded attack (fgsm, pgd or bim): it varies eps. Received: attack='lesson'"
            )
        if self.robust_split not in ROBUST_SPLITS:
            raise ValueError(f"Expected robust_split in {ROBUST_SPLITS}. Received: robust_split={self.robust_split!r}")
        if not self.epsilons or any(not np.isfinite(e) or e < 0 for e in self.epsilons):
            raise ValueError(f"Expected finite epsilons >= 0. Received: epsilons={self.epsilons!r}")
        if self.model is not None and self.alpha is not None:
            raise ValueError(
                f"alpha applies to --backbone models, not to a saved --model. Received: alpha={self.alpha!r}, "
                f"model={self.model!r}"
            )
        if self.attack not in ATTACK_CHOICES:
            raise ValueError(f"Expected attack in {ATTACK_CHOICES}. Received: attack={self.attack!r}")
        if self.resize not in RESIZE_CHOICES:
            raise ValueError(f"Expected resize in {RESIZE_CHOICES}. Received: resize={self.resize!r}")
        if self.transfer_target_class is not None and self.transfer_to is None:
            raise ValueError(
                "transfer_target_class needs a second model (--transfer-to). "
                f"Received: transfer_target_class={self.transfer_target_class!r}"
            )
        if self.figure_images < 0:
            raise ValueError(f"Expected figure_images >= 0. Received: figure_images={self.figure_images!r}")

    @property
    def effective_eps(self) -> float | None:
        if self.eps is not None:
            return float(self.eps)
        return None if self.attack == "lesson" else DEFAULT_EPS


def _image_paths(config: AdversarialConfig) -> list[str]:
    from keras_transfer.data import IMAGE_EXTENSIONS

    paths = [os.fspath(p) for p in config.images]
    for path in paths:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"No image file at {path!r}.")
    if config.images_dir is not None:
        if not os.path.isdir(config.images_dir):
            raise FileNotFoundError(f"No folder at {config.images_dir!r} (--images).")
        names = sorted(
            n for n in os.listdir(config.images_dir)
            if not n.startswith(".") and n.lower().endswith(IMAGE_EXTENSIONS)
        )
        if not names:
            raise ValueError(f"No image files ({', '.join(IMAGE_EXTENSIONS)}) in {config.images_dir!r}.")
        paths.extend(os.path.join(config.images_dir, n) for n in names)
    return paths


def _stems(paths: Sequence[str]) -> list[str]:
    """File-name stems made safe and unique (`dog`, `dog_2`, ...)."""
    stems, seen = [], set()
    for path in paths:
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", os.path.splitext(os.path.basename(path))[0]) or "image"
        unique, k = stem, 2
        while unique in seen:
            unique, k = f"{stem}_{k}", k + 1
        seen.add(unique)
        stems.append(unique)
    return stems


def _write_png(path: str, image: np.ndarray) -> None:
    import tensorflow as tf

    tf.io.write_file(path, tf.io.encode_png(np.ascontiguousarray(image, np.uint8)))


def _read_png(path: str) -> np.ndarray:
    import tensorflow as tf

    return tf.io.decode_png(tf.io.read_file(path), channels=3).numpy()


def _prediction(probabilities: np.ndarray, names: Sequence[str]) -> dict:
    k = int(np.argmax(probabilities))
    return {"class": k, "name": names[k], "probability": float(probabilities[k])}


def _transfer_criterion(config, targeted, target, names, transfer_names):
    """The criterion on the second model and a sentence saying what it means."""
    from keras_transfer import adversarial as adv
    from keras_transfer import classes as classes_lib

    if config.transfer_target_class is not None:
        t = classes_lib.resolve_class(config.transfer_target_class, transfer_names)
        return adv.TargetedMisclassification(t), f"the second model predicts {transfer_names[t]!r} ({t})"
    if targeted:
        try:
            t = classes_lib.resolve_class(names[target], transfer_names)
        except ValueError:
            t = None
        if t is not None:
            return adv.TargetedMisclassification(t), f"the second model predicts {transfer_names[t]!r} ({t})"
    return adv.Misclassification(), "the second model's prediction differs from its prediction on the original"


def run(config: AdversarialConfig) -> dict:
    """Attacks the images and writes the files listed in the module docstring.

    Returns:
        The content of `result.json`.
    """
    import keras
    import tensorflow as tf

    paths = _image_paths(config) if (config.images or config.images_dir) else []
    model, names, description = load_classifier(config.model, config.backbone, config.alpha)
    os.makedirs(config.output_dir, exist_ok=True)
    summary: dict = {"model": description}
    if paths:
        summary.update(_attack_images(config, paths, model, names))
    if config.robust_data is not None:
        summary["robust_accuracy"] = _robust_accuracy(config, model, names)
    summary["config"] = dataclasses.asdict(config)
    summary["versions"] = {"tensorflow": tf.__version__, "keras": keras.__version__}
    with open(os.path.join(config.output_dir, "result.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)
    return summary


def _attack_images(config: AdversarialConfig, paths: list[str], model, names: Sequence[str]) -> dict:
    """Attacks the image files; writes the PNGs and the figure; returns the result.json parts."""
    import tensorflow as tf

    from keras_transfer import adversarial as adv
    from keras_transfer import classes as classes_lib
    from keras_transfer import models as models_lib
    from keras_transfer.data import load_image_files
    from keras_transfer.plotting.adversarial import plot_adversarial_examples

    size = models_lib.image_size_of(model)
    images, kept, skipped = load_image_files(paths, image_size=size, resize=config.resize)
    if not kept:
        raise ValueError(f"None of the {len(paths)} image files could be decoded: {skipped[:5]}")
    stems = _stems(kept)

    targeted = config.target_class is not None
    target = classes_lib.resolve_class(config.target_class, names) if targeted else None
    criterion = adv.TargetedMisclassification(target) if targeted else adv.Misclassification()
    attack = adv.make_attack(
        config.attack,
        norm=config.norm,
        eps=config.effective_eps,
        steps=config.steps,
        step_size=config.step_size,
        early_stop=config.early_stop,
        quantize=config.quantize,
    )
    clean_logits = adv.predict_logits(model, images, batch_size=config.batch_size)
    result = attack(
        model, images, criterion, batch_size=config.batch_size, seed=config.seed, verbose=int(config.progress)
    )

    files = []
    # Float results (quantize=False) are saved rounded to nearest, as any PNG writer would.
    as_saved = np.clip(np.round(result.adversarial), 0, 255).astype(np.uint8)
    for stem, original, adversarial in zip(stems, images, as_saved):
        pair = (f"{stem}_original.png", f"{stem}_adversarial.png")
        _write_png(os.path.join(config.output_dir, pair[0]), original)
        _write_png(os.path.join(config.output_dir, pair[1]), adversarial)
        files.append(pair)
    # Measure what was written: the adversarial PNGs read back from disk.
    reloaded = np.stack([_read_png(os.path.join(config.output_dir, f[1])) for f in files])
    reloaded_logits = adv.predict_logits(model, reloaded, batch_size=config.batch_size)
    reloaded_success = adv.is_adversarial(reloaded_logits, result.classes, targeted=targeted)
    metrics = adv.attack_metrics(
        originals=images,
        adversarials=reloaded,
        logits=reloaded_logits,
        classes=result.classes,
        targeted=targeted,
        clean_logits=clean_logits,
    )
    linf, l2 = adv.perturbation_norms(images, reloaded)
    before = adv._softmax(clean_logits)
    after = adv._softmax(reloaded_logits)

    transfer = None
    if config.transfer_to is not None:
        is_file = config.transfer_to.endswith(".keras") or os.path.isfile(config.transfer_to)
        second, second_names, second_description = load_classifier(
            config.transfer_to if is_file else None, config.transfer_to, config.transfer_alpha
        )
        second_size = models_lib.image_size_of(second)
        resized_note = None
        clean_second_in, adv_second_in = images, reloaded
        if second_size != size:
            resize = lambda x: tf.cast(  # noqa: E731
                tf.clip_by_value(tf.round(tf.image.resize(x, (second_size, second_size), antialias=True)), 0, 255),
                tf.uint8,
            ).numpy()
            clean_second_in, adv_second_in = resize(images), resize(reloaded)
            resized_note = f"images resized from {size} to {second_size} px (bilinear) for the second model"
        transfer_criterion, meaning = _transfer_criterion(config, targeted, target, names, second_names)
        transfer_metrics, second_clean, second_adv = adv.transfer_metrics(
            second,
            originals=clean_second_in,
            adversarials=adv_second_in,
            criterion=transfer_criterion,
            source_success=reloaded_success,
            batch_size=config.batch_size,
        )
        t_targeted, t_classes = adv.resolve_criterion(transfer_criterion, second, clean_second_in)
        transfer = {
            "model": second_description,
            "success_means": meaning,
            "resized": resized_note,
            "metrics": transfer_metrics.to_dict(),
            "before": adv._softmax(second_clean),
            "after": adv._softmax(second_adv),
            "success": adv.is_adversarial(second_adv, t_classes, targeted=t_targeted),
            "names": second_names,
        }

    per_image = []
    for i, (stem, path) in enumerate(zip(stems, kept)):
        item = {
            "name": stem,
            "path": os.path.abspath(path),
            "original_png": files[i][0],
            "adversarial_png": files[i][1],
            "before": _prediction(before[i], names),
            "after": _prediction(after[i], names),
            "linf": float(linf[i]),
            "l2": float(l2[i]),
            "success": bool(result.success[i]),
            "success_after_reload": bool(reloaded_success[i]),
            "gradient_steps": int(result.gradient_steps[i]),
        }
        if targeted:
            item["target_probability_before"] = float(before[i, target])
            item["target_probability_after"] = float(after[i, target])
        if transfer is not None:
            item["transfer"] = {
                "before": _prediction(transfer["before"][i], transfer["names"]),
                "after": _prediction(transfer["after"][i], transfer["names"]),
                "success": bool(transfer["success"][i]),
            }
        per_image.append(item)

    if config.figure_images:
        figure = plot_adversarial_examples(
            images,
            reloaded,
            probabilities_before=before,
            probabilities_after=after,
            class_names=names,
            target_classes=result.classes,
            titles=stems,
            max_images=config.figure_images,
        )
        figure.savefig(os.path.join(config.output_dir, "figure.png"), dpi=80)

    totals = {
        "num_images": len(kept),
        "num_skipped": len(skipped),
        "success_rate": result.success_rate,
        "success_rate_after_reload": float(np.mean(reloaded_success)),
        **{k: v for k, v in metrics.to_dict().items() if k not in ("num_images", "success_rate")},
        "attack_seconds": result.seconds,
        "images_per_second": result.images_per_second,
        "mean_gradient_steps": float(np.mean(result.gradient_steps)),
    }
    if transfer is not None:
        totals["transfer_success_rate"] = transfer["metrics"]["success_rate"]
        totals["transfer_clean_rate"] = transfer["metrics"]["clean_rate"]
        totals["transfer_success_rate_given_source_success"] = transfer["metrics"][
            "success_rate_given_source_success"
        ]
    return {
        "attack": attack.describe(),
        "criterion": (
            {"type": "targeted", "target_class": target, "target_name": names[target]}
            if targeted
            else {"type": "untargeted", "meaning": "the model's prediction on the original changes"}
        ),
        "totals": totals,
        "transfer": None
        if transfer is None
        else {k: transfer[k] for k in ("model", "success_means", "resized", "metrics")},
        "images": per_image,
        "skipped": skipped,
    }


def _robust_accuracy(config: AdversarialConfig, model, names: Sequence[str]) -> dict:
    """Robust accuracy versus epsilon on a class-per-folder split; writes robust_accuracy.png."""
    from keras_transfer import adversarial as adv
    from keras_transfer import classes as classes_lib
    from keras_transfer import models as models_lib
    from keras_transfer.data import load_folder
    from keras_transfer.plotting.adversarial import plot_robust_accuracy

    data = load_folder(
        config.robust_data,
        image_size=models_lib.image_size_of(model),
        val_split=config.val_split if config.robust_split != "all" else 0.0,
        seed=config.split_seed,
        resize=config.resize,
    )
    split = {"val": data.val, "train": data.train, "all": data.train}[config.robust_split]
    if split is None:
        raise ValueError(f"No {config.robust_split!r} split with val_split={config.val_split!r}.")
    # Folder classes -> model classes, by name.
    mapping = np.array([classes_lib.resolve_class(name, names) for name in data.class_names], np.int32)
    images, labels = [], []
    for image, label in split.as_numpy_iterator():
        images.append(image)
        labels.append(mapping[label])
    images, labels = np.stack(images), np.asarray(labels, np.int32)
    attack = adv.make_attack(
        config.attack, norm=config.norm, eps=1.0, steps=config.steps, step_size=config.step_size,
        quantize=config.quantize,
    )
    curve = adv.robust_accuracy(
        model, images, labels, epsilons=config.epsilons, attack=attack, batch_size=config.batch_size,
        seed=config.seed, verbose=int(config.progress),
    )
    def last_two(path: str) -> str:
        return os.path.join(*os.path.normpath(os.path.abspath(path)).split(os.sep)[-2:])

    rounding = "uint8 images" if config.quantize else "float images"
    figure = plot_robust_accuracy(
        curve, labels=[curve.attack], title=f"{last_two(config.model) if config.model else config.backbone} on "
        f"{last_two(config.robust_data)}\n({config.robust_split} split, {rounding})"
    )
    figure.savefig(os.path.join(config.output_dir, "robust_accuracy.png"), dpi=100)
    return {
        "data": os.path.abspath(config.robust_data),
        "split": config.robust_split,
        "class_mapping": {name: names[k] for name, k in zip(data.class_names, mapping)},
        **curve.to_dict(),
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m keras_transfer.experiments.adversarial",
        description=(
            "Attack photos so that a classifier changes its answer (targeted with --target-class, else "
            "untargeted), within an epsilon ball in pixel units of [0, 255]. Writes <name>_original.png "
            "and <name>_adversarial.png (lossless) per image, figure.png and result.json."
        ),
    )
    add_arguments(parser, verb="attacked")
    parser.add_argument(
        "--image", dest="image_files", action="append", default=[], metavar="FILE",
        help="an image file to attack; repeat for several.",
    )
    parser.add_argument(
        "--images", dest="images_dir", default=None, metavar="DIR",
        help="a folder whose image files (.jpg .jpeg .png .gif .bmp, any case; not recursive) are attacked.",
    )
    parser.add_argument(
        "--target-class",
        default=None,
        metavar="CLASS",
        help="targeted attack toward this class index or name (e.g. 281, tabby, 'tabby cat'); "
        "absent = untargeted (change the model's prediction). Unknown names list close matches.",
    )
    parser.add_argument(
        "--attack",
        choices=ATTACK_CHOICES,
        default="pgd",
        help="lesson: unbounded gradient ascent on the class score (the lesson's attack); fgsm: one step of "
        "size eps; pgd: projected gradient descent with random start; bim: pgd without random start "
        "(default: %(default)s).",
    )
    parser.add_argument(
        "--norm", choices=("inf", "2"), default="inf", help="norm of the epsilon ball (default: %(default)s)."
    )
    parser.add_argument(
        "--eps",
        type=float,
        default=None,
        help=f"radius of the ball in pixel units of [0, 255] (default: {DEFAULT_EPS:g} for fgsm/pgd/bim; "
        "none, i.e. unbounded, for lesson).",
    )
    parser.add_argument(
        "--steps", type=int, default=None,
        help="maximum steps per image (default: 10 for pgd/bim, 100 for lesson; fgsm takes one).",
    )
    parser.add_argument(
        "--step-size", type=float, default=None,
        help="step length in pixel units (default: 2.5 * eps / steps for pgd/bim; 1, as RMS, for lesson).",
    )
    parser.add_argument(
        "--no-early-stop", action="store_true",
        help="run every step instead of stopping each image at its first success (a more confident, larger "
        "perturbation; used to study transfer).",
    )
    parser.add_argument(
        "--no-quantize", action="store_true",
        help="attack in float32 and judge success before rounding (by default the attack works on the uint8 "
        "images as saved); the PNGs are then rounded to nearest and may no longer fool the model.",
    )
    parser.add_argument(
        "--transfer-to",
        default=None,
        metavar="BACKBONE_OR_MODEL",
        help="also score the adversarial images on this second model: a backbone name (its ImageNet "
        "classifier) or a .keras file.",
    )
    parser.add_argument(
        "--transfer-alpha", type=float, default=None,
        help="width multiplier of a --transfer-to backbone (default: as for --alpha).",
    )
    parser.add_argument(
        "--transfer-target-class",
        default=None,
        metavar="CLASS",
        help="class of the second model that counts as transfer success (e.g. cats). Default: the target's "
        "name if the second model has that class, else 'its prediction changed'.",
    )
    parser.add_argument(
        "--resize", choices=RESIZE_CHOICES, default="crop",
        help="how photos become model-size squares (default: %(default)s, the central square).",
    )
    parser.add_argument("--batch-size", type=int, default=32, help="images attacked at once (default: %(default)s).")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random start (default: %(default)s).")
    parser.add_argument(
        "--figure-images", type=int, default=6, help="images shown in figure.png; 0 = no figure (default: %(default)s)."
    )
    robust = parser.add_argument_group("robust accuracy versus epsilon")
    robust.add_argument(
        "--robust-data", default=None, metavar="DIR",
        help="class-per-folder images (DIR/<class>/<image>, class names as the model's) on which accuracy under "
        "an untargeted --attack (true labels) is measured for every --epsilons; writes robust_accuracy.png.",
    )
    robust.add_argument(
        "--robust-split", choices=ROBUST_SPLITS, default="val",
        help="val: the held-out split load_folder draws with --val-split and --split-seed (the validation images "
        "of a model trained on DIR with those settings); train; or all images (default: %(default)s).",
    )
    robust.add_argument("--val-split", type=float, default=0.2, help="held-out fraction per class (default: %(default)s).")
    robust.add_argument("--split-seed", type=int, default=0, help="seed of the held-out split (default: %(default)s).")
    robust.add_argument(
        "--epsilons", type=_epsilons, default=DEFAULT_EPSILONS,
        help="comma-separated budgets in pixel units (default: %s)." % ",".join(f"{e:g}" for e in DEFAULT_EPSILONS),
    )
    parser.add_argument("--no-progress", action="store_true", help="do not show a progress bar.")
    parser.add_argument("--output-dir", required=True, help="folder for the results (created if needed).")
    return parser


def _epsilons(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, e.g. 0,1,2,4. Received: {text!r}") from None


def config_from_args(args: argparse.Namespace) -> AdversarialConfig:
    return AdversarialConfig(
        output_dir=args.output_dir,
        images=tuple(args.image_files),
        images_dir=args.images_dir,
        backbone=args.backbone,
        alpha=args.alpha,
        model=args.model,
        target_class=args.target_class,
        attack=args.attack,
        norm=args.norm,
        eps=args.eps,
        steps=args.steps,
        step_size=args.step_size,
        early_stop=not args.no_early_stop,
        quantize=not args.no_quantize,
        transfer_to=args.transfer_to,
        transfer_alpha=args.transfer_alpha,
        transfer_target_class=args.transfer_target_class,
        resize=args.resize,
        batch_size=args.batch_size,
        seed=args.seed,
        figure_images=args.figure_images,
        robust_data=args.robust_data,
        robust_split=args.robust_split,
        val_split=args.val_split,
        split_seed=args.split_seed,
        epsilons=args.epsilons,
        progress=not args.no_progress,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        summary = run(config_from_args(args))
    except (ValueError, FileNotFoundError) as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    if "robust_accuracy" in summary:
        curve = summary["robust_accuracy"]
        pairs = ", ".join(f"eps {e:g}: {a:.3f}" for e, a in zip(curve["epsilons"], curve["accuracy"]))
        print(f"robust accuracy ({curve['attack']}, n={curve['num_images']}): {pairs}")
    if "totals" not in summary:
        print(f"results in {os.path.abspath(args.output_dir)} ({time.perf_counter() - start:.0f} s)")
        return 0
    totals = summary["totals"]
    line = (
        f"{summary['attack']}: {totals['num_images']} images, success {totals['success_rate_after_reload']:.4f} "
        f"(saved PNGs), mean L-inf {totals['mean_linf']:.2f}, mean L2 {totals['mean_l2']:.1f}, "
        f"{totals['images_per_second']:.1f} images/s"
    )
    if "transfer_success_rate" in totals:
        line += (
            f"; transfer success {totals['transfer_success_rate']:.4f} "
            f"(clean baseline {totals['transfer_clean_rate']:.4f})"
        )
    print(line)
    print(f"results in {os.path.abspath(args.output_dir)} ({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
