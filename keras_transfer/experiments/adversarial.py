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
  class-per-folder tree under untargeted attacks, for every `--epsilons`.
  `--robust-attacks pgd-margin,apgd-ce` combines several attacks: an image
  counts as robust only if every attack failed on it (worst case per image;
  each attack runs on the images the earlier ones left). The entry records
  the worst-case accuracy, each attack's own accuracy (with
  `--robust-each-alone`; else the first attack's), how many images each
  attack broke first (`found_by`), per image which attack did
  (`broken_by`), and the gradient steps each attack spent; the figure shows
  the worst case and each attack's curve.

Stronger attacks. `--loss margin` ascends the logit margin instead of the
cross-entropy (which saturates on a confident model and overstates its
robustness), `--restarts R` re-attacks the images still unbroken from new
random starts (pgd, apgd), and `--attack apgd` is auto-PGD (Croce and Hein
2020; adaptive step size with momentum, 100 steps by default).

Transfer. `--transfer-to` scores the same adversarial PNGs on a second model
(a backbone's ImageNet classifier or a `.keras` file). Its label space may
differ, so transfer success is defined explicitly and recorded in
`result.json`: with `--transfer-target-class C`, the second model predicts C
(e.g. `cats` for a cats-vs-dogs model); else, if the attack is targeted and
the second model has a class of the same name, it predicts that class; else
its prediction on the adversarial image differs from its prediction on the
original.

Every setting is declared once (`AdversarialConfig`) and becomes a flag. Bad
input (a missing image or empty `--images` folder, a missing or corrupt
`--model`, an unknown backbone or class, `--eps` beyond 255 for L-inf, an
output folder that is a file, read-only or in use by another run) ends in one
line on stderr and exit status 2, before any attack starts.

Examples::

    python -m keras_transfer.experiments.adversarial --backbone mobilenet --alpha 0.25 \\
        --images ../shared/data/oxford_pets/images --target-class tabby --attack pgd --eps 4 \\
        --output-dir runs/adversarial
    python -m keras_transfer.experiments.adversarial --image dog.jpg --target-class 281 \\
        --transfer-to runs/cats_vs_dogs/model.keras --transfer-target-class cats --output-dir runs/adv1
    python -m keras_transfer.experiments.adversarial --model runs/cats_vs_dogs/model.keras \\
        --robust-data ../shared/data/cats_vs_dogs/train --epsilons 0,0.5,1,2,4 --output-dir runs/robust
    python -m keras_transfer.experiments.adversarial --model runs/cats_vs_dogs/model.keras \\
        --robust-data ../shared/data/cats_vs_dogs/train --epsilons 0,1,2,4 --robust-attacks pgd-margin,apgd-ce \\
        --restarts 2 --output-dir runs/robust_worst_case
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Sequence

import numpy as np

from keras_transfer import files, naming, run_folder
from keras_transfer import settings as settings_lib
from keras_transfer.experiments import _cli
from keras_transfer.experiments._classifier_source import (
    ClassifierSource,
    image_paths,
    load_classifier,
    run_command,
)
from keras_transfer.settings import Choice, Either, Flag, Int, Many, Optional, Path, Real, Text, setting

PROG = "python -m keras_transfer.experiments.adversarial"
DEFAULT_EPS = 4.0
# The names of keras_transfer.adversarial.ATTACKS and NORMS, without importing
# TensorFlow for --help.
ATTACK_CHOICES = ("lesson", "fgsm", "pgd", "bim", "apgd")
NORM_CHOICES = ("inf", "2")
LOSS_CHOICES = ("crossentropy", "margin")
# --robust-attacks: a bounded attack, optionally with its loss (ce or margin;
# without it, --loss).
ROBUST_ATTACK_CHOICES = tuple(
    f"{name}{suffix}" for name in ("fgsm", "pgd", "bim", "apgd") for suffix in ("", "-ce", "-margin")
)
_LOSS_SUFFIXES = {"ce": "crossentropy", "margin": "margin"}
RESIZE_CHOICES = ("stretch", "crop", "pad")
ROBUST_SPLITS = ("val", "train", "all")
DEFAULT_EPSILONS = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0)
MAX_FIGURE_IMAGES = 32
MAX_BATCH_SIZE = 4096
# Beyond the L2 diagonal of the pixel cube of a 600 px image (265,004; 600 px
# is the largest input of a Keras Applications backbone), a radius means
# nothing: rejected as the flags are read. The exact bound (255 for L-inf, the
# diagonal at the model's input size for L2) is checked before any attack.
MAX_RADIUS = 300_000.0

