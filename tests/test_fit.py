"""The fit loop's parts: optimizer schedule, loss, early stopping across a resume. (Training
end to end, mixed precision included, is in test_train.py.)"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from tumor_classifier.config import TrainConfig
from tumor_classifier.fit import build_loss, build_optimizer, early_stopping


def test_focal_loss_and_cosine_schedule() -> None:
    config = TrainConfig(model="seed", data_dir="", out="", epochs=5, learning_rate=0.01,
                         lr_schedule="cosine", loss="focal")
    schedule = build_optimizer(config, config.learning_rate, total_steps=20).learning_rate
    assert float(schedule) == pytest.approx(0.01)  # at step 0
    decay = build_optimizer(config, 0.01, 20)._learning_rate
    assert float(decay(10)) == pytest.approx(0.005, rel=1e-4)  # half way: half the rate
    assert float(decay(20)) == pytest.approx(0.0, abs=1e-7)
    # focal loss (gamma 2) of a prediction p for the true class is -(1 - p)^2 log p
    y_true, y_pred = np.array([[0.0, 1.0, 0.0]]), np.array([[0.2, 0.7, 0.1]])
    focal = float(build_loss("focal")(y_true, y_pred))
    assert focal == pytest.approx(-(0.3 ** 2) * np.log(0.7), rel=1e-4)
    crossentropy = float(build_loss("crossentropy")(y_true, y_pred))
    assert crossentropy == pytest.approx(-np.log(0.7), rel=1e-4)
    # smoothing 0.3 over 3 classes: targets 0.1, 0.8, 0.1
    smoothed = float(build_loss("crossentropy", 0.3)(y_true, y_pred))
    assert smoothed == pytest.approx(-(0.1 * np.log(0.2) + 0.8 * np.log(0.7)
                                       + 0.1 * np.log(0.1)), rel=1e-4)
    with pytest.raises(ValueError, match="--loss 'dice': use crossentropy or focal"):
        build_loss("dice")
    with pytest.raises(ValueError, match="--lr-schedule 'step': use constant or cosine"):
        build_optimizer(TrainConfig(model="seed", data_dir="", out="", lr_schedule="step"),
                        0.01, 4)


def test_a_resumed_run_stops_early_where_the_uninterrupted_run_would() -> None:
    import keras

    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    losses = [1.0, 0.8, 0.9, 0.8, 0.95, 0.7, 0.75, 0.72, 0.71, 0.74, 0.69, 0.7]

    def stopping_epoch(stopper: Any, first_epoch: int) -> int | None:
        stopper.set_model(model)
        model.stop_training = False
        stopper.on_train_begin()
        for epoch in range(first_epoch, len(losses)):
            stopper.on_epoch_end(epoch, {"val_loss": losses[epoch]})
            if model.stop_training:
                return epoch
        return None

    for patience in (1, 2, 3):
        uninterrupted = stopping_epoch(early_stopping(patience), 0)
        assert uninterrupted is not None
        for finished in range(1, uninterrupted + 1):  # interrupted after `finished` epochs
            resumed = stopping_epoch(early_stopping(patience, losses[:finished]), finished)
            assert resumed == uninterrupted, (patience, finished)
