"""Data-parallel training on two simulated CPU devices matches one device."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tumor_classifier.config import TrainConfig
from tumor_classifier.distribute import distribution_scope

TRAIN = """
import sys
import numpy as np
{setup}
import keras
from tumor_classifier import models
from tumor_classifier.config import TrainConfig
from tumor_classifier.train import train
{preset}
data, out, mode, model = sys.argv[1:5]
run = train(TrainConfig(data_dir=data, out=out, model=model, epochs=1, image_size=32,
                        batch_size=4, workers=1, distribute=mode, learning_rate=1e-2))
weights = keras.models.load_model(run / "model.keras", compile=False).get_weights()
np.save(out + "/weights.npy", np.concatenate([np.ravel(w) for w in weights]))
"""

TF_TWO_DEVICES = """
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
"""

# TensorFlow replicas draw their own dropout masks, so the TF comparison uses a preset
# without dropout; JAX runs one global program, so the seed preset itself matches.
TINY_PRESET = """
def tiny(input_shape, num_classes):
    return keras.Sequential([keras.Input(input_shape),
        keras.layers.Conv2D(4, 3, activation="relu"),
        keras.layers.MaxPooling2D(4), keras.layers.Flatten(),
        keras.layers.Dense(num_classes, activation="softmax")])
models.PRESETS["tiny"] = tiny
"""


def _train(small_dataset: Path, out: Path, mode: str, backend: str) -> np.ndarray:
    environment = {**os.environ, "KERAS_BACKEND": backend,
                   "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    script = TRAIN.format(setup=TF_TWO_DEVICES if backend == "tensorflow" else "",
                          preset=TINY_PRESET if backend == "tensorflow" else "")
    model = "tiny" if backend == "tensorflow" else "seed"
    done = subprocess.run([sys.executable, "-c", script, str(small_dataset), str(out), mode,
                           model], env=environment, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    devices = '"devices": 2' if mode == "data-parallel" else '"devices": 1'
    assert devices in (out / "config.json").read_text()
    return np.load(out / "weights.npy")


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "tensorflow"])
def test_two_devices_match_one(backend: str, small_dataset: Path, tmp_path: Path) -> None:
    if backend == "jax":
        pytest.importorskip("jax")
    # 8 training images: every batch of 4 (and the last) splits evenly over 2 devices, so
    # both runs see exactly the same batches.
    sorted((small_dataset / "train" / "NOR").iterdir())[0].unlink()
    one = _train(small_dataset, tmp_path / "one", "none", backend)
    two = _train(small_dataset, tmp_path / "two", "data-parallel", backend)
    np.testing.assert_allclose(two, one, atol=1e-5)
    assert np.abs(one).max() > 0.01  # trained weights, not zeros


def test_data_parallel_checks_its_options() -> None:
    with pytest.raises(ValueError, match=r"--distribute 'model-parallel': choose one of none"):
        with distribution_scope("model-parallel", 4):
            pass
    assert TrainConfig(model="seed", data_dir="d", out="o").distribute == "none"