_INPUT = "images to attack"
_ATTACK = "attack"
_TRANSFER = "transfer to a second model"
_ROBUST = "robust accuracy versus epsilon"
_OUTPUT = "output"
_CLASS = Either((Int(min=0), Text()))
_RADIUS = Real(min=0, min_open=True, max=MAX_RADIUS)


@dataclasses.dataclass(frozen=True)
class AdversarialConfig(ClassifierSource):
    """What to attack, how, and where to write the results.

    Every field is a `keras_transfer.settings.setting` (default, valid
    values and help declared with it, and a flag of the command); the
    classifier is `backbone`, `alpha` or `model` (see `ClassifierSource`).
    In more detail:

    - `quantize`: `False` attacks in float32 and judges success before
      rounding; the PNGs are then rounded to nearest, and
      `success_after_reload` shows what that costs.
    - `robust_split`: `"val"` is the held-out split that
      `keras_transfer.data.load_folder` draws with `val_split` and
      `split_seed`, i.e. the validation images of a model trained on that
      folder with the same settings.
    - `transfer_target_class`: when `None`, transfer success is the attack's
      target class name if the second model has it, else "its prediction
      changed" (see the module docstring).
    """

    output_dir: str = setting(
        kind=Path(), group=_OUTPUT, metavar="DIR", help="folder for the results (created if needed)."
    )
    images: tuple[str, ...] = setting(
        (), kind=Many(Path(), min_items=0), flag=None, group=_INPUT,
        help="an image file to attack; repeat for several.",
    )
    images_dir: str | None = setting(
        None, kind=Optional(Path()), flag="--images", group=_INPUT, metavar="DIR",
        help="a folder whose image files (.jpg .jpeg .png .gif .bmp, any case; not recursive) are attacked.",
    )
    resize: str = setting(
        "crop", kind=Choice(RESIZE_CHOICES), group=_INPUT,
        help="how photos become model-size squares: stretch, the central square (crop) or pad.",
    )
    target_class: int | str | None = setting(
        None, kind=Optional(_CLASS), group=_ATTACK, metavar="CLASS",
        help="targeted attack toward this class index or name (e.g. 281, tabby, 'tabby cat'); "
        "None = untargeted (change the model's prediction). Unknown names list close matches.",
    )
    attack: str = setting(
        "pgd", kind=Choice(ATTACK_CHOICES), group=_ATTACK,
        help="lesson: unbounded gradient ascent on the class score (the lesson's attack); fgsm: one step of "
        "size eps; pgd: projected gradient descent with random start; bim: pgd without random start.",
    )
    norm: str = setting("inf", kind=Choice(NORM_CHOICES), group=_ATTACK, help="norm of the epsilon ball.")
    eps: float | None = setting(
        None, kind=Optional(_RADIUS), group=_ATTACK,
        help=f"radius of the ball in pixel units of [0, 255], at most 255 for L-inf (None: {DEFAULT_EPS:g} for "
        "fgsm/pgd/bim; unbounded for lesson).",
    )
    steps: int | None = setting(
        None, kind=Optional(Int(min=1)), group=_ATTACK,
        help="maximum steps per image (None: 10 for pgd/bim, 100 for lesson; fgsm takes one).",
    )
    step_size: float | None = setting(
        None, kind=Optional(_RADIUS), group=_ATTACK,
        help="step length in pixel units (None: 2.5 * eps / steps for pgd/bim; 1, as RMS, for lesson).",
    )
    loss: str = setting(
        "crossentropy", kind=Choice(LOSS_CHOICES), group=_ATTACK,
        help="the loss fgsm/pgd/bim/apgd ascend: crossentropy, or margin (the logit margin, which does not "
        "saturate on a confident model: a stronger attack).",
    )
    restarts: int = setting(
        1, kind=Int(min=1, max=1000), group=_ATTACK,
        help="runs per image for pgd and apgd: an image still unbroken is attacked again from a new random start.",
    )
    early_stop: bool = setting(
        True, kind=Flag(), group=_ATTACK,
        help="stop each image at its first success; --no-early-stop runs every step (a more confident, larger "
        "perturbation; used to study transfer).",
    )
    quantize: bool = setting(
        True, kind=Flag(), group=_ATTACK,
        help="attack the uint8 images as they will be saved (success judged after rounding); --no-quantize "
        "attacks in float32, and the PNGs, rounded to nearest, may no longer fool the model.",
    )
    batch_size: int = setting(
        32, kind=Int(min=1, max=MAX_BATCH_SIZE), group=_ATTACK, help="images attacked at once."
    )
    seed: int = setting(0, kind=Int(min=0), group=_ATTACK, help="seed of the random start.")
    transfer_to: str | None = setting(
        None, kind=Optional(Text()), group=_TRANSFER, metavar="BACKBONE_OR_MODEL",
        help="also score the adversarial images on this second model: a backbone name (its ImageNet "
        "classifier) or a .keras file.",
    )
    transfer_alpha: float | None = setting(
        None, kind=Optional(Real(min=0, min_open=True, max=4)), group=_TRANSFER,
        help="width multiplier of a --transfer-to backbone (None: as for --alpha).",
    )
    transfer_target_class: int | str | None = setting(
        None, kind=Optional(_CLASS), group=_TRANSFER, metavar="CLASS",
        help="class of the second model that counts as transfer success (e.g. cats). None: the target's "
        "name if the second model has that class, else 'its prediction changed'.",
    )
    robust_data: str | None = setting(
        None, kind=Optional(Path()), group=_ROBUST, metavar="DIR",
        help="class-per-folder images (DIR/<class>/<image>, class names as the model's) on which accuracy under "
        "an untargeted --attack (true labels) is measured for every --epsilons; writes robust_accuracy.png.",
    )
    robust_split: str = setting(
        "val", kind=Choice(ROBUST_SPLITS), group=_ROBUST,
        help="val: the held-out split load_folder draws with --val-split and --split-seed (the validation images "
        "of a model trained on DIR with those settings); train; or all images.",
    )
    val_split: float = setting(
        0.2, kind=Real(min=0, max=1, max_open=True), group=_ROBUST, help="held-out fraction per class."
    )
    split_seed: int = setting(0, kind=Int(min=0), group=_ROBUST, help="seed of the held-out split.")
    robust_attacks: tuple[str, ...] | None = setting(
        None, kind=Optional(Many(Choice(ROBUST_ATTACK_CHOICES))), group=_ROBUST, metavar="A1,A2,...",
        help="attacks combined for --robust-data, worst case per image (e.g. pgd-margin,apgd-ce): fgsm, pgd, bim "
        "or apgd, optionally -ce or -margin (else --loss), with --norm, --steps, --step-size, --restarts (pgd, "
        "apgd). None: --attack alone.",
    )
    robust_each_alone: bool = setting(
        False, kind=Flag(), group=_ROBUST,
        help="run every --robust-attacks attack on every correctly classified image, to record each one's own "
        "accuracy (costs the sum of the attacks; else later attacks only see the images earlier ones left).",
    )
    epsilons: tuple[float, ...] = setting(
        DEFAULT_EPSILONS, kind=Many(Real(min=0, max=MAX_RADIUS)), group=_ROBUST, metavar="E1,E2,...",
        help="comma-separated budgets in pixel units (0 = the clean accuracy).",
    )
    figure_images: int = setting(
        6, kind=Int(min=0, max=MAX_FIGURE_IMAGES), group=_OUTPUT, help="images shown in figure.png; 0 = no figure."
    )
    progress: bool = setting(True, kind=Flag(), group=_OUTPUT, help="show a progress bar.")

    def __post_init__(self):
        settings_lib.validate(self)
        self.check_source()
        if not self.images and self.images_dir is None and self.robust_data is None:
            raise ValueError(
                "Expected --image files or an --images folder to attack, or --robust-data. Received none of them."
            )
        if self.robust_data is not None and self.attack == "lesson" and self.robust_attacks is None:
            raise ValueError(
                "Robust accuracy needs a bounded attack (fgsm, pgd or bim): it varies eps. Received: attack='lesson'"
            )
        if self.robust_data is not None and self.robust_split == "val" and self.val_split == 0:
            raise ValueError("The 'val' split needs val_split > 0. Received: robust_split='val', val_split=0")
        for name in ("transfer_alpha", "transfer_target_class"):
            if getattr(self, name) is not None and self.transfer_to is None:
                raise ValueError(
                    f"{name} needs a second model (--transfer-to). Received: {name}={getattr(self, name)!r}"
                )
        self.make_attack()  # the attack's own checks: eps <= 255 for L-inf, FGSM takes one step, ...
        if self.robust_data is not None:
            from keras_transfer import adversarial as adv

            self.make_robust_attacks()
            for eps in self.epsilons:
                adv.check_radius("epsilons", eps, self.norm)

    @property
    def effective_eps(self) -> float | None:
        if self.eps is not None:
            return float(self.eps)
        return None if self.attack == "lesson" else DEFAULT_EPS

    def make_attack(self, *, eps: float | None = None):
        """The attack of `attack`, `norm`, ...; with `eps` for robust accuracy (which varies it)."""
        from keras_transfer import adversarial as adv

        if eps is not None:
            return adv.make_attack(
                self.attack, norm=self.norm, eps=eps, steps=self.steps, step_size=self.step_size,
                quantize=self.quantize, loss=self.loss, restarts=self.restarts,
            )
        return adv.make_attack(
            self.attack,
            norm=self.norm,
            eps=self.effective_eps,
            steps=self.steps,
            step_size=self.step_size,
            early_stop=self.early_stop,
            quantize=self.quantize,
            loss=self.loss,
            restarts=self.restarts,
        )

    def make_robust_attacks(self) -> list:
        """The attacks of `--robust-attacks` (else `--attack`), at `eps=1` (robust accuracy varies it).

        `--restarts` applies to the attacks with a random start (pgd, apgd).
        """
        from keras_transfer import adversarial as adv

        if self.robust_attacks is None:
            return [self.make_attack(eps=1.0)]
        attacks = []
        for spec in self.robust_attacks:
            name, _, suffix = spec.partition("-")
            attacks.append(adv.make_attack(
                name, norm=self.norm, eps=1.0, steps=self.steps if name != "fgsm" else None,
                step_size=self.step_size if name in ("pgd", "bim") else None, quantize=self.quantize,
                loss=_LOSS_SUFFIXES.get(suffix, self.loss), restarts=self.restarts if name in ("pgd", "apgd") else 1,
            ))
        return attacks


