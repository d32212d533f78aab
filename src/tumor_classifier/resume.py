"""Resuming an interrupted `train` (--resume): what is kept in `RUN_DIR/backup/` at the end
of an epoch (every BACKUP_SECONDS of training), and the checks before a run starts or goes on.

Keras' `BackupAndRestore` keeps the weights, the optimizer state and the epoch, and deletes
its folder when `fit` ends. It leaves out the counters of the model's random streams
(dropout, augmentation); `SeedStates` keeps them beside it, so a resumed run draws what the
uninterrupted one would have and ends the same.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from .config import TrainConfig, load_json, save_json

BACKUP, OPTIONS = "backup", "options.json"
# Seconds of training between two backups. For `seed` at 256 px with two channels a
# backup writes 89 MB of weights and optimizer state in 0.15 s and copies the previous one
# in 0.07 s, against 1.2 s for an epoch of 144 films (2-core CPU): a backup every epoch
# would slow such runs by a fifth. At this interval the cost stays under 1%; a run stopped
# before its first backup starts again from the beginning.
BACKUP_SECONDS = 30.0
# Options that change how fast a run goes, not what it computes: free to differ on resume.
_FREE = ("workers", "cache_dir", "resume")
# Options added since a run may have started, with the value that repeats what runs
# started before them did.
_ADDED = {"label_smoothing": 0.0}


def check(config: TrainConfig, run_dir: Path) -> None:
    """A new run needs a fresh run directory; --resume needs an interrupted run that was
    started with the same options.

    Raises:
        FileExistsError: a finished or interrupted run is there, and no --resume.
        FileNotFoundError: --resume, but no interrupted run.
        ValueError: --resume with other options than the run started with.
    """
    interrupted = (run_dir / BACKUP / OPTIONS).is_file()
    if not config.resume:
        if interrupted:
            raise FileExistsError(
                f"{run_dir}: holds an interrupted run; continue it with --resume (and the same "
                "options), or choose another --out.")
        if (run_dir / "model.keras").exists():
            raise FileExistsError(
                f"{run_dir}: already holds a trained model; choose another --out.")
        return
    if not interrupted:
        raise FileNotFoundError(
            f"{run_dir}: no interrupted run to resume (no {BACKUP}/{OPTIONS}; a run that "
            "finished deletes it); train without --resume.")
    started = {**_ADDED, **load_json(run_dir / BACKUP / OPTIONS)}
    given = config.to_dict()
    changed = [f"--{key.replace('_', '-')} {_shown(started.get(key))} then, "
               f"{_shown(given[key])} now"
               for key in given if key not in _FREE and started.get(key) != given[key]]
    if changed:
        raise ValueError(f"{run_dir}: --resume needs the options the run started with; "
                         f"changed: {'; '.join(changed)}.")


def _shown(value: Any) -> str:
    return "the default" if value is None else repr(value)


def save_options(config: TrainConfig, run_dir: Path) -> None:
    """Record the options a run starts with (as given), for `check` on --resume."""
    (run_dir / BACKUP).mkdir(parents=True, exist_ok=True)
    save_json(config.to_dict(), run_dir / BACKUP / OPTIONS)


def finished_epochs(run_dir: Path) -> int:
    """Epochs an interrupted run finished, by its backup (0: none)."""
    metadata = run_dir / BACKUP / "training_metadata.json"  # written by BackupAndRestore
    return int(load_json(metadata)["epoch"]) if metadata.is_file() else 0


def truncate_history(run_dir: Path, epochs: int) -> None:
    """Keep the header and first `epochs` rows of history.csv: a run stopped between its
    backup and its log line has one row more than the backup (that epoch runs again)."""
    path = run_dir / "history.csv"
    if path.is_file():
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        path.write_text("".join(lines[: epochs + 1]), encoding="utf-8")


def backup_callbacks(run_dir: Path) -> list[Any]:
    """Callbacks for `fit`: at the end of an epoch (every BACKUP_SECONDS) they save, and at
    the start of a resumed `fit` they restore, everything the run needs to go on."""
    import keras

    class Backup(keras.callbacks.BackupAndRestore):
        """`BackupAndRestore` at the end of an epoch once BACKUP_SECONDS have passed."""

        def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
            super().on_train_begin(logs)
            self.last = time.monotonic()

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            if time.monotonic() - self.last >= BACKUP_SECONDS:
                super().on_epoch_end(epoch, logs)
                self.last = time.monotonic()

    class SeedStates(keras.callbacks.Callback):
        """The counters of the model's random streams, saved with each backup and restored
        with it."""

        def __init__(self, path: Path) -> None:
            super().__init__()
            self.path = path

        def _states(self) -> list[Any]:
            return [variable for variable in self.model.variables
                    if variable.path.endswith("seed_generator_state")]

        def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
            # Only with the backup of the same epoch (a run stopped between the two writes
            # keeps the fresh streams, as before this callback).
            if self.path.is_file() and (
                    saved := load_json(self.path))["epoch"] == finished_epochs(run_dir):
                for variable, value in zip(self._states(), saved["states"], strict=True):
                    variable.assign(np.asarray(value, variable.dtype))

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            if finished_epochs(run_dir) != epoch + 1:  # no backup at this epoch
                return
            save_json({"epoch": epoch + 1, "states": [
                keras.ops.convert_to_numpy(variable).tolist() for variable in self._states()]},
                self.path)

    backup = run_dir / BACKUP
    return [Backup(str(backup), double_checkpoint=True), SeedStates(backup / "seed_states.json")]
