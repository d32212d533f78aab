"""Keras' `fit` on the cached images: the optimizer and its schedule, the loss, the dtype
policy, and the callbacks (checkpoint, early stopping, NaN stop, the backups that --resume
goes on from) that write `history.csv` into the run directory."""

from __future__ import annotations

import contextlib
import csv
import logging
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import resume
from .cache import CachedImages
from .config import TrainConfig
from .data import Batches, as_dataset
from .other_breast import WithOtherBreast

logger = logging.getLogger(__name__)


def fit(model: Any, config: TrainConfig, x_train: CachedImages | WithOtherBreast,
        train_rows: np.ndarray, y_train: np.ndarray, x_val: CachedImages | WithOtherBreast,
        val_rows: np.ndarray, y_val: np.ndarray, num_classes: int,
        weights: dict[int, float] | None, run_dir: Path, devices: int) -> None:
    """`model.fit` on the cached images with the checkpoint, history, early stopping and the
    backups that --resume goes on from."""
    import keras

    run_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = run_dir / "model.keras"
    finished = resume.finished_epochs(run_dir) if config.resume else 0
    best_so_far, previous_losses = None, []
    if finished:
        resume.truncate_history(run_dir, finished)
        previous_losses = read_history(run_dir).get("val_loss", [])
        losses = [loss for loss in previous_losses if math.isfinite(loss)]
        best_so_far = min(losses) if losses else None
        logger.info("resuming %s after epoch %d of %d", run_dir, finished, config.epochs)
    callbacks: list[Any] = [
        *resume.backup_callbacks(run_dir),
        keras.callbacks.CSVLogger(str(run_dir / "history.csv"), append=bool(finished)),
        # A NaN loss never recovers: stop there (the checkpoint keeps the best finite epoch).
        keras.callbacks.TerminateOnNaN(),
    ]
    if config.keep == "best":  # "last" saves once after fit, not at every epoch
        callbacks.append(keras.callbacks.ModelCheckpoint(
            checkpoint, monitor="val_loss", save_best_only=True,
            initial_value_threshold=best_so_far))
    if config.patience is not None:
        callbacks.append(early_stopping(config.patience, previous_losses))
    # Validation: the whole split in order every epoch, or with --validation-steps the same
    # seeded random subset (files are sorted by class, so a plain prefix would be one class).
    val_subset = np.arange(len(val_rows))
    if config.validation_steps is not None:
        count = min(len(val_rows), config.validation_steps * config.batch_size)
        val_subset = np.sort(
            np.random.default_rng(config.seed).permutation(len(val_rows))[:count]
        )
    if devices > 1:
        # Every batch, the last of a pass included, must split evenly over the devices
        # (the batch size is a multiple of them): leave out the last few images if needed.
        keep = len(train_rows) - len(train_rows) % devices
        train_rows, y_train = train_rows[:keep], y_train[:keep]
        val_subset = val_subset[: len(val_subset) - len(val_subset) % devices]
    train_batches = Batches(x_train, train_rows, y_train, num_classes, config.batch_size,
                            weights, config.seed, config.steps_per_epoch,
                            balanced=config.sampling == "balanced")
    callbacks.append(keras.callbacks.LambdaCallback(
        on_epoch_begin=lambda epoch, logs=None: train_batches.set_epoch(epoch)))
    model.fit(
        as_dataset(train_batches),
        epochs=config.epochs,
        # No steps_per_epoch: each epoch iterates the (finite) feed once, exactly
        # len(train_batches) batches; with it Keras would keep one iterator across epochs.
        # Batches shuffles (seeded, per pass); Keras' own shuffle would only reorder the
        # batches again on JAX and PyTorch, and warns on TensorFlow that it cannot.
        shuffle=False,
        validation_data=as_dataset(Batches(x_val, val_rows[val_subset], y_val[val_subset],
                                           num_classes, config.batch_size, seed=None)),
        callbacks=callbacks,
        verbose=2,  # one line per epoch
    )
    if config.keep == "last":
        model.save(checkpoint)


def early_stopping(patience: int, previous_losses: Sequence[float] = ()) -> Any:
    """Keras' EarlyStopping on the validation loss. A resumed run passes the validation
    losses of its finished epochs: the count then goes on from the best of them, so the run
    stops at the epoch where the uninterrupted run would have."""
    import keras

    finite = [(loss, epoch) for epoch, loss in enumerate(previous_losses) if math.isfinite(loss)]

    class ResumedEarlyStopping(keras.callbacks.EarlyStopping):
        def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
            super().on_train_begin(logs)
            if finite:  # the first of equal losses, as EarlyStopping's strict "<" keeps
                self.best, best_epoch = min(finite)
                self.wait = len(previous_losses) - 1 - best_epoch

    return ResumedEarlyStopping(monitor="val_loss", patience=patience)


@contextlib.contextmanager
def precision_policy(precision: str) -> Iterator[str]:
    """Keras' dtype policy for building and training: "float32", or with "mixed" float16
    compute on GPUs (Keras then scales the loss) and bfloat16 elsewhere (CPUs and TPUs
    with bfloat16 units), variables in float32 either way. Restored afterwards."""
    import keras

    if precision not in ("float32", "mixed"):
        raise ValueError(f"--precision {precision!r}: use float32 or mixed.")
    policy = "float32"
    if precision == "mixed":
        # "gpu:0" (JAX), "/device:GPU:0" (TensorFlow), "cuda:0" (PyTorch)
        gpu = any("gpu" in device or "cuda" in device for device in
                  (str(d).lower() for d in keras.distribution.list_devices()))
        policy = "mixed_float16" if gpu else "mixed_bfloat16"
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield policy
    finally:
        keras.config.set_dtype_policy(previous)


def build_optimizer(config: TrainConfig, learning_rate: float, total_steps: int) -> Any:
    """Adam at a constant rate, or decayed along a cosine to 0 over all `total_steps`."""
    import keras

    if config.lr_schedule == "cosine":
        return keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(
            learning_rate, decay_steps=total_steps))
    if config.lr_schedule != "constant":
        raise ValueError(f"--lr-schedule {config.lr_schedule!r}: use constant or cosine.")
    return keras.optimizers.Adam(learning_rate)


def build_loss(name: str, label_smoothing: float = 0.0) -> Any:
    """Cross-entropy, or focal loss (Lin et al., 2017: gamma 2 down-weights the examples
    the model already gets right, an alternative to class weights for rare classes), each
    with optional label smoothing."""
    import keras

    if name == "focal":
        return keras.losses.CategoricalFocalCrossentropy(alpha=1.0, gamma=2.0,
                                                         label_smoothing=label_smoothing)
    if name != "crossentropy":
        raise ValueError(f"--loss {name!r}: use crossentropy or focal.")
    return keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing)


def read_history(run_dir: Path) -> dict[str, list[float]]:
    """history.csv as columns."""
    with (Path(run_dir) / "history.csv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return {key: [float(row[key]) for row in rows] for key in rows[0]} if rows else {}