# --------------------------------------------------------------------------
# Checking the inputs: everything is loaded and resolved before any attack.
# --------------------------------------------------------------------------


@dataclasses.dataclass
class _SecondModel:
    """The `--transfer-to` model and what success on it means."""

    model: object
    names: list[str]
    description: str
    criterion: object
    meaning: str


@dataclasses.dataclass
class _ImageJob:
    """The decoded images to attack, their names and the criterion."""

    images: np.ndarray
    kept: list[str]
    skipped: list[str]
    stems: list[str]
    target: int | None
    second: _SecondModel | None

    @property
    def targeted(self) -> bool:
        return self.target is not None


def _prepare_images(config: AdversarialConfig, model, names: Sequence[str]) -> _ImageJob:
    """Resolves the target class, decodes the images and loads the second model: every check before the attack."""
    from keras_transfer import classes as classes_lib
    from keras_transfer import models as models_lib
    from keras_transfer.data import load_image_files

    target = classes_lib.resolve_class(config.target_class, names) if config.target_class is not None else None
    paths = image_paths(config.images, config.images_dir)
    images, kept, skipped = load_image_files(paths, image_size=models_lib.image_size_of(model), resize=config.resize)
    if not kept:
        raise ValueError(f"None of the {len(paths)} image files could be decoded: {skipped[:5]}")
    config.make_attack().check_radii(images.shape[1:])  # L2 radii are bounded by the image size
    second = _load_second_model(config, target, names) if config.transfer_to is not None else None
    stems = naming.unique_stems([os.path.splitext(os.path.basename(p))[0] for p in kept], default="image")
    return _ImageJob(images=images, kept=kept, skipped=skipped, stems=stems, target=target, second=second)


