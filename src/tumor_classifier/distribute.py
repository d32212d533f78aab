"""Data-parallel training on the engines Keras already runs on (no home-made layer).

- JAX: `keras.distribution.DataParallel` over every visible device; across hosts,
  `keras.distribution.initialize` (which calls `jax.distributed.initialize`) configured by
  `KERAS_DISTRIBUTION_JOB_ADDRESSES`, `KERAS_DISTRIBUTION_NUM_PROCESSES` and
  `KERAS_DISTRIBUTION_PROCESS_ID` (or the coordinator options of `train`).
- TensorFlow: `tf.distribute.MirroredStrategy` over the local devices, or
  `MultiWorkerMirroredStrategy` when `TF_CONFIG` describes several workers.

The global batch (`--batch-size`) is split across devices; class weights travel with each
sample, so they, the checkpoints and the metrics behave as on one device.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from typing import Any

logger = logging.getLogger(__name__)

MODES = ("none", "data-parallel")


@contextlib.contextmanager
def distribution_scope(mode: str, batch_size: int) -> Iterator[int]:
    """Set up `mode` around model building and compiling; yields the number of devices."""
    if mode not in MODES:
        raise ValueError(f"--distribute {mode!r}: choose one of {', '.join(MODES)}.")
    if mode == "none":
        yield 1
        return
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        processes = int(os.environ.get("KERAS_DISTRIBUTION_NUM_PROCESSES", "1"))
        if processes > 1:
            keras.distribution.initialize()  # reads the KERAS_DISTRIBUTION_* variables
        devices = keras.distribution.list_devices()
        _check_batch(batch_size, len(devices))
        previous = keras.distribution.distribution()
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
        logger.info("data-parallel over %d JAX device(s) in %d process(es)", len(devices),
                    processes)
        try:
            yield len(devices)
        finally:
            keras.distribution.set_distribution(previous)
    elif backend == "tensorflow":
        import tensorflow as tf

        workers = len(json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
                      .get("worker", []))
        strategy: Any = (tf.distribute.MultiWorkerMirroredStrategy() if workers > 1
                         else tf.distribute.MirroredStrategy())
        _check_batch(batch_size, strategy.num_replicas_in_sync)
        logger.info("data-parallel over %d TensorFlow replica(s)",
                    strategy.num_replicas_in_sync)
        with strategy.scope():
            yield strategy.num_replicas_in_sync
    else:
        raise ValueError(f"--distribute data-parallel supports the jax and tensorflow "
                         f"backends, not {backend!r}.")


def _check_batch(batch_size: int, devices: int) -> None:
    if batch_size % devices:
        raise ValueError(f"--batch-size {batch_size} must be a multiple of the {devices} "
                         "devices for data-parallel training (it is the global batch).")
