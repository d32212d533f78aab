"""Export a run directory for use outside Python/Keras: ONNX (with onnxruntime) or a
TensorFlow SavedModel, each carrying the class names and preprocessing as metadata.

The preprocessing that lives inside the Keras model (augmentation is inactive at inference)
is in the exported graph; the rest (reader, resize, crop, temperature) is described by the
metadata and repeated by `OnnxModel` + `Classifier`, so `predict --onnx` gives the Keras
model's probabilities.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .config import load_json, save_json

FORMATS = ("onnx", "saved-model")
METADATA_KEY = "tumor_classifier"


def _metadata(run_dir: Path) -> dict[str, Any]:
    config = load_json(run_dir / "config.json")
    return {
        "tumor_classifier_version": __version__,
        "model": config.get("model"),
        "class_names": config["class_names"],
        "image_size": config["image_size"],
        "channels": config["channels"],
        "preprocessing": config.get("preprocessing", {}),
        "calibration": config.get("calibration", {}),
        # Test-time augmentation (the mean with the top-bottom flip), repeated by
        # `predict --onnx` as by the Keras model.
        "tta": bool(config.get("tta", False)),
        "input": "float32 (batch, image_size, image_size, channels), pixels in [0, 1] from "
                 "tumor_classifier.imaging.read_image + preprocess; with "
                 "preprocessing.other_breast, the other breast's channels follow",
        "output": "class probabilities (softmax, before temperature scaling)",
    }


def _inference_model(model: Any) -> Any:
    """`model` called with training=False, as a model to export. Exporters call a model
    without a training flag; traced that way, the BatchNormalization of a graph that holds
    augmentation layers ran in training mode and the random ops of the augmentation were
    kept (ONNX runtimes lack them). Measured: ONNX outputs off by up to 0.5 without this."""
    import keras

    class Inference(keras.Model):
        def __init__(self, inner: Any) -> None:
            super().__init__(name=inner.name)
            self.inner = inner

        def call(self, inputs: Any) -> Any:
            return self.inner(inputs, training=False)

    return Inference(model)


def export(run_dir: Path | str, out: Path | str, file_format: str = "onnx") -> Path:
    """Write the run's model to `out` as ONNX (one file) or a SavedModel (a folder).

    Raises:
        ValueError: an unknown format.
        FileExistsError: `out` exists.
    """
    if file_format not in FORMATS:
        raise ValueError(f"Unknown export format {file_format!r}; choose one of "
                         f"{', '.join(FORMATS)}.")
    from .predict import Classifier

    run_dir, out = Path(run_dir), Path(out)
    if out.exists():
        raise FileExistsError(f"{out}: exists; choose another output path.")
    metadata = _metadata(run_dir)
    trained = Classifier.load(run_dir).model
    model = _inference_model(trained)
    # The model's own input (two images' channels with --other-breast): builds the graph.
    model(np.zeros((1, *trained.input_shape[1:]), np.float32))
    if file_format == "onnx":
        import onnx

        with warnings.catch_warnings():
            # Keras 3.15's tf2onnx shim probes `np.object`, which NumPy 2 answers with a
            # FutureWarning addressed to Keras, not to whoever exports.
            warnings.filterwarnings("ignore", message=r".*np\.object", category=FutureWarning)
            model.export(str(out), format="onnx", verbose=False)
        graph = onnx.load(str(out))
        entry = graph.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, json.dumps(metadata)
        onnx.save(graph, str(out))
    else:
        model.export(str(out), format="tf_saved_model", verbose=False)
        save_json(metadata, out / f"{METADATA_KEY}.json")
    return out


class OnnxModel:
    """An ONNX export run by onnxruntime, with the `predict_on_batch` that `Classifier`
    calls. Needs neither TensorFlow nor Keras."""

    def __init__(self, path: Path | str) -> None:
        try:
            import onnxruntime
        except ImportError:
            raise ImportError(
                "predict --onnx needs onnxruntime: pip install 'tumor-classifier[onnx]'"
            ) from None
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: ONNX model not found.")
        self.session = onnxruntime.InferenceSession(str(path),
                                                    providers=["CPUExecutionProvider"])
        custom = self.session.get_modelmeta().custom_metadata_map
        if METADATA_KEY not in custom:
            raise ValueError(f"{path}: no {METADATA_KEY} metadata; export it with "
                             "`tumor-classifier export RUN_DIR --format onnx OUT`.")
        self.metadata: dict[str, Any] = json.loads(custom[METADATA_KEY])
        self.input_name = self.session.get_inputs()[0].name

    def predict_on_batch(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self.session.run(None, {self.input_name: batch})[0])


def load_onnx_classifier(path: Path | str) -> Any:
    """A `Classifier` over an ONNX export: the same reading, preprocessing, temperature
    and batching as with the Keras model."""
    from .predict import Classifier

    model = OnnxModel(path)
    return Classifier(model, model.metadata, run_dir=None)


def saved_model_metadata(folder: Path | str) -> dict[str, Any]:
    return load_json(Path(folder) / f"{METADATA_KEY}.json")