def _load_second_model(config: AdversarialConfig, target: int | None, names: Sequence[str]) -> _SecondModel:
    """The `--transfer-to` classifier and the criterion of transfer success on it."""
    from keras_transfer import adversarial as adv
    from keras_transfer import classes as classes_lib

    spec = config.transfer_to
    is_file = spec.endswith(".keras") or os.path.isfile(spec)
    if is_file and config.transfer_alpha is not None:
        raise ValueError(
            f"transfer_alpha applies to a --transfer-to backbone, not to a saved model. "
            f"Received: transfer_alpha={config.transfer_alpha!r}, transfer_to={spec!r}"
        )
    model, second_names, description = load_classifier(spec if is_file else None, spec, config.transfer_alpha)
    t = None
    if config.transfer_target_class is not None:
        t = classes_lib.resolve_class(config.transfer_target_class, second_names)
    elif target is not None:
        try:
            t = classes_lib.resolve_class(names[target], second_names)
        except ValueError:
            t = None
    if t is not None:
        criterion = adv.TargetedMisclassification(t)
        meaning = f"the second model predicts {second_names[t]!r} ({t})"
    else:
        criterion = adv.Misclassification()
        meaning = "the second model's prediction differs from its prediction on the original"
    return _SecondModel(model, second_names, description, criterion, meaning)


