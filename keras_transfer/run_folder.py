"""The run folder: everything `output_dir` means, in one object.

`RunFolder(root)` owns the files of a training run:

    root/
      .lock                      held (flock) by the process running in it
      model.keras, classes.json, metrics.json     the outputs
      tensorboard/
      state/run.json             fingerprint and per-phase state (resume)
      state/features.npz         cached backbone features of phase 1
      state/bottom_<view>.npy    phase 2's cached bottom outputs (train, train_flip, val)
      state/initial.weights.h5   the starting weights (same on resumption)
      state/head.weights.h5      the classifier after phase 1 (fine_tune.weights.h5: phase 2)
      state/history_<phase>.json epoch records + the name of the epoch backup
      state/backup_<phase>/epoch_<n>.weights.h5   weights after epoch n (the last, and
                                 the best one of a phase that keeps its best epoch)
      state/backup_<phase>/start.weights.h5       the weights that phase started from

Every file is written atomically (`keras_transfer.files`), so a kill at any
instant leaves the folder resumable; an unreadable file is reported as
`CorruptFileError` naming it and the way forward. `NoRunFolder()` is the
same interface writing nothing (the weights a phase may return to are kept
in memory), for runs without an `output_dir`.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from typing import Any

from keras_transfer import files
from keras_transfer.errors import CorruptFileError, FolderInUseError

MODEL_FILE = "model.keras"
CLASSES_FILE = "classes.json"
METRICS_FILE = "metrics.json"
TENSORBOARD_DIR = "tensorboard"
STATE_DIR = "state"
LOCK_FILE = ".lock"
WORKERS_DIR = ".workers"

_RUN_STATE = "run.json"
_FEATURES = "features.npz"
_BOTTOM_PREFIX = "bottom_"
_INITIAL_WEIGHTS = "initial.weights.h5"
_HEAD_WEIGHTS = "head.weights.h5"
_FINE_TUNE_WEIGHTS = "fine_tune.weights.h5"
_START_BACKUP = "start.weights.h5"  # a phase's starting weights, while it may return to them

# What --overwrite may remove: only what a run writes.
RUN_OUTPUTS = (MODEL_FILE, CLASSES_FILE, METRICS_FILE, TENSORBOARD_DIR, STATE_DIR, WORKERS_DIR)


_HELD: set[str] = set()


@contextlib.contextmanager
def folder_lock(root: str | os.PathLike, *, command: str | None = None) -> Iterator[None]:
    """Holds `root/.lock` for the block; another live holder raises `FolderInUseError`.

    The lock is an advisory `flock`, which the kernel releases when its
    process dies, so the lock file a killed run leaves behind blocks nothing.
    """
    import fcntl

    root = files.check_writable_dir(root)
    path = os.path.join(root, LOCK_FILE)
    key = os.path.realpath(path)
    if key in _HELD:  # this process holds it already (a command around `train`)
        yield
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "another process"
            raise FolderInUseError(
                f"{root!r} is in use by {holder}; wait for it to finish or choose another output folder."
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"process {os.getpid()}{f' ({command})' if command else ''}".encode(), 0)
        _HELD.add(key)
        try:
            yield
        finally:
            _HELD.discard(key)
    finally:
        os.close(fd)  # releases the lock


class RunFolder:
    """The files of one training run in `root` (see the module docstring)."""

    enabled = True

    def __init__(self, root: str | os.PathLike):
        self.root = os.fspath(root)
        self.state_dir = os.path.join(self.root, STATE_DIR)
        self.tensorboard = os.path.join(self.root, TENSORBOARD_DIR)

    def path(self, name: str) -> str:
        return os.path.join(self.root, name)

    def _state_path(self, name: str) -> str:
        return os.path.join(self.state_dir, name)

    def prepare(self) -> None:
        """Creates the state folder and removes temporary files that a killed write left."""
        os.makedirs(self.state_dir, exist_ok=True)
        folders = [self.root] + [folder for folder, _, _ in os.walk(self.state_dir)]
        for folder in folders:
            if not os.path.isdir(folder):  # inside a temporary folder removed just before
                continue
            for name in os.listdir(folder):
                if files.is_temporary(name):
                    path = os.path.join(folder, name)
                    if os.path.isdir(path) and not os.path.islink(path):  # `files.atomic_dir`'s (e.g. an export)
                        shutil.rmtree(path, ignore_errors=True)
                        continue
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(path)

    # ------------------------------------------------------------- run state
    def load_state(self) -> dict[str, Any]:
        path = self._state_path(_RUN_STATE)
        if not os.path.isfile(path):
            return {}
        return self._read_json(path, "resume state")

    def save_state(self, state: Mapping[str, Any]) -> None:
        files.write_json(self._state_path(_RUN_STATE), state)

    def model_exists(self) -> bool:
        return os.path.isfile(self.path(MODEL_FILE))

    def clear_state(self) -> None:
        # Renamed aside first (a temporary name `prepare` removes), so that a kill
        # during the removal leaves all of the old state or none of it.
        if os.path.isdir(self.state_dir):
            aside = tempfile.mkdtemp(prefix=f".{STATE_DIR}.", suffix=".tmp", dir=self.root)
            os.replace(self.state_dir, aside)
            shutil.rmtree(aside, ignore_errors=True)
        self.prepare()

    # --------------------------------------------------------------- weights
    def has_weights(self, which: str) -> bool:
        return os.path.isfile(self._weights_path(which))

    def save_weights(self, model, which: str) -> None:
        """`which`: "initial" (before training) or a phase name (after it)."""
        with files.atomic_path(self._weights_path(which), suffix=".weights.h5") as tmp:
            model.save_weights(tmp)

    def load_weights(self, model, which: str) -> None:
        self._load_weights_file(model, self._weights_path(which), f"{which} weights")

    def _weights_path(self, which: str) -> str:
        return self._state_path(f"{which}.weights.h5")

    def _load_weights_file(self, model, path: str, what: str) -> None:
        try:
            model.load_weights(path)
        except (OSError, ValueError, KeyError) as error:
            raise CorruptFileError(
                f"The run's {what} {path!r} cannot be read ({_first_line(error)}); "
                f"start over with --overwrite (or delete {self.state_dir!r})."
            ) from error

    # -------------------------------------------------------------- features
    def load_features(self) -> dict | None:
        path = self._state_path(_FEATURES)
        if not os.path.isfile(path):
            return None
        try:
            return files.load_npz(path, what="cached features file")
        except CorruptFileError:
            # Features are recomputed from the data: a damaged file costs time, not results.
            os.remove(path)
            return None

    def save_features(self, arrays: Mapping) -> None:
        files.save_npz(self._state_path(_FEATURES), dict(arrays))

    def bottom_path(self, view: str) -> str:
        """The file of phase 2's cached bottom outputs of one view (`training.TrainConfig.cache_bottom`)."""
        return self._state_path(f"{_BOTTOM_PREFIX}{view}.npy")

    # ------------------------------------------------------- epoch histories
    def load_history(self, phase: str) -> tuple[dict[int, dict[str, float]], str | None]:
        """(records by epoch, the backup weights file of the last record or None)."""
        path = self._state_path(f"history_{phase}.json")
        if not os.path.isfile(path):
            return {}, None
        saved = self._read_json(path, f"{phase} history")
        # JSON has no NaN: `files.write_json` wrote a non-finite value (a diverged loss) as null.
        records = {int(k): {key: math.nan if value is None else value for key, value in v.items()}
                   for k, v in saved.get("records", {}).items()}
        backup = saved.get("backup")
        return records, (os.path.join(self._backup_dir(phase), backup) if backup else None)

    def save_start(self, phase: str, model) -> None:
        """Backs up the weights a phase starts from (kept until the phase ends: they may be its best)."""
        folder = self._backup_dir(phase)
        os.makedirs(folder, exist_ok=True)
        with files.atomic_path(os.path.join(folder, _START_BACKUP), suffix=".weights.h5") as tmp:
            model.save_weights(tmp)

    def save_epoch(self, phase: str, records: Mapping[int, Mapping[str, float]], model, epoch: int, *,
                   keep: int | None = None) -> None:
        """Backs up `model` after `epoch`, then commits the records that point to it.

        The backups of other epochs are removed, except that of epoch `keep`
        (the best so far, when the phase keeps its best epoch) and the
        phase's start.
        """
        folder = self._backup_dir(phase)
        os.makedirs(folder, exist_ok=True)
        name = _epoch_backup(epoch)
        with files.atomic_path(os.path.join(folder, name), suffix=".weights.h5") as tmp:
            model.save_weights(tmp)
        history = {"records": {str(k): v for k, v in sorted(records.items())}, "backup": name}
        files.write_json(self._state_path(f"history_{phase}.json"), history)  # the commit point
        kept = {name, _START_BACKUP, *([_epoch_backup(keep)] if keep is not None else [])}
        for other in os.listdir(folder):
            if other not in kept:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(folder, other))

    def restore_epoch(self, model, backup: str) -> None:
        self._load_weights_file(model, backup, "epoch backup")

    def restore_best(self, model, phase: str, epoch: int | None) -> None:
        """Loads the backup of `epoch` of `phase` (`None`: the weights the phase started from)."""
        name = _START_BACKUP if epoch is None else _epoch_backup(epoch)
        self._load_weights_file(model, os.path.join(self._backup_dir(phase), name), "best epoch backup")

    def drop_backups(self, phase: str) -> None:
        shutil.rmtree(self._backup_dir(phase), ignore_errors=True)

    def _backup_dir(self, phase: str) -> str:
        return self._state_path(f"backup_{phase}")

    # --------------------------------------------------------------- outputs
    def save_model(self, model) -> None:
        from keras_transfer.models import save_model

        save_model(model, self.path(MODEL_FILE))

    def write_outputs(self, model, class_names, metrics: Mapping[str, Any]) -> None:
        """The final files; the model first, so that `metrics.json` means a complete run."""
        self.save_model(model)
        files.write_json(self.path(CLASSES_FILE), list(class_names))
        files.write_json(self.path(METRICS_FILE), metrics)

    def finish(self) -> None:
        """Drops what only a resumption needed (the small state files stay)."""
        bottoms = [name for name in os.listdir(self.state_dir) if name.startswith(_BOTTOM_PREFIX)]
        for name in (_INITIAL_WEIGHTS, _HEAD_WEIGHTS, _FINE_TUNE_WEIGHTS, _FEATURES, *bottoms):
            with contextlib.suppress(FileNotFoundError):
                os.remove(self._state_path(name))
        for phase in ("head", "fine_tune"):
            self.drop_backups(phase)

    def load_metrics(self) -> dict[str, Any]:
        return self._read_json(self.path(METRICS_FILE), "metrics file")

    def _read_json(self, path: str, what: str) -> Any:
        try:
            return files.read_json(path, what=what)
        except CorruptFileError as error:
            raise CorruptFileError(
                f"{error} Start over with --overwrite (or delete {self.state_dir!r})."
            ) from error


