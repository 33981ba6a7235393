"""Time to a good model: the main job against the keras.io transfer-learning recipe.

Both sides train a classifier on MobileNetV2 1.0 at 224 px with its real
ImageNet weights, on the same real photos and the same train/validation split,
one after the other in this one process (`--order`), and are scored on the
same validation images:

- ours: the main job as a user runs it, the training command of `--task`
  (`python -m keras_transfer.experiments.pets` or `.cats_vs_dogs` with
  `--data-dir` on ../shared/data and a temporary `--output-dir`) run
  in-process through its own parser and `run_experiment`: the package's loader
  (decode once, uint8 cache), phase 1 on cached features (100 epochs, training
  images and their mirror images), phase 2 fine-tuning the top third of the
  backbone (up to 10 epochs, early stopping with patience 3), final
  evaluation, metrics.json, TensorBoard and the PNG plots, every setting at the
  command's default unless `--our-args` overrides it. Its wall time runs from
  the call of `run_experiment` to its return (the command's own work; the
  interpreter start and imports are outside both sides); the epochs each phase
  ran and the validation accuracies come from its metrics.json.
- recipe: keras.io's "Transfer learning & fine-tuning" guide
  (https://keras.io/guides/transfer_learning/) on the same backbone, as a
  keras.io user with a class-per-folder tree writes it:
  `keras.utils.image_dataset_from_directory(..., image_size=(224, 224),
  batch_size=32)` (training split shuffled, decoded every epoch, prefetched),
  a model of `RandomFlip("horizontal")` + `RandomRotation(0.1)`,
  `keras.applications.mobilenet_v2.preprocess_input`, the frozen base called
  with `training=False`, GlobalAveragePooling2D, Dropout(0.2) and
  Dense(num_classes) logits; `fit` with Adam() (1e-3) for
  `--recipe-head-epochs`, then the whole base unfrozen (`--recipe-unfreeze
  top-third`: our phase 2's layers instead, BatchNormalization kept frozen as
  ours does), recompiled with Adam(1e-5) and `fit` for
  `--recipe-fine-tune-epochs`, both `fit`s validating every epoch as the guide
  does. Its wall time runs from the `image_dataset_from_directory` calls to the
  end of the second `fit`; its accuracies are `model.evaluate` on the
  validation split after each phase (outside the timed part).

The epoch counts default to the guide's as written for its result: 20 + 10
(the guide until its Keras 3 rewrite; the current page runs 2 + 1 so that
the docs build quickly, while its text still says "After 10 epochs,
fine-tuning gains us a nice improvement"). Pass `--recipe-head-epochs 2
--recipe-fine-tune-epochs 1` for the page's literal counts.

The split: the package's loader lists the files, drops the undecodable ones
and draws a stratified split (val_split 0.2, seed 0). Here the same listing
(`data.list_class_folders`; for Oxford pets the loader's own listing steps)
minus the files its report skipped goes through `data.stratified_split`; the
result must match the loaded `ImageData`: the class names, the per-class
counts of its report, and every image of each split, matched one to one to a
file of the same split by its decoded pixels and label (whatever order the
loader keeps them in). It is then materialized as train/ and val/
trees of class folders of symlinks to the original files, which
`image_dataset_from_directory` reads (with `class_names` in the package's
label order); the files and labels it indexes must equal the split's.
`--max-images N` keeps the first N images of each split (in the loader's order), the classes taken in
turn (the first image of every class, then the second, ...), on both sides
(ours still decodes the whole folder: its loader has no such option).

Printed: each side's epochs (configured and run), wall time, validation
accuracy after phase 1 and at the end, and the wall-time ratio recipe / ours.

    python benchmarks/bench_recipe.py [--task pets|cats_vs_dogs] [--order ours-first|recipe-first]
        [--recipe-head-epochs 20] [--recipe-fine-tune-epochs 10] [--recipe-unfreeze all|top-third]
        [--our-args KEY=VALUE ...] [--max-images N] [--output FILE]

Smoke test (tiny, a few minutes on 2 cores):

    python benchmarks/bench_recipe.py --task cats_vs_dogs --max-images 40 --recipe-head-epochs 1 \\
        --recipe-fine-tune-epochs 1 --our-args epochs=2 fine_tune_epochs=1
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import hashlib
import json
import os
import time

import _common

_common.setup_keras_home()

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_transfer import data as data_lib  # noqa: E402
from keras_transfer import settings as settings_lib  # noqa: E402
from keras_transfer import training  # noqa: E402
from keras_transfer.experiments import _common as commands  # noqa: E402
from keras_transfer.experiments import cats_vs_dogs, pets  # noqa: E402

IMAGE_SIZE = 224
BATCH_SIZE = 32
# keras.io's guide as written for its result (see the docstring).
GUIDE_HEAD_EPOCHS = 20
GUIDE_FINE_TUNE_EPOCHS = 10
TASKS = {
    "pets": (pets.COMMAND, ("oxford_pets",)),
    "cats_vs_dogs": (cats_vs_dogs.COMMAND, ("cats_vs_dogs", "train")),
}
SPLITS = ("train", "val")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")

LINES: list[str] = []


def say(line: str = "") -> None:
    """Prints a line of the benchmark's report (and keeps it for --output)."""
    print(line, flush=True)
    LINES.append(line)


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