@dataclasses.dataclass
class _RobustJob:
    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    mapping: np.ndarray
    report: object = None  # keras_transfer.data.DataReport: the undecodable files skipped


def _prepare_robust(config: AdversarialConfig, model, names: Sequence[str]) -> _RobustJob:
    """The `--robust-split` images of `--robust-data`, labelled with the model's classes (by name)."""
    from keras_transfer import adversarial as adv
    from keras_transfer import classes as classes_lib
    from keras_transfer import models as models_lib
    from keras_transfer.data import load_folder

    if not os.path.isdir(config.robust_data):
        raise FileNotFoundError(f"No folder at {config.robust_data!r} (--robust-data).")
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
    mapping = classes_lib.class_mapping(data.class_names, names).astype(np.int32)
    images, labels = [], []
    for image, label in split.as_numpy_iterator():
        images.append(image)
        labels.append(mapping[label])
    if not images:
        raise ValueError(f"No images in the {config.robust_split!r} split of {config.robust_data!r}.")
    images = np.stack(images)
    for eps in config.epsilons:
        adv.check_radius("epsilons", eps, config.norm, images.shape[1:])
    return _RobustJob(images, np.asarray(labels, np.int32), list(data.class_names), mapping, data.report)


# --------------------------------------------------------------------------
# The run.
# --------------------------------------------------------------------------


