"""tumor-classifier: train, evaluate honestly, explain and serve CNNs that classify breast
images as BEN (benign finding), CAN (malignant finding) or NOR (normal).

Research software, not a medical device: not for diagnosis.
"""

from __future__ import annotations

import os

__version__ = "0.1.0"

# Keras reads its backend once, at import: TensorFlow is the default (fastest on CPU for
# these models); set KERAS_BACKEND=jax for GPUs.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from .imaging import ImageReadError, read_image  # noqa: E402
from .preprocessing import preprocess  # noqa: E402

__all__ = ["ImageReadError", "__version__", "preprocess", "read_image"]