# ---------------------------------------------------------------------------
# The main job's configuration, as its command line makes it.


def override_flags(items: list[str]) -> list[str]:
    """`KEY=VALUE` TrainConfig overrides as the command's flags."""
    fields = {field.name: (field, spec) for field, spec in settings_lib.specs(training.TrainConfig)}
    argv = []
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in fields:
            raise SystemExit(f"--our-args: expected KEY=VALUE with KEY a TrainConfig field "
                             f"({', '.join(fields)}). Received: {item!r}")
        field, spec = fields[key]
        flag = settings_lib.flag_name(field, spec)
        if isinstance(spec.kind, settings_lib.Flag):
            if value.strip().lower() not in _TRUE + _FALSE:
                raise SystemExit(f"--our-args: {key} takes true or false. Received: {item!r}")
            argv.append(flag if value.strip().lower() in _TRUE else "--no-" + flag[2:])
        else:
            argv += [flag, value]
    return argv


def our_config(task: str, output_dir: str, overrides: list[str]) -> commands.ExperimentConfig:
    """The `ExperimentConfig` the task's command line makes (its parser, its defaults)."""
    command, data_parts = TASKS[task]
    argv = ["--data-dir", _common.shared_path(*data_parts), "--output-dir", output_dir, *override_flags(overrides)]
    config = command.config_from_args(command.build_parser().parse_args(argv))
    train = config.train
    expect(train.backbone == "mobilenet_v2" and train.alpha in (None, 1.0) and train.weights == "imagenet"
           and config.image_size == IMAGE_SIZE,
           "The recipe side is MobileNetV2 1.0 at 224 px with ImageNet weights; --our-args must keep "
           f"backbone, alpha, weights and image size. Received: {train.backbone}, alpha={train.alpha}, "
           f"weights={train.weights}, image_size={config.image_size}")
    expect(config.data.val_split > 0, "Both sides are scored on the validation split: val_split must be > 0.")
    return config


# ---------------------------------------------------------------------------
# The split: reconstructed from the loader's listing, checked against ImageData.


@dataclasses.dataclass
class Split:
    """The files and labels of each split, in the order of the loader's datasets."""

    class_names: tuple[str, ...]
    files: dict[str, list[str]]
    labels: dict[str, np.ndarray]

    def subset(self, positions: dict[str, np.ndarray]) -> "Split":
        return Split(self.class_names, {n: [self.files[n][i] for i in positions[n]] for n in SPLITS},
                     {n: self.labels[n][positions[n]] for n in SPLITS})

    def per_class(self) -> dict[str, dict[str, int]]:
        return {c: {n: int(np.sum(self.labels[n] == i)) for n in SPLITS} for i, c in enumerate(self.class_names)}


def listed_files(task: str, root: str, target: str) -> tuple[list[str], list[str], list[int]]:
    """`(class_names, paths, labels)` of the train/validation pool, listed as the task's loader lists it."""
    if task == "cats_vs_dogs":
        class_names, paths, labels, _ = data_lib.list_class_folders(root)
        return class_names, paths, labels
    # The steps of data._load_oxford_folder (the loader has no public listing of its files).
    notes = os.path.join(root, "annotations")
    lists = {name: data_lib._read_annotations(os.path.join(notes, f"{name}.txt"))
             for name in ("list", "trainval", "test") if os.path.isfile(os.path.join(notes, f"{name}.txt"))}
    candidates, ignored = data_lib._oxford_candidates(os.path.join(root, "images"))
    groups = data_lib._oxford_groups(candidates, lists, ignored)
    class_names, label_of = data_lib._oxford_labels(groups["trainval"] + groups["test"], lists, target)
    return class_names, [path for _, _, path in groups["trainval"]], [label_of[s] for s, _, _ in groups["trainval"]]