def run(config: AdversarialConfig) -> dict:
    """Attacks the images and writes the files listed in the module docstring.

    The output folder is checked (writable, not in use by another run) and
    every input (images, classes, models, robust-accuracy data) loaded and
    resolved before any attack starts.

    Returns:
        The content of `result.json`.
    """
    import keras
    import tensorflow as tf

    with run_folder.folder_lock(config.output_dir, command=config.command or PROG):
        model, names, description = load_classifier(config.model, config.backbone, config.alpha)
        job = _prepare_images(config, model, names) if config.images or config.images_dir else None
        robust = _prepare_robust(config, model, names) if config.robust_data is not None else None
        summary: dict = {"model": description}
        if job is not None:
            summary.update(_attack_images(config, job, model, names))
        if robust is not None:
            summary["robust_accuracy"] = _robust_accuracy(config, robust, model, names)
        summary["config"] = dataclasses.asdict(config)
        summary["versions"] = {"tensorflow": tf.__version__, "keras": keras.__version__}
        files.write_json(os.path.join(config.output_dir, "result.json"), summary)
    return files.jsonable(summary)


@dataclasses.dataclass
class _Saved:
    """The adversarial images as written and read back, and the model's view of them."""

    files: list[tuple[str, str]]
    reloaded: np.ndarray
    logits: np.ndarray
    success: np.ndarray


def _attack_images(config: AdversarialConfig, job: _ImageJob, model, names: Sequence[str]) -> dict:
    """Attacks the images; writes the PNGs and the figure; returns the result.json parts."""
    from keras_transfer import adversarial as adv

    criterion = adv.TargetedMisclassification(job.target) if job.targeted else adv.Misclassification()
    attack = config.make_attack()
    clean_logits = adv.predict_logits(model, job.images, batch_size=config.batch_size)
    result = attack(
        model, job.images, criterion, batch_size=config.batch_size, seed=config.seed, verbose=int(config.progress)
    )
    saved = _save_pngs(config, job, result, model)
    metrics = adv.attack_metrics(
        originals=job.images,
        adversarials=saved.reloaded,
        logits=saved.logits,
        classes=result.classes,
        targeted=job.targeted,
        clean_logits=clean_logits,
    )
    before, after = adv.softmax(clean_logits), adv.softmax(saved.logits)
    transfer = _transfer(config, job, saved) if job.second is not None else None
    if config.figure_images:
        _save_figure(config, job, saved.reloaded, before, after, names, result.classes)
    totals = {
        "num_images": len(job.kept),
        "num_skipped": len(job.skipped),
        "success_rate": result.success_rate,
        "success_rate_after_reload": float(np.mean(saved.success)),
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
            {"type": "targeted", "target_class": job.target, "target_name": names[job.target]}
            if job.targeted
            else {"type": "untargeted", "meaning": "the model's prediction on the original changes"}
        ),
        "totals": totals,
        "transfer": None
        if transfer is None
        else {k: transfer[k] for k in ("model", "success_means", "resized", "metrics")},
        "images": _per_image(job, result, saved, before, after, names, transfer),
        "skipped": job.skipped,
    }


def _save_pngs(config: AdversarialConfig, job: _ImageJob, result, model) -> _Saved:
    """Writes `<name>_original.png` and `<name>_adversarial.png`, and judges the PNGs read back from disk."""
    from keras_transfer import adversarial as adv

    pairs = []
    # Float results (quantize=False) are saved rounded to nearest, as any PNG writer would.
    as_saved = np.clip(np.round(result.adversarial), 0, 255).astype(np.uint8)
    for stem, original, adversarial in zip(job.stems, job.images, as_saved):
        pair = (f"{stem}_original.png", f"{stem}_adversarial.png")
        files.write_png(os.path.join(config.output_dir, pair[0]), original)
        files.write_png(os.path.join(config.output_dir, pair[1]), adversarial)
        pairs.append(pair)
    # Measure what was written: the adversarial PNGs read back from disk.
    reloaded = np.stack([files.read_png(os.path.join(config.output_dir, p[1])) for p in pairs])
    logits = adv.predict_logits(model, reloaded, batch_size=config.batch_size)
    success = adv.is_adversarial(logits, result.classes, targeted=job.targeted)
    return _Saved(files=pairs, reloaded=reloaded, logits=logits, success=success)


