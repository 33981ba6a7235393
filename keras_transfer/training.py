"""Two-phase transfer learning on Keras' own engine: the orchestration.

Phase 1 ("head") trains the classifier's head on a frozen backbone. By
default it takes the fast path of keras.io's transfer-learning guide: the
backbone's pooled features are computed once and the head (the classifier's
own standardization, `dropout` and `logits` layers) is fitted on them. Phase 2
("fine_tune") unfreezes the top of the backbone and fits the whole classifier
at a lower learning rate. Both phases share one epoch axis and one loop
(`keras_transfer.phases.run_phase`); the run folder
(`keras_transfer.run_folder`) holds everything `output_dir` means, so running
`train` again with the same `output_dir` continues from the last completed
epoch, and a finished run is loaded, never rewritten.

The data flow one way: config -> data -> model -> phases -> evaluation
(`keras_transfer.evaluation`) -> outputs.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from functools import cached_property
from collections.abc import Mapping, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from keras_transfer import _multi_worker
from keras_transfer import adversarial as adversarial_lib
from keras_transfer import adversarial_training
from keras_transfer import backbones as backbones_lib
from keras_transfer import calibration as calibration_lib
from keras_transfer import data as data_lib
from keras_transfer import engine
from keras_transfer import evaluation as eval_lib
from keras_transfer import mixing
from keras_transfer import models as models_lib
from keras_transfer import monitoring, phases
from keras_transfer import probe as probe_lib
from keras_transfer.errors import CorruptFileError, ResumeMismatchError
from keras_transfer.evaluation import Evaluation
from keras_transfer.files import jsonable
from keras_transfer.layers import build_augmentation
from keras_transfer.row_files import RowFile
from keras_transfer.run_folder import NoRunFolder, RunFolder, folder_lock
from keras_transfer.settings import Choice, Either, Flag, Int, Optional, Path, Real, Text, setting
from keras_transfer import settings as settings_lib

# Re-exported: the names the package's users and tests know from here.
MIXED_PRECISION_CHOICES = engine.MIXED_PRECISION_CHOICES
STRATEGY_CHOICES = engine.STRATEGY_CHOICES
resolve_mixed_precision = engine.resolve_mixed_precision
make_strategy = engine.make_strategy
is_chief = engine.is_chief
confusion_matrix = eval_lib.confusion_matrix
per_class_accuracy = eval_lib.per_class_accuracy
labels_of = eval_lib.labels_of
grid_indices = eval_lib.grid_indices
images_at = eval_lib.images_at

PHASES = ("head", "fine_tune")
DEFAULT_CACHED_HEAD_EPOCHS = 100
DEFAULT_HEAD_EPOCHS = 10

_WEIGHTS = Optional(Either((Choice(("imagenet",)), Path())), none_word="none")
_FINE_TUNE_AT = Optional(Either((Int(), Text()), metavar="{INDEX,-N,LAYER,all}"))


@dataclasses.dataclass
class TrainConfig:
    """Hyper-parameters of a two-phase training run.

    Every field is a setting declared once (`keras_transfer.settings`): its
    default, its help (also the command-line flag's), its validation. The
    first group changes the trained model and is part of a run's resume
    fingerprint; the second only changes how the run executes or reports.
    """

    # --- What is trained (fingerprinted: a run resumes only with the same values).
    backbone: str = setting("mobilenet_v2", kind=Text(), group="model",
                            help="Keras Applications backbone (see keras_transfer.available_backbones())")
    alpha: float | None = setting(None, kind=Optional(Real(min=0, min_open=True)), group="model",
                                  help="width multiplier of the MobileNet families (default: the family's)")
    weights: str | None = setting("imagenet", kind=_WEIGHTS, group="model", metavar="{imagenet,none,PATH}",
                                  help="'imagenet', 'none' (random initialization) or a backbone weights file")
    pooling: str = setting("avg", kind=Choice(("avg", "max")), group="model", help="global pooling")
    dropout: float = setting(0.0, kind=Real(min=0, max=1, max_open=True), group="model",
                             help="dropout rate before the logits (the head is regularized by --head-l2)")
    standardize_features: bool = setting(True, kind=Flag(), group="model",
                                         help="standardize pooled features with training-set statistics "
                                              "(a layer of the model)")
    head_l2: float = setting(1.0, kind=Real(min=0), group="model",
                             help="L2 penalty of the logits kernel on scikit-learn's 1/C scale: the loss gets "
                                  "head_l2 * ||W||^2 / (2 * n_train); 0 disables it")
    augment: bool = setting(True, kind=Flag(), group="model",
                            help="random flip, rotation, zoom and contrast while training (a cached head gets "
                                 "only the flip, see --flip-features)")
    flip_features: bool = setting(True, kind=Flag(), group="model",
                                  help="with --cache-features and --augment: phase 1 also trains on the features "
                                       "of the mirrored training images (one more extraction pass)")
    batch_size: int = setting(32, kind=Int(min=1), group="training",
                              help="global batch size (split across replicas)")
    epochs: int | None = setting(None, kind=Optional(Int(min=0)), group="training",
                                 help=f"epochs of phase 1, the head on the frozen backbone (default: "
                                      f"{DEFAULT_CACHED_HEAD_EPOCHS} on cached features, where an epoch is "
                                      f"cheap; {DEFAULT_HEAD_EPOCHS} with --no-cache-features)")
    fine_tune_epochs: int = setting(10, kind=Int(min=0), group="training",
                                    help="epochs of phase 2, fine-tuning the top of the backbone (0: skip)")
    fine_tune_at: int | str | None = setting(None, kind=_FINE_TUNE_AT, group="training",
                                             help="first trainable backbone layer in phase 2: an index, -N for "
                                                  "the top N layers, a layer name or 'all' (default: the top "
                                                  "third of the backbone's layers)")
    learning_rate: float = setting(1e-3, kind=Real(min=0, min_open=True), group="training",
                                   help="Adam learning rate of phase 1")
    label_smoothing: float = setting(0.0, kind=Real(min=0, max=1, max_open=True), group="training",
                                     help="label smoothing of the cross-entropy in both phases (0: none, the default: "
                                          "not measured on the shared photos)")
    fine_tune_learning_rate: float = setting(3e-4, kind=Real(min=0, min_open=True), group="training",
                                             help="Adam learning rate of phase 2, reached after --warmup-epochs "
                                                  "(chosen in experiments/beyond_probe: keras.io's 1e-5 left the "
                                                  "head's accuracy unchanged)")
    fine_tune_schedule: str = setting("cosine", kind=Choice(phases.SCHEDULES), group="training",
                                      help="learning rate of phase 2 over its steps: cosine decay to 0 at its last "
                                           "epoch (after --warmup-epochs), or constant")
    warmup_epochs: int = setting(1, kind=Int(min=0), group="training",
                                 help="phase 2 starts with this many epochs of linear warmup from 0")
    weight_decay: float = setting(0.0, kind=Real(min=0), group="training",
                                  help="decoupled weight decay of phase 2 (AdamW; 0: Adam, the default: 0.05 "
                                       "bought nothing on five pets splits, see experiments/beyond_probe)")
    lowest_layer_rate: float = setting(1.0, kind=Real(min=0, max=1, min_open=True), group="training",
                                       help="discriminative fine-tuning: phase 2's learning rate of its lowest "
                                            "trainable backbone layer, as a fraction of the top's; the layers "
                                            "between get geometrically spaced fractions and the head the full "
                                            "rate (Howard & Ruder 2018; 1: one rate, the default: 0.1 bought "
                                            "nothing on five pets splits, see experiments/beyond_probe)")
    ema_momentum: float = setting(0.99, kind=Real(min=0, max=1, max_open=True), group="training",
                                  help="phase 2 keeps an exponential moving average of its weights with this "
                                       "momentum per step (Polyak averaging, Keras' use_ema), validates and ends on "
                                       "the averaged weights (0: off)")
    cache_bottom: bool | None = setting(None, kind=Optional(Flag()), group="training",
                                        help="phase 2 computes the frozen bottom of the backbone (below "
                                             "--fine-tune-at) once for each training image and its mirror image, "
                                             "and trains the top on them: an epoch costs what the trainable part "
                                             "costs, and its augmentation is only the flip. The bottom's outputs (e.g. "
                                             "75 KB a view for MobileNetV2's default top third at 224 px) go to "
                                             "files in the run folder, read a batch at a time, so memory does not "
                                             "grow with the data (without a run folder: in memory, within the "
                                             "memory budget); a resumed run reads them back. Default: on, unless "
                                             "phase 2 attacks or mixes its images, which needs the images")
    train_batchnorm: bool = setting(False, kind=Flag(), group="training",
                                    help="also train BatchNormalization scale and offset in phase 2 (their "
                                         "moving statistics never change)")
    cache_features: bool = setting(True, kind=Flag(), group="training",
                                   help="phase 1 on backbone features computed once (fast; its only "
                                        "augmentation is then --flip-features)")
    early_stopping_patience: int = setting(3, kind=Int(min=0), group="training", flag="--early-stopping",
                                           metavar="PATIENCE",
                                           help="a phase that runs the backbone on images (fine-tuning, or the "
                                                "head with --no-cache-features) stops after PATIENCE epochs "
                                                "without a lower validation loss and ends on its best epoch; "
                                                "fine-tuning ends on the head's weights if it never beats them "
                                                "(0: run every epoch; a cached head, whose epochs cost "
                                                "milliseconds, always does)")
    adversarial_eps: float = setting(0.0, kind=Real(min=0), group="training",
                                     help="adversarial fine-tuning: phase 2 also trains on its batches attacked "
                                          "within this radius, in grey levels of the [0, 255] pixels (0: off; see "
                                          "keras_transfer.adversarial_training). Phase 2 then stops early on the "
                                          "validation loss under that attack")
    adversarial_norm: str = adversarial_training.config_setting("norm", group="training")
    adversarial_steps: int = adversarial_training.config_setting("steps", group="training")
    adversarial_weight: float = adversarial_training.config_setting("weight", group="training")
    mixup_alpha: float = mixing.config_setting("mixup_alpha", group="training")
    cutmix_alpha: float = mixing.config_setting("cutmix_alpha", group="training")
    mix_switch_prob: float = mixing.config_setting("switch_prob", group="training")
    calibrate: bool = setting(False, kind=Flag(), group="model",
                              help="after training, fit a temperature T on the validation split and divide the "
                                   "logits layer's kernel and bias by it, so the saved model's softmax is "
                                   "calibrated (Guo et al. 2017; the predicted classes do not change)")
    mixed_precision: str = setting("off", kind=Choice(engine.MIXED_PRECISION_CHOICES), group="engine",
                                   help="auto: mixed_float16 on GPU, mixed_bfloat16 on CPU; logits stay float32")
    seed: int = setting(0, kind=Int(min=0, max=2**32 - 1), group="training",
                        help="seed of the validation split, initialization, shuffling and augmentation")

    # --- How it runs and reports (not fingerprinted: may change when resuming).
    linear_probe: bool = setting(False, kind=Flag(), fingerprint=False, group="training",
                                 help="also fit a scikit-learn logistic regression on the same frozen features "
                                      "and split (a reference accuracy in metrics.json; needs scikit-learn)")
    jit_compile: bool = setting(False, kind=Flag(), fingerprint=False, group="engine",
                                help="compile the training step with XLA")
    strategy: str = setting("default", kind=Choice(engine.STRATEGY_CHOICES), fingerprint=False, group="engine",
                            help="default: one device; mirrored: all local GPUs (or logical CPUs); "
                                 "multi_worker: MultiWorkerMirroredStrategy configured by TF_CONFIG")
    tensorboard_images_every: int | None = setting(None, kind=Optional(Int(min=0)), fingerprint=False,
                                                   group="output", metavar="N",
                                                   help="TensorBoard confusion matrix and prediction grid every N "
                                                        "epochs (0: never; default: 3 times per phase, its last "
                                                        "epoch included). A phase that runs the backbone on "
                                                        "images draws them from 256 validation images")
    flip_test: bool = setting(False, kind=Flag(), fingerprint=False, group="output",
                              help="also report the final accuracy with test-time flip averaging (the mean of the "
                                   "logits of each image and of its mirror image) in metrics.json's "
                                   "final_flip_averaged; costs one more pass over each split. Worth +0.6 points "
                                   "on five pets splits, none on cats vs dogs (experiments/beyond_probe); the saved "
                                   "model does not average")
    top_k: int = setting(3, kind=Int(min=1), fingerprint=False, group="output", metavar="K",
                         help="also report top-K accuracy (per epoch and at the end) when there are more than "
                              "K classes")
    verbose: int = setting(1, kind=Int(min=0, max=2), fingerprint=False, group="output",
                           help="0: quiet, 1: progress bar, 2: one line per epoch")

    def __post_init__(self):
        settings_lib.validate(self)
        backbones_lib.get_backbone_spec(self.backbone)
        self.weights = backbones_lib.check_weights(self.weights)
        if self.epochs is None:
            self.epochs = DEFAULT_CACHED_HEAD_EPOCHS if self.cache_features else DEFAULT_HEAD_EPOCHS
        if self.epochs + self.fine_tune_epochs == 0:
            raise ValueError("Expected epochs + fine_tune_epochs > 0. Received: epochs=0, fine_tune_epochs=0")
        if self.adversarial_eps and not self.fine_tune_epochs:
            raise ValueError("adversarial_eps trains phase 2 adversarially; it needs fine_tune_epochs > 0. "
                             f"Received: adversarial_eps={self.adversarial_eps}, fine_tune_epochs=0")
        adversarial_lib.check_radius("adversarial_eps", self.adversarial_eps, self.adversarial_norm)
        mixed = self.mixup_alpha or self.cutmix_alpha
        if self.cache_bottom is None:
            self.cache_bottom = not (self.adversarial_eps or mixed)
        if self.cache_bottom and self.adversarial_eps:
            raise ValueError("cache_bottom trains on the bottom's outputs, which an attack on the pixels cannot "
                             f"change. Received: cache_bottom=True, adversarial_eps={self.adversarial_eps}")
        if mixed and not self.fine_tune_epochs:
            raise ValueError("mixup_alpha and cutmix_alpha mix phase 2's batches; they need fine_tune_epochs > 0. "
                             f"Received: mixup_alpha={self.mixup_alpha}, cutmix_alpha={self.cutmix_alpha}, "
                             "fine_tune_epochs=0")
        if mixed and (self.adversarial_eps or self.cache_bottom):
            raise ValueError("mixup/CutMix mix images; they combine neither with adversarial fine-tuning nor with "
                             f"cache_bottom. Received: mixup_alpha={self.mixup_alpha}, cutmix_alpha="
                             f"{self.cutmix_alpha}, adversarial_eps={self.adversarial_eps}, "
                             f"cache_bottom={self.cache_bottom}")

    @property
    def training_attack(self) -> adversarial_training.AdversarialTraining | None:
        """Phase 2's training attack, or `None` without `adversarial_eps`."""
        if not self.adversarial_eps:
            return None
        return adversarial_training.AdversarialTraining(eps=self.adversarial_eps, norm=self.adversarial_norm,
                                                        steps=self.adversarial_steps, weight=self.adversarial_weight,
                                                        seed=self.seed)

    @property
    def sample_mixing(self) -> mixing.MixedSamples | None:
        """Phase 2's batch mixing, or `None` when both alphas are 0."""
        if not (self.mixup_alpha or self.cutmix_alpha):
            return None
        return mixing.MixedSamples(mixup_alpha=self.mixup_alpha, cutmix_alpha=self.cutmix_alpha,
                                   switch_prob=self.mix_switch_prob, seed=self.seed)

    @property
    def flip_views(self) -> bool:
        """Whether the cached head also trains on mirrored images."""
        return self.cache_features and self.flip_features and self.augment

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def fingerprint(self) -> dict[str, Any]:
        return settings_lib.fingerprinted(self)


@dataclasses.dataclass
class TrainResult:
    """What `train` returns.

    Attributes:
        model: the trained classifier (RGB [0, 255] -> float32 logits).
        class_names: the class names, in label order.
        history: `{phase: {"epoch": [...], "loss": [...], "accuracy": [...],
            "val_loss": [...], "val_accuracy": [...], "learning_rate": [...]}}`
            with 0-based epochs on one axis for both phases.
        fine_tune_start: the first epoch of phase 2, or `None` without it.
        metrics: the content of `metrics.json`.
        evaluation: the final validation `Evaluation` (logits, labels,
            confusion matrix, a few images), or `None` without validation.
        output_dir: the folder written, or `None`.
        loaded_finished_run: the run was already complete in `output_dir`:
            its model and metrics were loaded, nothing was written.
    """

    model: keras.Model
    class_names: tuple[str, ...]
    history: dict[str, dict[str, list[float]]]
    fine_tune_start: int | None
    metrics: dict[str, Any]
    evaluation: Evaluation | None = None
    output_dir: str | None = None
    loaded_finished_run: bool = False

    @property
    def confusion(self) -> np.ndarray | None:
        return None if self.evaluation is None else self.evaluation.confusion

    @property
    def val_labels(self) -> np.ndarray | None:
        return None if self.evaluation is None else self.evaluation.labels

    @property
    def val_predictions(self) -> np.ndarray | None:
        return None if self.evaluation is None else self.evaluation.predictions


# ---------------------------------------------------------------------------
# Checks that need no data.


def check_config(config: TrainConfig, *, image_size: int | None = None) -> None:
    """Checks what depends on the backbone itself, before any image is decoded.

    Builds the classifier once with the configured weights (so missing
    ImageNet weights offline, or a corrupt weights file, are reported now)
    and applies phase 2's unfreezing to it (so a bad `fine_tune_at` is
    reported now rather than after phase 1).

    Raises:
        ValueError: a bad `fine_tune_at`.
        keras_transfer.errors.CorruptFileError: an unreadable weights file.
        keras_transfer.WeightsUnavailableError: ImageNet weights unavailable.
    """
    spec = backbones_lib.get_backbone_spec(config.backbone)
    size = backbones_lib.check_image_size(spec, image_size)
    model = models_lib.build_classifier(config.backbone, num_classes=2, image_size=size, alpha=config.alpha,
                                        weights=config.weights)
    if config.fine_tune_epochs > 0:
        unfreeze_for_fine_tuning(model, config.fine_tune_at, train_batchnorm=config.train_batchnorm)
    keras.backend.clear_session()


def unfreeze_for_fine_tuning(model: keras.Model, fine_tune_at: int | str | None, *, train_batchnorm: bool) -> int:
    """Unfreezes the backbone from `fine_tune_at` (see `TrainConfig`); returns the layers with weights made trainable."""
    layers = models_lib.get_backbone(model).layers
    kwargs: dict[str, Any] = {"train_batchnorm": train_batchnorm}
    if fine_tune_at is None:
        kwargs["top_n"] = max(1, len(layers) // 3)
    elif isinstance(fine_tune_at, str) and fine_tune_at != "all":
        kwargs["from_layer"] = fine_tune_at
    elif isinstance(fine_tune_at, int) and fine_tune_at < 0:
        kwargs["top_n"] = -fine_tune_at
    elif isinstance(fine_tune_at, int):
        if fine_tune_at >= len(layers):
            raise ValueError(
                f"Expected fine_tune_at to be a layer index < {len(layers)} (the backbone's layers), "
                f"-N, a layer name or 'all'. Received: fine_tune_at={fine_tune_at}"
            )
        kwargs["from_layer"] = layers[fine_tune_at].name
    count = models_lib.unfreeze_backbone(model, **kwargs)
    if count == 0:
        raise ValueError(
            f"fine_tune_at={fine_tune_at!r} leaves no trainable backbone layer with weights "
            f"(BatchNormalization stays frozen unless train_batchnorm=True); choose an earlier layer."
        )
    return count


# ---------------------------------------------------------------------------
# The run's context: configuration, data, folder, state, clock.


@dataclasses.dataclass
class _Context:
    config: TrainConfig
    data: data_lib.ImageData
    run: RunFolder
    state: dict[str, Any]
    strategy: tf.distribute.Strategy
    policy: str | None
    callbacks: Sequence[keras.callbacks.Callback]
    run_info: Mapping[str, Any]
    resumed_from: dict[str, int]
    started: float = dataclasses.field(default_factory=time.perf_counter)
    records: dict[str, dict[int, dict[str, float]]] = dataclasses.field(default_factory=dict)
    clocks: dict[str, tuple[float, float]] = dataclasses.field(default_factory=dict)
    pictures: dict[str, tuple[float, monitoring.ValidationImages]] = dataclasses.field(default_factory=dict)
    # Phase 1's evaluations on cached features, made in this session.
    head_evaluations: dict[str, Evaluation] = dataclasses.field(default_factory=dict)
    # The outputs of phase 2's frozen bottom by view (see `cache_bottom`; files in the run folder, arrays
    # without one), and the top that phase 2 trained on them: the final evaluation runs only the top.
    bottom_outputs: dict[str, np.ndarray | RowFile] = dataclasses.field(default_factory=dict)
    cached_top: keras.Model | None = None

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.data.class_names)

    def phase(self, name: str) -> dict[str, Any]:
        return self.state.setdefault("phases", {}).setdefault(name, {})

    def elapsed(self) -> float:
        """Wall time of the whole run: earlier sessions (to their last save) and this one."""
        return self.state.get("earlier_sessions_s", 0.0) + time.perf_counter() - self.started

    def save(self) -> None:
        self.state["wall_time_s"] = self.elapsed()
        self.run.save_state(self.state)

    def start_clock(self, phase: str) -> None:
        self.clocks[phase] = (self.phase(phase).get("wall_time_s", 0.0), time.perf_counter())

    def phase_time(self, phase: str) -> float:
        """Wall time of a phase over every session (earlier ones to their last commit)."""
        earlier, started = self.clocks[phase]
        return earlier + time.perf_counter() - started

    def update_times(self, phase: str) -> None:
        """The phase's wall time, and the part of it its TensorBoard pictures took, into the state."""
        state = self.phase(phase)
        state["wall_time_s"] = self.phase_time(phase)
        if phase in self.pictures:
            earlier, callback = self.pictures[phase]
            state["tensorboard_images_s"] = earlier + callback.seconds

    def say(self, message: str) -> None:
        if self.config.verbose:
            print(message, flush=True)


def _fingerprint(config: TrainConfig, data: data_lib.ImageData) -> dict[str, Any]:
    data_info = {
        "class_names": list(data.class_names),
        "image_size": int(data.image_size),
        "source": data.report.source,
        "used": dict(data.report.used),
    }
    if data.report.files_digest:
        data_info["files"] = data.report.files_digest
    return jsonable({"train": config.fingerprint(), "data": data_info})


# Settings added after runs were made, with the value that reproduces what those runs did
# where it differs from today's default.
_BEFORE_THEY_EXISTED = {"ema_momentum": 0.0, "cache_bottom": False, "fine_tune_schedule": "constant",
                        "warmup_epochs": 0}


def _check_fingerprint(saved: Mapping[str, Any], current: Mapping[str, Any], root: str, *, complete: bool) -> None:
    if saved == current:
        return
    # A setting added after the run was made is absent from its fingerprint:
    # the run did what that setting's "off" value does, or else its default.
    defaults = jsonable({f.name: f.default for f in dataclasses.fields(TrainConfig)} | _BEFORE_THEY_EXISTED)
    differences = []
    for section in ("train", "data"):
        a, b = saved.get(section, {}), current.get(section, {})
        for key in sorted(set(a) | set(b)):
            if section == "train" and key not in a and key in defaults and b.get(key) == defaults[key]:
                continue
            if section == "data" and key not in a:  # a property recorded since: the run did not check it
                continue
            if a.get(key) != b.get(key):
                differences.append(f"{section}.{key}: saved {a.get(key)!r}, now {b.get(key)!r}")
    if not differences:
        return
    what = "a finished run" if complete else "an unfinished run"
    raise ResumeMismatchError(
        f"{root!r} holds {what} with a different configuration, so it cannot be resumed: "
        + "; ".join(differences)
        + ". Use another output folder, or start over in this one (command line: --overwrite)."
    )


def _open_state(run: RunFolder, config: TrainConfig, data: data_lib.ImageData, say) -> dict[str, Any]:
    """The run's state: loaded and checked against the configuration, or new."""
    run.prepare()
    fingerprint = _fingerprint(config, data)
    state = run.load_state()
    if state:
        complete = bool(state.get("complete"))
        _check_fingerprint(state.get("fingerprint", {}), fingerprint, run.root, complete=complete)
        if complete and not run.model_exists():
            say(f"{run.root} holds a finished run without its model file; training again.")
            run.clear_state()
            state = {}
    if not state:
        state = {"fingerprint": fingerprint, "phases": {}}
    # Time of earlier sessions, counted up to their last save.
    state["earlier_sessions_s"] = float(state.get("wall_time_s", 0.0))
    return state


def _checked_data(data: data_lib.ImageData) -> data_lib.ImageData:
    if len(data.class_names) < 2:
        raise ValueError(f"Expected at least 2 classes. Received: class_names={list(data.class_names)}")
    if data.val is not None and len(data.val) == 0:
        data = dataclasses.replace(data, val=None)
    return data


# ---------------------------------------------------------------------------
# Model and splits.


def _build_model(ctx: _Context) -> keras.Model:
    config, data = ctx.config, ctx.data
    keras.utils.set_random_seed(config.seed)
    augmentation = build_augmentation(seed=config.seed) if config.augment else False
    model = models_lib.build_classifier(
        config.backbone,
        num_classes=len(data.class_names),
        image_size=int(data.image_size),
        alpha=config.alpha,
        weights=config.weights,
        pooling=config.pooling,
        dropout=config.dropout,
        augmentation=augmentation,
        standardize_features=config.standardize_features,
        # scikit-learn's objective C * sum(CE) + ||W||^2 / 2, divided by C * n.
        kernel_l2=config.head_l2 / (2.0 * max(len(data.train), 1)),
    )
    # The same starting weights on resumption, whatever the seed behaviour
    # of the backbone's initializers.
    if ctx.run.has_weights("initial"):
        ctx.run.load_weights(model, "initial")
    else:
        ctx.run.save_weights(model, "initial")
    return model


@dataclasses.dataclass
class _Splits:
    """The batched datasets and the validation labels and pictures of a run."""

    train: tf.data.Dataset  # shuffled, for fitting
    ordered: dict[str, tf.data.Dataset]  # every split in order, for evaluation
    labels: dict[str, np.ndarray]
    samples: eval_lib.Samples | None
    val_images: tf.data.Dataset | None  # unbatched, in order
    batch_size: int

    @classmethod
    def of(cls, data: data_lib.ImageData, config: TrainConfig) -> "_Splits":
        splits = {n: ds for n, ds in (("train", data.train), ("val", data.val), ("test", data.test)) if ds is not None}
        ordered = {n: phases.image_batches(ds, batch_size=config.batch_size) for n, ds in splits.items()}
        labels = {n: eval_lib.labels_of(ds) for n, ds in splits.items()}
        samples = eval_lib.samples_of(data.val, len(labels["val"])) if "val" in labels else None
        train = phases.image_batches(data.train, batch_size=config.batch_size, shuffle=True, seed=config.seed)
        return cls(train=train, ordered=ordered, labels=labels, samples=samples, val_images=data.val,
                   batch_size=config.batch_size)

    @cached_property
    def monitor(self) -> _Monitor | None:
        """The validation subset of the per-epoch pictures of image phases (made when first needed)."""
        if self.val_images is None:
            return None
        return _Monitor.of(self.val_images, self.labels["val"], batch_size=self.batch_size)


@dataclasses.dataclass
class _Monitor:
    """Validation images for the per-epoch pictures of a phase that runs the backbone on images.

    Evaluating the whole validation split after every drawn epoch would cost
    a full inference pass each time; a fixed, class-spread subset costs a
    fraction of one.
    """

    batches: tf.data.Dataset
    labels: np.ndarray
    samples: eval_lib.Samples | None
    title: str

    @classmethod
    def of(cls, val: tf.data.Dataset, labels: np.ndarray, *, batch_size: int) -> "_Monitor":
        at = eval_lib.grid_indices(len(labels), monitoring.MONITOR_IMAGES)
        subset = tf.data.Dataset.from_tensor_slices((eval_lib.images_at(val, at), labels[at]))
        title = "Validation" if len(at) == len(labels) else f"Validation ({len(at)} of {len(labels)} images)"
        return cls(batches=phases.image_batches(subset, batch_size=batch_size), labels=labels[at],
                   samples=eval_lib.samples_of(subset, len(at)), title=title)


def _write_hparams_once(ctx: _Context) -> None:
    if not ctx.run.enabled or ctx.state.get("hparams_written"):
        return
    hparams = {**ctx.config.to_dict(), "image_size": int(ctx.data.image_size), "num_classes": len(ctx.class_names)}
    for key, value in ctx.run_info.items():
        hparams.setdefault(key, value)
    from keras_transfer.monitoring import write_hparams

    write_hparams(ctx.run.tensorboard, hparams, trial_id=os.path.basename(os.path.abspath(ctx.run.root)))
    ctx.state["hparams_written"] = True
    ctx.save()


# ---------------------------------------------------------------------------
# The phases.


def _fit_options(ctx: _Context) -> phases.FitOptions:
    return phases.FitOptions(
        jit_compile=ctx.config.jit_compile,
        verbose=ctx.config.verbose,
        tensorboard_dir=ctx.run.tensorboard,
        top_k=ctx.config.top_k,
    )


def _image_callbacks(ctx: _Context, splits: _Splits, phase: str, *, first_epoch: int, epochs: int,
                     features: tf.data.Dataset | None = None) -> list[keras.callbacks.Callback]:
    """The TensorBoard pictures of a phase: of cached validation `features` (all of them), else of images."""
    at = monitoring.image_epochs(first_epoch, epochs, ctx.config.tensorboard_images_every)
    if not ctx.run.enabled or splits.val_images is None or not at:
        return []
    log_dir = os.path.join(ctx.run.tensorboard, "validation")
    if features is not None:
        callback = monitoring.ValidationImages(log_dir, features, splits.labels["val"], ctx.class_names, epochs=at,
                                               samples=splits.samples)
    else:
        monitor = splits.monitor
        callback = monitoring.ValidationImages(log_dir, monitor.batches, monitor.labels, ctx.class_names,
                                               epochs=at, samples=monitor.samples, title=monitor.title)
    ctx.pictures[phase] = (ctx.phase(phase).get("tensorboard_images_s", 0.0), callback)
    return [callback]


def _committed(ctx: _Context, phase: str):
    """Keeps the phase's and the run's wall time in the state at every commit."""

    def commit() -> None:
        ctx.update_times(phase)
        ctx.save()

    return commit


def _cached_features(ctx: _Context, model: keras.Model, splits: _Splits) -> dict[str, np.ndarray]:
    """Backbone features of the splits, computed once (or loaded from the run folder)."""
    state = ctx.phase("head")
    cached = ctx.run.load_features()
    if cached is not None:
        state["features_from_disk"] = True
        ctx.say(f"Phase 1: backbone features loaded from {ctx.run.state_dir}.")
        return cached
    t0 = time.perf_counter()
    views = " and the mirrored training images" if ctx.config.flip_views else ""
    ctx.say(f"Phase 1: computing backbone features once ({', '.join(splits.ordered)}{views}).")
    extract = _through_bottom(ctx, model) or (
        lambda ds: phases.extract_features(model, ds, batch_size=ctx.config.batch_size))
    cached = {"train_x": extract(ctx.data.train), "train_y": splits.labels["train"]}
    if ctx.config.flip_views:
        cached["train_flip_x"] = extract(phases.mirrored(ctx.data.train))
    if ctx.data.val is not None:
        cached["val_x"] = extract(ctx.data.val)
        cached["val_y"] = splits.labels["val"]
    state["feature_extraction_s"] = time.perf_counter() - t0
    ctx.run.save_features(cached)
    return cached


def _on_cached_bottom(ctx: _Context, bottom: keras.Model) -> bool:
    """Whether phase 2, asked to train on `bottom`'s outputs (`cache_bottom`), does: whether they fit in memory.

    Decided once per run and kept in its state, so that a resumed run goes on the way it started.
    """
    state = ctx.phase("fine_tune")
    if "on_cached_bottom" not in state:
        state["on_cached_bottom"] = _bottom_fits(ctx, bottom)
    return bool(state["on_cached_bottom"])


def _bottom_fits(ctx: _Context, bottom: keras.Model) -> bool:
    """Whether the bottom's outputs of every view fit where they are kept: the run folder's disk, or memory.

    In a run folder they are files, read a batch at a time (`row_files`), so memory does not grow with the
    data. Without one they stay in memory, beside the images cached there, within the budget `cache="auto"`
    gives the decoded images (`data.memory_budget`: half the available memory, or
    `KERAS_TRANSFER_MEMORY_LIMIT`). When they do not fit, phase 2 runs on images, and says so.
    """
    used = ctx.data.report.used
    views = used.get("train", 0) * (2 if ctx.config.augment else 1) + used.get("val", 0)
    need = views * int(np.prod(bottom.output.shape[1:])) * 4  # float32
    if ctx.run.enabled:
        free = shutil.disk_usage(ctx.run.state_dir).free
        if need <= free:
            return True
        where = (f"{data_lib.format_bytes(need)} of disk, more than the {data_lib.format_bytes(free)} free in "
                 f"{ctx.run.state_dir!r}")
    else:
        if ctx.data.report.cache == "memory":
            need += data_lib.image_cache_bytes(sum(used.values()), ctx.data.image_size)
        budget, source = data_lib.memory_budget()
        if budget is None or need <= budget:
            return True
        where = (f"with the images cached in memory, {data_lib.format_bytes(need)} of memory, more than the "
                 f"memory budget ({data_lib.format_bytes(budget)}, {source}; {data_lib.MEMORY_LIMIT_ENV} sets "
                 "another, and a run folder keeps them on disk)")
    ctx.say(f"Phase 2 fine-tunes on images, not on the cached bottom: the bottom's outputs of {views} views need "
            f"{where}. --no-cache-bottom says this is intended.")
    return False


def _bottom_outputs(ctx: _Context, bottom: keras.Model, name: str, ds: tf.data.Dataset) -> np.ndarray | RowFile:
    """The frozen bottom's outputs of the view `name` of a split, computed once for the session.

    In a run folder they are written to a file (and a resumed session reads the complete file a
    killed one left); without one they are kept in memory.
    """
    if name in ctx.bottom_outputs:
        return ctx.bottom_outputs[name]
    batch = ctx.config.batch_size
    if ctx.run.enabled:
        path = ctx.run.bottom_path(name)
        rows = ctx.data.report.used["train" if name == "train_flip" else name]
        outputs = _complete_rows(path, (rows, *bottom.output.shape[1:]))
        if outputs is None:
            outputs = phases.predict_to_file(bottom, ds, path, rows=rows, batch_size=batch)
    else:
        outputs = phases.predict_images(bottom, ds, batch_size=batch)
    ctx.bottom_outputs[name] = outputs
    return outputs


def _complete_rows(path: str, shape: tuple[int, ...]) -> RowFile | None:
    """The row file at `path` if a previous session completed it with this `shape`, else `None`."""
    try:
        rows = RowFile(path) if os.path.isfile(path) else None
    except CorruptFileError:
        return None  # recomputed from the images: a damaged file costs time, not results
    return rows if rows is not None and rows.shape == shape else None


def _through_bottom(ctx: _Context, model: keras.Model):
    """images -> pooled features through the bottom phase 2 will cache, keeping each split's bottom outputs;
    `None` when phase 2 will not train on the cached bottom.

    The same work as one pass of the whole backbone, so phase 2 gets its
    cached bottom for free (`ctx.bottom_outputs`, by view).
    """
    if not (ctx.config.cache_bottom and ctx.config.fine_tune_epochs > 0):
        return None
    unfreeze_for_fine_tuning(model, ctx.config.fine_tune_at, train_batchnorm=ctx.config.train_batchnorm)
    bottom, top = models_lib.split_below_trainable(model)
    models_lib.freeze_backbone(model)
    if not _on_cached_bottom(ctx, bottom):
        return None
    pooled = models_lib.pooled_from_bottom(top, model)
    batch = ctx.config.batch_size
    names = iter(["train", "train_flip", "val"] if ctx.config.flip_views else ["train", "val"])

    def extract(ds: tf.data.Dataset) -> np.ndarray:
        outputs = _bottom_outputs(ctx, bottom, next(names), ds)
        batches = phases.row_batches(outputs, np.zeros(len(outputs), np.int32), batch_size=batch)
        return np.asarray(pooled.predict(batches, verbose=0), np.float32)

    return extract


def _linear_probe(ctx: _Context, features: Mapping[str, np.ndarray]) -> None:
    """Logistic regression on the frozen features of the run's own split (plain images)."""
    if not ctx.config.linear_probe or "val_x" not in features:
        return
    ctx.say("Linear probe: scikit-learn logistic regression on the same frozen features.")
    result = probe_lib.linear_probe(features["train_x"], features["train_y"], features["val_x"], features["val_y"])
    ctx.say(f"Linear probe: validation accuracy {result.val_accuracy:.4f}.")
    ctx.phase("head")["linear_probe"] = result.to_dict()


def _head_on_cached_features(ctx: _Context, model: keras.Model, splits: _Splits) -> dict:
    features = _cached_features(ctx, model, splits)
    _linear_probe(ctx, features)
    fit_x, fit_y = features["train_x"], features["train_y"]
    if ctx.config.flip_views:
        fit_x = np.concatenate([fit_x, features["train_flip_x"]])
        fit_y = np.concatenate([fit_y, fit_y])
    val_batches = None
    if "val_x" in features:
        val_batches = phases.feature_batches(features["val_x"], features["val_y"], batch_size=ctx.config.batch_size)
    ctx.say(f"Phase 1: head on cached features, {ctx.config.epochs} epochs "
            f"(learning rate {ctx.config.learning_rate:g}).")
    records = phases.fit_head_on_features(
        model, fit_x, fit_y,
        val_features=features.get("val_x"), val_labels=features.get("val_y"),
        epochs=ctx.config.epochs, learning_rate=ctx.config.learning_rate,
        label_smoothing=ctx.config.label_smoothing, batch_size=ctx.config.batch_size,
        seed=ctx.config.seed, options=_fit_options(ctx), run=ctx.run,
        callbacks=[*_image_callbacks(ctx, splits, "head", first_epoch=0, epochs=ctx.config.epochs, features=val_batches),
                   *ctx.callbacks],
        on_commit=_committed(ctx, "head"),
    )
    head = models_lib.head(model)
    train_in_order = phases.feature_batches(features["train_x"], features["train_y"], batch_size=ctx.config.batch_size)
    # The classifier's own logits, from the cached features (no image pass):
    # the final evaluations reuse them when the run ends on these weights.
    ctx.head_evaluations = {"train": eval_lib.evaluate(head, train_in_order, features["train_y"], ctx.class_names)}
    if val_batches is not None:
        ctx.head_evaluations["val"] = eval_lib.evaluate(head, val_batches, features["val_y"], ctx.class_names,
                                                        samples=splits.samples)
    final = {name: e.summary(top_k=ctx.config.top_k) for name, e in ctx.head_evaluations.items()}
    return {"records": records, "final": final}


def _head_on_frozen_backbone(ctx: _Context, model: keras.Model, splits: _Splits) -> dict:
    if ctx.config.standardize_features or ctx.config.linear_probe:
        # One inference pass for the statistics (and the probe).
        batch = ctx.config.batch_size
        features = {"train_x": phases.extract_features(model, ctx.data.train, batch_size=batch),
                    "train_y": splits.labels["train"]}
        models_lib.set_feature_statistics(model, features["train_x"])
        if ctx.config.linear_probe and ctx.data.val is not None:
            features["val_x"] = phases.extract_features(model, ctx.data.val, batch_size=batch)
            features["val_y"] = splits.labels["val"]
            _linear_probe(ctx, features)
    ctx.say(f"Phase 1: head on the frozen backbone, {ctx.config.epochs} epochs "
            f"(learning rate {ctx.config.learning_rate:g}).")
    plan = phases.PhasePlan("head", model, splits.train, splits.ordered.get("val"), 0, ctx.config.epochs,
                            phases.Optimization(ctx.config.learning_rate, label_smoothing=ctx.config.label_smoothing),
                            early_stop=_early_stop(ctx, splits))
    records = phases.run_phase(
        plan, options=_fit_options(ctx), run=ctx.run,
        callbacks=[*_image_callbacks(ctx, splits, "head", first_epoch=0, epochs=ctx.config.epochs), *ctx.callbacks],
        on_commit=_committed(ctx, "head"),
    )
    final = {n: _evaluate_split(ctx, model, splits, n).summary(top_k=ctx.config.top_k)
             for n in ("train", "val") if n in splits.ordered}
    return {"records": records, "final": final, **_ending(plan, records)}


def _early_stop(ctx: _Context, splits: _Splits, *, baseline: float | None = None,
                monitor: str = "val_loss") -> phases.EarlyStop | None:
    """The early stopping of a phase on images (none without a validation split or with patience 0)."""
    patience = ctx.config.early_stopping_patience
    if not patience or "val" not in splits.ordered:
        return None
    return phases.EarlyStop(patience, monitor=monitor, baseline=baseline)


def _ending(plan: phases.PhasePlan, records: Mapping[int, Mapping[str, float]]) -> dict[str, Any]:
    """What a phase ended on, for the run's state and metrics.json."""
    if plan.early_stop is None or not records:
        return {}
    best = plan.early_stop.best(records)
    return {"ended_on_epoch": best, "stopped_early": len(records) < plan.epochs}


def _head_val_loss(ctx: _Context) -> float | None:
    """Keras' validation loss of the weights phase 1 ended on (its records): phase 2 must beat it."""
    records = ctx.run.load_history("head")[0] if ctx.run.enabled else ctx.records.get("head", {})
    if not records:
        return None
    ended_on = ctx.phase("head").get("ended_on_epoch")
    return records[max(records) if ended_on is None else ended_on].get("val_loss")


def _head_phase(ctx: _Context, model: keras.Model, splits: _Splits) -> int:
    """Phase 1; returns its number of epochs (the first epoch of phase 2)."""
    state = ctx.phase("head")
    if state.get("complete"):
        ctx.say(f"Phase 1 (head) already done in {ctx.run.root}: {state['epochs_done']} epochs.")
        ctx.run.load_weights(model, "head")
        return int(state["epochs_done"])
    if ctx.config.epochs == 0:
        return 0
    ctx.start_clock("head")
    fit = _head_on_cached_features if ctx.config.cache_features else _head_on_frozen_backbone
    outcome = fit(ctx, model, splits)
    records = ctx.records["head"] = outcome.pop("records")
    state.update(
        epochs_done=(max(records) + 1) if records else 0,
        cached_features=ctx.config.cache_features,
        mirrored_features=ctx.config.flip_views,
        **outcome,
    )
    _complete_phase(ctx, model, "head")
    return int(state["epochs_done"])


def fine_tune_optimization(config: TrainConfig, model: keras.Model) -> phases.Optimization:
    """Phase 2's optimization for `config`: its rate, schedule, weight decay, smoothing and averaging.

    Args:
        config: the run's configuration.
        model: the classifier, already unfrozen for fine-tuning (the
            per-layer rates of `lowest_layer_rate` follow its trainable layers).
    """
    factors = None
    if config.lowest_layer_rate != 1.0:
        factors = models_lib.layer_rate_factors(model, lowest=config.lowest_layer_rate)
    return phases.Optimization(config.fine_tune_learning_rate, schedule=config.fine_tune_schedule,
                               warmup_epochs=config.warmup_epochs, weight_decay=config.weight_decay,
                               label_smoothing=config.label_smoothing, ema_momentum=config.ema_momentum,
                               rate_factors=factors)


def _fine_tune_phase(ctx: _Context, model: keras.Model, splits: _Splits, first_epoch: int) -> None:
    state = ctx.phase("fine_tune")
    if ctx.config.fine_tune_epochs == 0:
        return
    if state.get("complete"):
        ctx.run.load_weights(model, "fine_tune")
        return
    ctx.start_clock("fine_tune")
    lr = ctx.config.fine_tune_learning_rate
    trainable = unfreeze_for_fine_tuning(model, ctx.config.fine_tune_at, train_batchnorm=ctx.config.train_batchnorm)
    optimization = fine_tune_optimization(ctx.config, model)
    levers = "".join([f"; lowest layer at {ctx.config.lowest_layer_rate:g} of it" if optimization.rate_factors else "",
                      f"; weights averaged, momentum {ctx.config.ema_momentum:g}" if ctx.config.ema_momentum else ""])
    ctx.say(f"Phase 2: fine-tuning {trainable} backbone layers with weights, "
            f"{ctx.config.fine_tune_epochs} epochs (learning rate {lr:g}{levers}).")
    attack = ctx.config.training_attack
    train, val, val_features = splits.train, splits.ordered.get("val"), None
    if attack is not None:
        # The head was never attacked: its adversarial loss is unknown, so
        # phase 2 competes only with its own epochs, under the attack.
        ctx.say(f"Phase 2 trains adversarially: {attack.describe()}.")
        fitted = adversarial_training.AdversarialFineTuning(model, attack=attack)
        early_stop = _early_stop(ctx, splits, monitor="val_adversarial_loss")
    else:
        # Validation is never mixed nor attacked here: the head's validation loss is comparable.
        fitted, early_stop = model, _early_stop(ctx, splits, baseline=_head_val_loss(ctx))
        mix = ctx.config.sample_mixing
        if mix is not None:
            ctx.say(f"Phase 2 mixes its training batches: {mix.describe()}.")
            fitted = mixing.MixedSampleFineTuning(model, mixing=mix)
        if ctx.config.cache_bottom:
            bottom, top = models_lib.split_below_trainable(model)
            if _on_cached_bottom(ctx, bottom):
                fitted, train, val = _cached_bottom(ctx, bottom, top, splits)
                val_features = val
    plan = phases.PhasePlan("fine_tune", fitted, train, val, first_epoch, ctx.config.fine_tune_epochs, optimization,
                            early_stop=early_stop)
    records = phases.run_phase(
        plan, options=_fit_options(ctx), run=ctx.run,
        callbacks=[*_image_callbacks(ctx, splits, "fine_tune", first_epoch=first_epoch,
                                    epochs=ctx.config.fine_tune_epochs, features=val_features),
                   *ctx.callbacks],
        on_commit=_committed(ctx, "fine_tune"),
    )
    ctx.records["fine_tune"] = records
    state.update(epochs_done=len(records), trainable_backbone_layers=trainable, learning_rate=lr,
                 **_ending(plan, records))
    if state.get("stopped_early") or "ended_on_epoch" in state:
        ended = state.get("ended_on_epoch")
        ctx.say(f"Phase 2: {len(records)} epochs; ends on " + ("the head's weights (no epoch had a lower "
                "validation loss)" if ended is None else f"epoch {ended + 1}") + ".")
    _complete_phase(ctx, model, "fine_tune")


def _cached_bottom(ctx: _Context, bottom: keras.Model, top: keras.Model, splits: _Splits):
    """Phase 2 on the frozen bottom's outputs: `(the top model to fit, train batches, validation batches)`.

    The bottom runs once per view (each training image, and its mirror image
    when augmenting); every epoch draws one view per image, as a random flip
    would. Validation runs on the bottom's outputs of its images.
    """
    t0 = time.perf_counter()
    batch = ctx.config.batch_size
    kept = ctx.bottom_outputs  # computed by phase 1 in this session, if it ran
    computed = not kept
    views = [_bottom_outputs(ctx, bottom, "train", ctx.data.train)]
    if ctx.config.augment:
        views.append(_bottom_outputs(ctx, bottom, "train_flip", phases.mirrored(ctx.data.train)))
    val = None
    if "val" in splits.labels:
        val = phases.row_batches(_bottom_outputs(ctx, bottom, "val", ctx.data.val), splits.labels["val"],
                                 batch_size=batch)
    state = ctx.phase("fine_tune")
    state["bottom_extraction_s"] = state.get("bottom_extraction_s", 0.0) + time.perf_counter() - t0
    state["bottom_output_shape"] = list(views[0].shape[1:])
    how = f"ready in {time.perf_counter() - t0:.0f} s" if computed else "kept from phase 1's pass"
    where = f"; in {ctx.run.state_dir}" if isinstance(views[0], RowFile) else ""
    ctx.say(f"Phase 2 trains on the backbone's outputs below {top.get_layer('backbone_top').backbone.layers[1].name!r}"
            f" ({len(views)} view{'s' * (len(views) > 1)} of the training images, "
            f"{np.prod(views[0].shape[1:]) * 4 / 1e3:.0f} KB each; {how}{where}).")
    train = phases.view_batches(views, splits.labels["train"], batch_size=batch, seed=ctx.config.seed)
    kept.pop("train_flip", None)  # the final evaluation needs only the splits' own images
    ctx.cached_top = top
    return top, train, val


def _complete_phase(ctx: _Context, model: keras.Model, phase: str) -> None:
    """Saves the phase's final weights, then marks it complete (in that order)."""
    state = ctx.phase(phase)
    ctx.update_times(phase)
    ctx.run.save_weights(model, phase)
    state["complete"] = True
    ctx.save()
    ctx.run.drop_backups(phase)


# ---------------------------------------------------------------------------
# Evaluation, metrics and outputs.


def _evaluate_split(ctx: _Context, model: keras.Model, splits: _Splits, name: str) -> Evaluation:
    samples = splits.samples if name == "val" else None
    outputs = ctx.bottom_outputs.get(name) if ctx.cached_top is not None else None
    if outputs is not None:
        # The frozen bottom's outputs of these very images, from phase 2: the top alone gives the model's logits.
        batches = phases.row_batches(outputs, splits.labels[name], batch_size=ctx.config.batch_size)
        return eval_lib.evaluate(ctx.cached_top, batches, splits.labels[name], ctx.class_names, samples=samples)
    return eval_lib.evaluate(model, splits.ordered[name], splits.labels[name], ctx.class_names, samples=samples)


def _ends_on_head(ctx: _Context) -> bool:
    """Whether the model ends with the weights phase 1 left (no fine-tuning, or none that beat it)."""
    fine = ctx.phase("fine_tune")
    return ctx.config.fine_tune_epochs == 0 or ("ended_on_epoch" in fine and fine["ended_on_epoch"] is None)


def _final_evaluations(ctx: _Context, model: keras.Model, splits: _Splits) -> dict[str, Evaluation]:
    t0 = time.perf_counter()
    reused = ctx.head_evaluations if _ends_on_head(ctx) else {}
    evaluations = {name: reused.get(name) or _evaluate_split(ctx, model, splits, name) for name in splits.ordered}
    ctx.state.setdefault("timings", {})["final_evaluation_s"] = time.perf_counter() - t0
    if ctx.config.fine_tune_epochs > 0:
        ctx.phase("fine_tune")["final"] = {n: e.summary(top_k=ctx.config.top_k) for n, e in evaluations.items()
                                           if n in ("train", "val")}
    return evaluations


def _history(ctx: _Context) -> dict[str, dict[str, list[float]]]:
    history = {}
    for phase in PHASES:
        records = ctx.run.load_history(phase)[0] if ctx.run.enabled else ctx.records.get(phase, {})
        if records:
            history[phase] = phases.history_from_records(records)
    return history


def _calibrate(ctx: _Context, model: keras.Model, evaluations: dict[str, Evaluation]):
    """With `calibrate`, folds a temperature fitted on validation into the model.

    The evaluations of the calibrated model are derived from the ones made
    (logits / T), not recomputed. A temperature at the end of the search
    range is not applied (`calibration.at_search_limit`); metrics.json says
    why under `not_applied`.

    Returns:
        `(evaluations of the model as saved, the "calibration" of metrics.json)`.
    """
    info: dict[str, Any] = {"bins": calibration_lib.DEFAULT_BINS, "temperature": None, "fitted_on": None}
    if ctx.config.calibrate:
        val = evaluations["val"]
        temperature = calibration_lib.fit_temperature(val.logits, val.labels)
        if calibration_lib.at_search_limit(temperature):
            info["not_applied"] = (
                f"the validation loss falls all the way to T = {temperature:.3g}, the end of the search range "
                f"({val.accuracy:.1%} of the {len(val.labels)} validation images right): no bound on the confidence"
            )
            ctx.say(f"Not calibrated: {info['not_applied']}. The model is saved as trained.")
        else:
            calibration_lib.apply_temperature(model, temperature)
            info.update(temperature=temperature, fitted_on="val",
                        before={n: {"ece": e.reliability.ece, "loss": e.loss} for n, e in evaluations.items()},
                        val_reliability_before=val.reliability.to_dict())
            evaluations = {n: e.with_temperature(temperature) for n, e in evaluations.items()}
            ctx.say(f"Calibrated: temperature {temperature:.3f}; validation ECE {val.reliability.ece:.4f} -> "
                    f"{evaluations['val'].reliability.ece:.4f} (fitted on these images)")
    if "val" in evaluations:
        info["val_reliability"] = evaluations["val"].reliability.to_dict()
    return evaluations, info


def _flip_averaged(ctx: _Context, model: keras.Model, splits: _Splits) -> dict[str, dict[str, float]]:
    """Summaries of the splits with test-time flip averaging (the model as saved, calibrated or not)."""
    return {
        name: eval_lib.evaluate(model, splits.ordered[name], splits.labels[name], ctx.class_names,
                                flip_average=True).summary(top_k=ctx.config.top_k)
        for name in splits.ordered
    }


def _metrics(ctx: _Context, evaluations: Mapping[str, Evaluation], history, fine_tune_start,
             calibration_info: Mapping[str, Any], flipped: Mapping[str, Any] | None) -> dict[str, Any]:
    phases_out = {}
    for phase in PHASES:
        info = {k: v for k, v in ctx.phase(phase).items() if k != "complete"}
        if phase in history:
            info["history"] = history[phase]
        if info:
            phases_out[phase] = info
    val, test = evaluations.get("val"), evaluations.get("test")
    return {
        "class_names": list(ctx.class_names),
        "phases": phases_out,
        "fine_tune_start_epoch": fine_tune_start,
        "final": {name: e.summary(top_k=ctx.config.top_k) for name, e in evaluations.items()},
        "final_flip_averaged": flipped,
        "calibration": calibration_info,
        "linear_probe": ctx.phase("head").get("linear_probe"),
        "per_class_val_accuracy": val.per_class_accuracy if val is not None else None,
        "val_confusion_matrix": val.confusion.tolist() if val is not None else None,
        "per_class_test_accuracy": test.per_class_accuracy if test is not None else None,
        "data": ctx.data.report.to_dict(),
        "timings": {k: v for k, v in ctx.state.get("timings", {}).items()},
        "wall_time_s": ctx.elapsed(),
        # Epochs each phase had already completed when this call started.
        "resumed_at": {p: n for p, n in ctx.resumed_from.items() if n} or None,
        "mixed_precision_policy": ctx.policy or "float32",
        "replicas": int(ctx.strategy.num_replicas_in_sync),
        "config": {"train": ctx.config.to_dict(), **dict(ctx.run_info)},
    }


def _finish(ctx: _Context, model: keras.Model, metrics: Mapping[str, Any]) -> None:
    """Writes the outputs, then marks the run complete, then drops the resume-only files."""
    if not ctx.run.enabled:
        return
    # So that load_model(compile=True) restores the optimizer instead of
    # warning about the variables of one that never took a step.
    if getattr(model, "optimizer", None) is None:
        phases.compile_classifier(model)
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    ctx.run.write_outputs(model, ctx.class_names, metrics)
    ctx.state["complete"] = True
    ctx.save()
    ctx.run.finish()


def _load_finished(ctx: _Context) -> TrainResult:
    """A complete run: its model and metrics as they are on disk (nothing rewritten)."""
    ctx.say(f"The run in {ctx.run.root} is complete; loading its model (nothing is retrained or rewritten).")
    metrics = ctx.run.load_metrics()
    model = models_lib.load_model(ctx.run.path("model.keras"))
    splits = _Splits.of(ctx.data, ctx.config)
    evaluation = None
    if "val" in splits.ordered:
        evaluation = eval_lib.evaluate(model, splits.ordered["val"], splits.labels["val"], ctx.class_names,
                                       samples=splits.samples)
    history = {p: info["history"] for p, info in metrics.get("phases", {}).items() if "history" in info}
    return TrainResult(model=model, class_names=ctx.class_names, history=history,
                       fine_tune_start=metrics.get("fine_tune_start_epoch"), metrics=metrics, evaluation=evaluation,
                       output_dir=ctx.run.root, loaded_finished_run=True)


# ---------------------------------------------------------------------------
# The run.


def train(
    data: data_lib.ImageData,
    config: TrainConfig | None = None,
    *,
    output_dir: str | os.PathLike | None = None,
    strategy: tf.distribute.Strategy | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    run_info: Mapping[str, Any] | None = None,
) -> TrainResult:
    """Trains a classifier in two phases: the head, then the top of the backbone.

    With `output_dir`, writes `tensorboard/` (loss, accuracy and learning rate
    of both phases on one epoch axis, a validation confusion matrix and
    prediction grid, the hyper-parameters), `state/` (what a resumption
    needs), and at the end `model.keras`, `classes.json` and `metrics.json`.
    Every file is written atomically. Calling `train` again with the same
    `output_dir` and configuration continues from the last completed epoch;
    a completed run is loaded as it is, not retrained nor rewritten. The
    folder is locked while the run is in it.

    Args:
        data: the data, e.g. from `keras_transfer.data.load_folder`.
        config: the hyper-parameters. Defaults to `TrainConfig()`.
        output_dir: folder for logs, resume state and results; `None` writes
            nothing. Defaults to `None`.
        strategy: a `tf.distribute` strategy that overrides
            `config.strategy`. Defaults to `None`.
        callbacks: extra Keras callbacks for both phases' `fit`. Defaults to
            `()`.
        run_info: extra JSON-serializable configuration (e.g. the data
            options) stored under `metrics["config"]`. Defaults to `None`.

    Returns:
        A `TrainResult`.

    Raises:
        ResumeMismatchError: `output_dir` holds a run with another
            configuration.
        keras_transfer.errors.FolderInUseError: another process runs in
            `output_dir`.
        keras_transfer.errors.CorruptFileError: a resume file is unreadable.
        FloatingPointError: the loss became NaN or infinite.
        keras_transfer.WeightsUnavailableError: the ImageNet weights are not
            available offline.
    """
    config = config or TrainConfig()
    strategy = strategy or engine.make_strategy(config.strategy)
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        _multi_worker.install()  # Keras 3's fit fails there without it (keras-team/keras#20585)
    data = _checked_data(data)
    if config.calibrate and data.val is None:
        raise ValueError(
            "Expected a validation split to fit the temperature on (calibrate=True). Received: data with no "
            "validation images; keep some (e.g. --val-split 0.2) or leave calibration off."
        )
    if output_dir is None:
        return _train_in(NoRunFolder(), data, config, strategy, callbacks, run_info)
    run = RunFolder(engine.worker_dir(os.fspath(output_dir), strategy))
    with folder_lock(run.root):
        return _train_in(run, data, config, strategy, callbacks, run_info)


def _train_in(run: RunFolder, data, config: TrainConfig, strategy, callbacks, run_info) -> TrainResult:
    say = (lambda m: print(m, flush=True)) if config.verbose else (lambda m: None)
    state = _open_state(run, config, data, say)
    resumed_from = {p: len(run.load_history(p)[0]) for p in PHASES} if not state.get("complete") else {}
    ctx = _Context(config=config, data=data, run=run, state=state, strategy=strategy,
                   policy=engine.resolve_mixed_precision(config.mixed_precision), callbacks=tuple(callbacks),
                   run_info=dict(run_info or {}), resumed_from=resumed_from)
    if state.get("complete"):
        return _load_finished(ctx)
    splits = _Splits.of(data, config)
    with engine.dtype_policy(ctx.policy), strategy.scope():
        model = _build_model(ctx)
        _write_hparams_once(ctx)
        head_epochs = _head_phase(ctx, model, splits)
        _fine_tune_phase(ctx, model, splits, head_epochs)
        evaluations = _final_evaluations(ctx, model, splits)
        evaluations, calibration_info = _calibrate(ctx, model, evaluations)
        flipped = _flip_averaged(ctx, model, splits) if config.flip_test else None
    history = _history(ctx)
    fine_tune_start = head_epochs if config.fine_tune_epochs > 0 else None
    metrics = _metrics(ctx, evaluations, history, fine_tune_start, calibration_info, flipped)
    _finish(ctx, model, metrics)
    return TrainResult(model=model, class_names=ctx.class_names, history=history, fine_tune_start=fine_tune_start,
                       metrics=jsonable(metrics), evaluation=evaluations.get("val"), output_dir=run.root)