def matched_split(task: str, config: commands.ExperimentConfig, data: data_lib.ImageData) -> Split:
    """The loader's split as files, checked against the loaded `data` (AssertionError when they differ).

    The files come from the loader's listing, minus the files its report
    skipped, split by `data.stratified_split`; each example of `data.train`
    and `data.val` is then matched to one of them by its decoded pixels (the
    same decoding, byte for byte) and label, so the files are returned in the
    order of the loader's datasets, whatever order that is.
    """
    root = os.path.abspath(config.data.data_dir)
    class_names, paths, labels = listed_files(task, root, config.data.target)
    report = data.report
    expect(tuple(class_names) == tuple(data.class_names),
           f"class names differ: listed {class_names}, loaded {data.class_names}")
    expect(report.skipped == len(report.skipped_files), "the report lists only part of the skipped files")
    skipped = {os.path.join(root, name) for name in report.skipped_files}
    kept = [i for i, path in enumerate(paths) if path not in skipped]
    pool_labels = np.asarray([labels[i] for i in kept], np.int64)
    at = dict(zip(SPLITS, data_lib.stratified_split(pool_labels, val_split=config.data.val_split,
                                                    seed=config.train.seed)))
    files, split_labels = {}, {}
    for name, ds in (("train", data.train), ("val", data.val)):
        listed = [paths[kept[i]] for i in at[name]]
        order = dataset_order(ds, listed, pool_labels[at[name]], image_size=data.image_size,
                              resize=config.data.resize, name=name)
        files[name], split_labels[name] = [listed[i] for i in order], pool_labels[at[name]][order]
    split = Split(tuple(class_names), files, split_labels)
    expect(split.per_class() == {c: {n: report.per_class[c][n] for n in SPLITS} for c in class_names},
           "per-class counts of the matched split differ from the loader's report")
    return split


def dataset_order(ds: tf.data.Dataset, files: list[str], labels: np.ndarray, *, image_size: int, resize: str,
                  name: str) -> list[int]:
    """The index into `files` of each example of `ds`, matched by decoded pixels and label (a bijection)."""
    by_pixels: dict[str, list[int]] = {}
    decoded = data_lib.decoded_images(files, image_size=image_size, resize=resize)
    for index, image in decoded.as_numpy_iterator():
        by_pixels.setdefault(hashlib.sha1(image.tobytes()).hexdigest(), []).append(int(index))
    order = []
    for image, label in ds.as_numpy_iterator():
        matches = by_pixels.get(hashlib.sha1(image.tobytes()).hexdigest(), [])
        expect(bool(matches), f"example {len(order)} of the loader's {name} split matches no file of the "
                              f"reconstructed {name} split")
        index = matches.pop(0)
        expect(int(labels[index]) == int(label), f"{files[index]}: label {labels[index]} in the reconstructed "
                                                 f"{name} split, {label} in the loader's")
        order.append(index)
    expect(len(order) == len(files), f"the loader's {name} split has {len(order)} images, the reconstructed "
                                     f"one {len(files)}")
    return order


def first_per_class(labels: np.ndarray, n: int | None) -> np.ndarray:
    """Positions of the first `n` examples, the classes taken in turn, in their original order."""
    if n is None or n >= len(labels):
        return np.arange(len(labels))
    rank = np.zeros(len(labels), np.int64)
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        rank[members] = np.arange(len(members))
    return np.sort(np.lexsort((np.arange(len(labels)), rank))[:n])


def take_positions(ds: tf.data.Dataset, positions: np.ndarray) -> tf.data.Dataset:
    keep = np.zeros(len(ds), bool)
    keep[positions] = True
    keep_t = tf.constant(keep)

    def kept(i, example):
        return tf.gather(keep_t, i)

    def example_of(i, example):
        return example

    ds = ds.enumerate().filter(kept).map(example_of)
    return ds.apply(tf.data.experimental.assert_cardinality(len(positions)))