class NoRunFolder(RunFolder):
    """A run without an output folder: the same interface, nothing written."""

    enabled = False

    def __init__(self):
        self.root = None
        self.state_dir = None
        self.tensorboard = None
        self._kept: dict[tuple[str, int | None], list] = {}

    def prepare(self) -> None:
        pass

    def load_state(self) -> dict[str, Any]:
        return {}

    def save_state(self, state) -> None:
        pass

    def model_exists(self) -> bool:
        return False

    def has_weights(self, which: str) -> bool:
        return False

    def save_weights(self, model, which: str) -> None:
        pass

    def load_features(self):
        return None

    def save_features(self, arrays) -> None:
        pass

    def load_history(self, phase: str):
        return {}, None

    # Without a folder, the weights a phase may return to are kept in memory,
    # with the optimizer's state as a weights file has it (e.g. the averaged
    # weights of an optimizer with `use_ema`).
    def save_start(self, phase: str, model) -> None:
        self._kept[(phase, None)] = _weights_and_optimizer(model)

    def save_epoch(self, phase, records, model, epoch, *, keep: int | None = None) -> None:
        self._kept = {k: v for k, v in self._kept.items() if k[0] != phase or k[1] in (None, keep)}
        self._kept[(phase, int(epoch))] = _weights_and_optimizer(model)

    def restore_best(self, model, phase: str, epoch: int | None) -> None:
        weights, optimizer_state = self._kept[(phase, epoch)]
        model.set_weights(weights)
        if optimizer_state is not None:
            for variable, value in zip(model.optimizer.variables, optimizer_state):
                variable.assign(value)

    def drop_backups(self, phase: str) -> None:
        self._kept = {k: v for k, v in self._kept.items() if k[0] != phase}

    def write_outputs(self, model, class_names, metrics) -> None:
        pass

    def finish(self) -> None:
        pass


def _weights_and_optimizer(model) -> tuple[list, list | None]:
    optimizer = getattr(model, "optimizer", None)
    state = [v.numpy() for v in optimizer.variables] if optimizer is not None and optimizer.built else None
    return model.get_weights(), state


def _epoch_backup(epoch: int) -> str:
    return f"epoch_{epoch}.weights.h5"


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