def _transfer(config: AdversarialConfig, job: _ImageJob, saved: _Saved) -> dict:
    """The second model's view of the original and adversarial PNGs."""
    import tensorflow as tf

    from keras_transfer import adversarial as adv
    from keras_transfer import models as models_lib

    second = job.second
    size, second_size = job.images.shape[1], models_lib.image_size_of(second.model)
    resized_note = None
    clean_in, adv_in = job.images, saved.reloaded
    if second_size != size:

        def resize(x):
            resized = tf.image.resize(x, (second_size, second_size), antialias=True)
            return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8).numpy()

        clean_in, adv_in = resize(job.images), resize(saved.reloaded)
        resized_note = f"images resized from {size} to {second_size} px (bilinear) for the second model"
    metrics, second_clean, second_adv = adv.transfer_metrics(
        second.model,
        originals=clean_in,
        adversarials=adv_in,
        criterion=second.criterion,
        source_success=saved.success,
        batch_size=config.batch_size,
    )
    targeted, classes = adv.resolve_criterion(second.criterion, second.model, clean_in)
    return {
        "model": second.description,
        "success_means": second.meaning,
        "resized": resized_note,
        "metrics": metrics.to_dict(),
        "before": adv.softmax(second_clean),
        "after": adv.softmax(second_adv),
        "success": adv.is_adversarial(second_adv, classes, targeted=targeted),
        "names": second.names,
    }


def _prediction(probabilities: np.ndarray, names: Sequence[str]) -> dict:
    k = int(np.argmax(probabilities))
    return {"class": k, "name": names[k], "probability": float(probabilities[k])}


def _per_image(job: _ImageJob, result, saved: _Saved, before, after, names, transfer) -> list[dict]:
    from keras_transfer import adversarial as adv

    linf, l2 = adv.perturbation_norms(job.images, saved.reloaded)
    per_image = []
    for i, (stem, path) in enumerate(zip(job.stems, job.kept)):
        item = {
            "name": stem,
            "path": os.path.abspath(path),
            "original_png": saved.files[i][0],
            "adversarial_png": saved.files[i][1],
            "before": _prediction(before[i], names),
            "after": _prediction(after[i], names),
            "linf": float(linf[i]),
            "l2": float(l2[i]),
            "success": bool(result.success[i]),
            "success_after_reload": bool(saved.success[i]),
            "gradient_steps": int(result.gradient_steps[i]),
        }
        if job.targeted:
            item["target_probability_before"] = float(before[i, job.target])
            item["target_probability_after"] = float(after[i, job.target])
        if transfer is not None:
            item["transfer"] = {
                "before": _prediction(transfer["before"][i], transfer["names"]),
                "after": _prediction(transfer["after"][i], transfer["names"]),
                "success": bool(transfer["success"][i]),
            }
        per_image.append(item)
    return per_image


def _save_figure(config: AdversarialConfig, job: _ImageJob, reloaded, before, after, names, classes) -> None:
    from keras_transfer.plotting.adversarial import plot_adversarial_examples

    figure = plot_adversarial_examples(
        job.images,
        reloaded,
        probabilities_before=before,
        probabilities_after=after,
        class_names=names,
        target_classes=classes,
        titles=job.stems,
        max_images=config.figure_images,
    )
    files.save_figure(figure, os.path.join(config.output_dir, "figure.png"), dpi=80)