# ---------------------------------------------------------------------------
# Ours: the training command, in-process.


def run_ours(task: str, config: commands.ExperimentConfig, expected: data_lib.DataReport,
             positions: dict[str, np.ndarray] | None, split: Split) -> dict:
    command = TASKS[task][0]

    def load(cfg: commands.ExperimentConfig) -> data_lib.ImageData:
        data = command.load(cfg)
        expect((data.report.used, data.report.per_class, data.report.skipped_files)
               == (expected.used, expected.per_class, expected.skipped_files),
               "the main job loaded another split than the one checked")
        if positions is None:
            return data
        used = {**data.report.used, **{n: len(positions[n]) for n in SPLITS}}
        per_class = {c: {**data.report.per_class[c], **counts} for c, counts in split.per_class().items()}
        return dataclasses.replace(data, train=take_positions(data.train, positions["train"]),
                                   val=take_positions(data.val, positions["val"]),
                                   report=dataclasses.replace(data.report, used=used, per_class=per_class))

    keras.backend.clear_session()
    gc.collect()
    with _common.Timer() as timer:
        commands.run_experiment(config, load)
    with open(os.path.join(config.output_dir, "metrics.json")) as f:
        metrics = json.load(f)
    head, fine = (metrics["phases"].get(p, {}) for p in ("head", "fine_tune"))
    return {
        "seconds": timer.seconds,
        "train_seconds": metrics["wall_time_s"],
        "phase_seconds": (head.get("wall_time_s", 0.0), fine.get("wall_time_s", 0.0)),
        "epochs": (head.get("epochs_done", 0), fine.get("epochs_done", 0)),
        "ended_on": fine.get("ended_on_epoch", "last"),  # an epoch of the run's axis, None: the head's weights
        "phase1_accuracy": head.get("final", {}).get("val", {}).get("accuracy"),
        "accuracy": metrics["final"]["val"]["accuracy"],
        "val_images": metrics["data"]["used"]["val"],
    }


# ---------------------------------------------------------------------------
# The recipe.


def link_tree(root: str, files: list[str], labels: np.ndarray, class_names: tuple[str, ...]) -> str:
    """root/<class>/<file name> -> the original file; returns root."""
    for name in class_names:
        os.makedirs(os.path.join(root, name))
    for number, (path, label) in enumerate(zip(files, labels)):
        link = os.path.join(root, class_names[int(label)], os.path.basename(path))
        if os.path.lexists(link):  # same name in two subfolders of a class folder
            link = os.path.join(os.path.dirname(link), f"{number}_{os.path.basename(path)}")
        os.symlink(path, link)
    return root


def check_recipe_files(ds: tf.data.Dataset, split: Split, name: str) -> None:
    """The files and labels `image_dataset_from_directory` indexed are those of the split."""
    index = {c: i for i, c in enumerate(split.class_names)}
    got = sorted((os.path.realpath(p), index[os.path.basename(os.path.dirname(p))]) for p in ds.file_paths)
    want = sorted((os.path.realpath(p), int(label)) for p, label in zip(split.files[name], split.labels[name]))
    expect(got == want, f"the recipe's {name} files/labels differ from the split's ({len(got)} vs {len(want)})")


def recipe_model(num_classes: int) -> tuple[keras.Model, keras.Model]:
    """keras.io's model on MobileNetV2: `(model, base)`, the base frozen."""
    base = keras.applications.MobileNetV2(include_top=False, weights="imagenet",
                                          input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3))
    base.trainable = False
    augmentation = keras.Sequential([keras.layers.RandomFlip("horizontal"), keras.layers.RandomRotation(0.1)],
                                    name="data_augmentation")
    inputs = keras.Input(shape=(IMAGE_SIZE, IMAGE_SIZE, 3))
    x = augmentation(inputs)
    x = keras.applications.mobilenet_v2.preprocess_input(x)
    x = base(x, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.2)(x)
    outputs = keras.layers.Dense(num_classes)(x)
    return keras.Model(inputs, outputs), base


def compile_recipe(model: keras.Model, optimizer: keras.optimizers.Optimizer) -> None:
    model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])