def _robust_accuracy(config: AdversarialConfig, job: _RobustJob, model, names: Sequence[str]) -> dict:
    """Robust accuracy versus epsilon on the prepared split; writes robust_accuracy.png."""
    from keras_transfer import adversarial as adv
    from keras_transfer.plotting.adversarial import plot_robust_accuracy

    curve = adv.robust_accuracy(
        model, job.images, job.labels, epsilons=config.epsilons, attacks=config.make_robust_attacks(),
        each_attack_alone=config.robust_each_alone, batch_size=config.batch_size, seed=config.seed,
        verbose=int(config.progress),
    )

    def last_two(path: str) -> str:
        return os.path.join(*os.path.normpath(os.path.abspath(path)).split(os.sep)[-2:])

    rounding = "uint8 images" if config.quantize else "float images"
    source = last_two(config.model) if config.model else config.backbone
    figure = plot_robust_accuracy(
        curve,
        labels=[curve.attack if len(curve.attacks) == 1 else "worst case per image"],
        title=f"{source} on {last_two(config.robust_data)}\n({config.robust_split} split, {rounding})",
    )
    files.save_figure(figure, os.path.join(config.output_dir, "robust_accuracy.png"), dpi=100)
    return {
        "data": os.path.abspath(config.robust_data),
        "split": config.robust_split,
        "class_mapping": {name: names[k] for name, k in zip(job.class_names, job.mapping)},
        "num_skipped": job.report.skipped,
        "skipped_files": list(job.report.skipped_files),
        **curve.to_dict(),
    }


# --------------------------------------------------------------------------
# Command line.
# --------------------------------------------------------------------------


def build_parser() -> _cli.Parser:
    parser = _cli.Parser(
        prog=PROG,
        description=(
            "Attack photos so that a classifier changes its answer (targeted with --target-class, else "
            "untargeted), within an epsilon ball in pixel units of [0, 255]. Writes <name>_original.png "
            "and <name>_adversarial.png (lossless) per image, figure.png and result.json."
        ),
    )
    groups: dict = {}
    _cli.add_repeated_flag(parser, AdversarialConfig, "images", "--image", metavar="FILE", groups=groups)
    _cli.add_flags(parser, AdversarialConfig, required=("output_dir",), groups=groups)
    return parser


def config_from_args(args, *, command: str | None = None) -> AdversarialConfig:
    return _cli.from_args(AdversarialConfig, args, command=command)


def _number(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _report(summary: dict, config: AdversarialConfig, seconds: float) -> None:
    if "robust_accuracy" in summary:
        curve = summary["robust_accuracy"]
        pairs = ", ".join(f"eps {e:g}: {_number(a, '.3f')}" for e, a in zip(curve["epsilons"], curve["accuracy"]))
        print(f"robust accuracy ({curve['attack']}, n={curve['num_images']}): {pairs}")
        if len(curve["attacks"]) > 1:
            for name, found in zip(curve["attacks"], curve["found_by"]):
                print(f"  broken first by {name}: {', '.join(str(k) for k in found)} images per budget")
    if "totals" in summary:
        totals = summary["totals"]
        line = (
            f"{summary['attack']}: {totals['num_images']} images, success "
            f"{_number(totals['success_rate_after_reload'], '.4f')} (saved PNGs), mean L-inf "
            f"{_number(totals['mean_linf'], '.2f')}, mean L2 {_number(totals['mean_l2'], '.1f')}, "
            f"{_number(totals['images_per_second'], '.1f')} images/s"
        )
        if "transfer_success_rate" in totals:
            line += (
                f"; transfer success {_number(totals['transfer_success_rate'], '.4f')} "
                f"(clean baseline {_number(totals['transfer_clean_rate'], '.4f')})"
            )
        print(line)
    print(f"results in {os.path.abspath(config.output_dir)} ({seconds:.0f} s)")


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command; returns the exit status (2 for any bad input, with one line on stderr)."""
    return run_command(build_parser(), argv, make_config=config_from_args, run=run, report=_report)


if __name__ == "__main__":
    sys.exit(main())