def unfreeze(base: keras.Model, how: str) -> None:
    base.trainable = True
    if how == "top-third":  # as our phase 2 by default: the top third of the layers, BatchNormalization frozen
        start = len(base.layers) - max(1, len(base.layers) // 3)
        for index, layer in enumerate(base.layers):
            layer.trainable = index >= start and not isinstance(layer, keras.layers.BatchNormalization)


def run_recipe(trees: dict[str, str], split: Split, *, head_epochs: int, fine_tune_epochs: int, how: str,
               seed: int) -> dict:
    keras.backend.clear_session()
    gc.collect()
    keras.utils.set_random_seed(seed)
    start = time.perf_counter()
    datasets = {
        name: keras.utils.image_dataset_from_directory(
            trees[name], labels="inferred", label_mode="int", class_names=list(split.class_names),
            image_size=(IMAGE_SIZE, IMAGE_SIZE), batch_size=BATCH_SIZE, shuffle=name == "train", seed=seed)
        for name in SPLITS
    }
    seconds = time.perf_counter() - start
    for name in SPLITS:
        check_recipe_files(datasets[name], split, name)
    train_ds, val_ds = datasets["train"], datasets["val"]
    start = time.perf_counter()
    model, base = recipe_model(len(split.class_names))
    compile_recipe(model, keras.optimizers.Adam())
    if head_epochs:
        model.fit(train_ds, epochs=head_epochs, validation_data=val_ds)
    head_seconds = time.perf_counter() - start
    phase1_accuracy = model.evaluate(val_ds, verbose=0, return_dict=True)["accuracy"]
    fine_seconds, accuracy = 0.0, phase1_accuracy
    if fine_tune_epochs:
        start = time.perf_counter()
        unfreeze(base, how)
        compile_recipe(model, keras.optimizers.Adam(1e-5))
        model.fit(train_ds, epochs=fine_tune_epochs, validation_data=val_ds)
        fine_seconds = time.perf_counter() - start
        accuracy = model.evaluate(val_ds, verbose=0, return_dict=True)["accuracy"]
    return {
        "seconds": seconds + head_seconds + fine_seconds,
        "phase_seconds": (seconds + head_seconds, fine_seconds),
        "epochs": (head_epochs, fine_tune_epochs),
        "phase1_accuracy": phase1_accuracy,
        "accuracy": accuracy,
    }


# ---------------------------------------------------------------------------
# The run.


def describe(args, config: commands.ExperimentConfig, split: Split, report: data_lib.DataReport) -> None:
    train = config.train
    say(f"Task {args.task}: {len(split.class_names)} classes, train {len(split.files['train'])} / "
        f"val {len(split.files['val'])} images (val_split {config.data.val_split}, seed {train.seed}"
        + (f", first {args.max_images} per split" if args.max_images else "") + "), the same files and labels "
        f"on both sides (checked). MobileNetV2 1.0, 224 px, ImageNet weights. Our image cache: {report.cache}.")
    say(f"ours:   the {args.task} command's defaults" + (f" with {' '.join(args.our_args)}" if args.our_args else "")
        + f": phase 1 {train.epochs} epochs "
        + ("on cached features" + (" (+ mirrored)" if train.flip_views else "") if train.cache_features
           else "on the frozen backbone")
        + f", lr {train.learning_rate:g}; phase 2 up to {train.fine_tune_epochs} epochs, lr "
        f"{train.fine_tune_learning_rate:g} ({train.fine_tune_schedule}, warmup {train.warmup_epochs}), EMA "
        f"{train.ema_momentum:g}, " + ("on the cached bottom" if train.cache_bottom else "on images")
        + f", fine_tune_at {train.fine_tune_at or 'top third'}, "
        f"early stopping patience {train.early_stopping_patience}; batch {train.batch_size}.")
    say(f"recipe: keras.io guide: phase 1 {args.recipe_head_epochs} epochs, Adam 1e-3; phase 2 "
        f"{args.recipe_fine_tune_epochs} epochs, Adam 1e-5, {args.recipe_unfreeze} of the base trainable; "
        f"batch {BATCH_SIZE}; flip + rotation 0.1 augmentation, Dropout 0.2.")


def ending(ours: dict) -> str:
    """What our phase 2 ended on (metrics.json numbers its epochs after phase 1's)."""
    head, fine = ours["epochs"]
    if not fine:
        return "no phase 2"
    if ours["ended_on"] is None:
        return "phase 2 ended on the head's weights: no epoch beat them"
    if ours["ended_on"] == "last":
        return "phase 2 ended on its last epoch"
    return f"phase 2 ended on its best epoch, {ours['ended_on'] - head + 1}"


def summary(args, results: dict[str, dict]) -> None:
    ours, recipe = results["ours"], results["recipe"]
    say()
    say(f"{'side':<7} {'epochs (head + fine-tune)':<27} {'wall time s':>11} {'val acc phase 1':>16} "
        f"{'val acc end':>12}")
    for name, result in (("ours", ours), ("recipe", recipe)):
        head, fine = result["epochs"]
        phase1 = "-" if result["phase1_accuracy"] is None else f"{result['phase1_accuracy']:.4f}"
        say(f"{name:<7} {f'{head} + {fine}':<27} {result['seconds']:>11.1f} {phase1:>16} "
            f"{result['accuracy']:>12.4f}")
    say()
    say(f"ours ran {ours['epochs'][0]} + {ours['epochs'][1]} epochs ({ending(ours)}); phases "
        f"{ours['phase_seconds'][0]:.1f} s + {ours['phase_seconds'][1]:.1f} s; train() {ours['train_seconds']:.1f} s "
        f"of the command's {ours['seconds']:.1f} s (the rest: loading and decoding, the weights check, plots).")
    say(f"recipe ran {recipe['epochs'][0]} + {recipe['epochs'][1]} epochs; data + model + phase 1 "
        f"{recipe['phase_seconds'][0]:.1f} s, phase 2 {recipe['phase_seconds'][1]:.1f} s.")
    say(f"wall time ratio recipe / ours: {recipe['seconds'] / ours['seconds']:.2f}x; val accuracy end "
        f"ours - recipe: {ours['accuracy'] - recipe['accuracy']:+.4f} ({ours['val_images']} validation images)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=tuple(TASKS), default="pets")
    parser.add_argument("--order", choices=("ours-first", "recipe-first"), default="ours-first")
    parser.add_argument("--recipe-head-epochs", type=int, default=GUIDE_HEAD_EPOCHS)
    parser.add_argument("--recipe-fine-tune-epochs", type=int, default=GUIDE_FINE_TUNE_EPOCHS)
    parser.add_argument("--recipe-unfreeze", choices=("all", "top-third"), default="all",
                        help="phase 2 of the recipe: the whole base (keras.io) or our phase 2's layers")
    parser.add_argument("--our-args", nargs="*", default=[], metavar="KEY=VALUE",
                        help="TrainConfig overrides of our side, e.g. fine_tune_epochs=0 epochs=20")
    parser.add_argument("--max-images", type=int, default=None, metavar="N",
                        help="keep the first N images of each split, classes in turn (smoke tests)")
    parser.add_argument("--output", metavar="FILE", help="also write the printed report to FILE, at the end")
    args = parser.parse_args()
    if min(args.recipe_head_epochs, args.recipe_fine_tune_epochs) < 0 or (args.max_images or 1) < 1:
        parser.error("epoch counts must be >= 0 and --max-images >= 1")

    work = _common.temp_dir("bench_recipe_")
    config = our_config(args.task, os.path.join(work, "ours"), args.our_args)
    data = TASKS[args.task][0].load(config)  # to match the split; the timed run loads again
    split = matched_split(args.task, config, data)
    report = data.report
    del data
    positions = None
    if args.max_images:
        positions = {n: first_per_class(split.labels[n], args.max_images) for n in SPLITS}
        split = split.subset(positions)
    trees = {n: link_tree(os.path.join(work, "recipe", n), split.files[n], split.labels[n], split.class_names)
             for n in SPLITS}
    describe(args, config, split, report)
    sides = {
        "ours": lambda: run_ours(args.task, config, report, positions, split),
        "recipe": lambda: run_recipe(trees, split, head_epochs=args.recipe_head_epochs,
                                     fine_tune_epochs=args.recipe_fine_tune_epochs, how=args.recipe_unfreeze,
                                     seed=config.train.seed),
    }
    order = ("ours", "recipe") if args.order == "ours-first" else ("recipe", "ours")
    results = {name: sides[name]() for name in order}
    summary(args, results)
    if args.output:
        with open(args.output, "w") as f:
            f.write("\n".join(LINES) + "\n")


if __name__ == "__main__":
    main()
