"""Load a run directory and classify images: `Classifier.load(run_dir).predict(files)`."""

from __future__ import annotations

import csv
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .cache import CachedImages
from .config import load_json
from .data import list_images
from .explain import grad_cam
from .imaging import ImageReadError, Source, read_image, read_image_and_metadata
from .metrics import apply_temperature
from .near_copies import near_copy_sources, read_thumbnails, thumbnails
from .other_breast import WithOtherBreast, other_breasts
from .preprocessing import preprocess

logger = logging.getLogger(__name__)


# Input values (pixels x channels) in one batch of `Classifier.predict_batch`.
BATCH_VALUES = 2**22


@dataclass(frozen=True)
class Prediction:
    """One file's result: probabilities per class, or the reason it could not be classified."""

    file: str
    probabilities: dict[str, float] = field(default_factory=dict)
    prediction: str | None = None
    error: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    # "train image FILE" or "validation image FILE" where the image is one the model was
    # fitted on, or a near-copy of one (`near_copies.find_near_copies`): no test of the model.
    near_copy_of: str | None = None


def expand_paths(paths: Sequence[Path | str]) -> list[Path]:
    """Files as given, folders replaced by the image files inside them (sorted)."""
    result: list[Path] = []
    for path in map(Path, paths):
        result += list_images(path)[0] if path.is_dir() else [path]
    return result


class Classifier:
    """A trained model with the preprocessing recorded in its run directory."""

    def __init__(self, model: Any, config: dict[str, Any], run_dir: Path | None = None,
                 tta: bool | None = None) -> None:
        self.model = model
        self.config = config
        self.run_dir = run_dir
        # None: the run's own default, which `train` records (on for models trained with
        # top-bottom flips; off for runs from before 2026-12-06).
        self.tta: bool = bool(config.get("tta", False)) if tta is None else tta
        self.class_names: tuple[str, ...] = tuple(config["class_names"])
        self.image_size: int = int(config["image_size"])
        self.channels: int = int(config["channels"])
        self.crop_breast: bool = bool(config.get("preprocessing", {}).get("crop_breast", False))
        # Trained with --other-breast: every prediction needs the woman's other breast too.
        self.other_breast: bool = bool(config.get("preprocessing", {}).get("other_breast",
                                                                           False))
        calibration = config.get("calibration") or {}
        # Fitted on the validation split by `train`; 1.0 (no change) for older runs.
        self.temperature: float = float(calibration.get("temperature", 1.0))
        self.thresholds: dict[str, float] = dict(calibration.get("thresholds") or {})
        # Thumbnails of the training and validation images (None for older runs and ONNX).
        self.fitted_on = read_thumbnails(run_dir) if run_dir is not None else None

    @classmethod
    def load(cls, run_dir: Path | str, tta: bool | None = None) -> Classifier:
        """Load `model.keras` and `config.json` from a run directory written by `train`."""
        import keras

        from . import models  # noqa: F401  (registers the presets' own layers for loading)

        run_dir = Path(run_dir)
        model_path = run_dir / "model.keras"
        if not model_path.is_file():
            raise FileNotFoundError(
                f"{run_dir}: no model.keras; pass a run directory written by "
                "`tumor-classifier train`."
            )
        config = load_json(run_dir / "config.json")
        model = keras.models.load_model(model_path, compile=False)
        return cls(model, config, run_dir, tta)

    def evaluation(self) -> tuple[str, dict[str, Any]] | None:
        """The run's evaluation on its test split (`evaluate RUN DATA/test`), else on its
        validation split (which `train` writes), as (split, metrics.json); None without
        either or without a run directory. The app's and the REST service's model card."""
        if self.run_dir is None:
            return None
        for split in ("test", "validation"):
            path = Path(self.run_dir) / "evaluation" / split / "metrics.json"
            if path.is_file():
                return split, load_json(path)
        return None

    def predict_batch(self, images: np.ndarray | CachedImages | WithOtherBreast,
                      batch_size: int | None = None,
                      calibrated: bool = True, tta: bool | None = None) -> np.ndarray:
        """Class probabilities for preprocessed images (n, size, size, channels).

        `batch_size` None: 64 images of up to 256 x 256 x 1 (or 128 x 128 x 2), fewer of
        larger inputs, 4M input values a batch. The activations grow with the input: for
        seed_asymmetry's 512 x 512 x 2, 48 images took 6.2 GB of peak memory and 52 s in
        batches of 64, 2.0 GB and 38 s in batches of 8 (this CPU, 2026-12-07).

        Uses `predict_on_batch`, the model's compiled inference step, one batch at a time and
        in order: `model.predict` sets up a data pipeline per call (about 40-100 ms on
        TensorFlow, far more than the forward pass of one image), and calling the model
        eagerly runs it uncompiled (9 ms against 2 ms for the seed preset on this CPU).

        With `tta` (None: the classifier's own `tta`), the probabilities of the image and its
        vertical (top-bottom) flip are averaged; with `calibrated`, the run's temperature is
        applied (it never changes the argmax).
        """
        if len(images) == 0:
            return np.zeros((0, len(self.class_names)), np.float32)
        tta = self.tta if tta is None else tta
        if batch_size is None:
            batch_size = int(np.clip(BATCH_VALUES // np.prod(images[:1].shape[1:]), 1, 64))
        outputs = []
        for start in range(0, len(images), batch_size):
            batch = np.ascontiguousarray(images[start : start + batch_size], np.float32)
            probabilities = np.asarray(self.model.predict_on_batch(batch), np.float64)
            if tta:
                # Top-bottom, not left-right: the breast crop puts every chest wall on the
                # left, so a left-right flip shows the model breasts it never saw (measured
                # on mini-MIAS: macro AUC -0.028 at five seeds of five; top-bottom +0.007),
                # and top-bottom is the flip the augmented presets train with.
                flipped = np.ascontiguousarray(batch[:, ::-1, :, :])
                probabilities = (probabilities + np.asarray(
                    self.model.predict_on_batch(flipped), np.float64)) / 2
            outputs.append(probabilities)
        result = np.concatenate(outputs)
        if calibrated and self.temperature != 1.0:
            return apply_temperature(result, self.temperature)
        return result.astype(np.float32)

    def grad_cam(self, model_input: np.ndarray, class_name: str) -> np.ndarray:
        """Grad-CAM of `class_name` for one model input (`explain.grad_cam`), at the layer
        that config.json names as `gradcam_layer`, else the last convolution; of the
        nested model it names as `gradcam_model` (seed_asymmetry's seed branch), else of the
        whole model."""
        nested = self.config.get("gradcam_model")
        model = self.model.get_layer(nested) if nested else self.model
        return grad_cam(model, model_input, self.class_names.index(class_name),
                        self.config.get("gradcam_layer"))

    def preprocess(self, image: np.ndarray, other_breast: np.ndarray | None = None) -> np.ndarray:
        """`preprocessing.preprocess` with this model's recorded parameters: the model input.

        A model trained with --other-breast needs `other_breast`, the same woman's other
        film (same view), preprocessed the same way and put behind the image's channels.
        """
        model_input = self._film_input(image)
        if self.other_breast != (other_breast is not None):
            raise ValueError(
                "this model compares both breasts of a woman: give the other breast's film "
                "too (--other-breast)." if self.other_breast else
                "this model classifies one film; it was not trained with --other-breast.")
        if other_breast is None:
            return model_input
        return np.concatenate([model_input, self._film_input(other_breast)], axis=-1)

    def _film_input(self, image: np.ndarray) -> np.ndarray:
        return preprocess(image, self.image_size, self.channels, self.crop_breast)

    def _near_copies(self, model_inputs: np.ndarray) -> list[str | None]:
        """For a batch of model inputs, "train image FILE" (or validation) where one is an
        image the model was fitted on or a near-copy of one; None where not, or unknown."""
        if not self.fitted_on:
            return [None] * len(model_inputs)
        sources = near_copy_sources(thumbnails(model_inputs, np.arange(len(model_inputs))),
                                    self.fitted_on)
        return [f"{source[0]} image {source[1]}" if source else None for source in sources]

    def _prediction(self, label: str, row: np.ndarray, metadata: dict[str, Any],
                    near_copy_of: str | None) -> Prediction:
        return Prediction(
            near_copy_of=near_copy_of,
            file=label,
            probabilities={
                name: float(value) for name, value in zip(self.class_names, row, strict=True)
            },
            prediction=self.class_names[int(np.argmax(row))],
            metadata=metadata,
        )

    def predict_input(self, model_input: np.ndarray, label: str,
                      metadata: dict[str, Any] | None = None,
                      tta: bool | None = None) -> Prediction:
        """Classify one image already read and preprocessed (`self.preprocess`): for callers
        that also need the pixels (the app and the service show Grad-CAM), so nothing is
        decoded twice. The same computation as `predict`; `tta` as in `predict_batch` (the
        app and the service share one classifier between users, so each request says)."""
        row = self.predict_batch(model_input[np.newaxis], tta=tta)[0]
        return self._prediction(label, row, metadata or {},
                                self._near_copies(model_input[np.newaxis])[0])

    def _find_other_breasts(self, sources: Sequence[Source]) -> list[Path | None]:
        """Each path's other breast (`other_breast.other_breasts`: split.csv, or a file among
        these whose name differs only in LEFT/RIGHT (or mini-MIAS's mdb001 and mdb002) or
        whose DICOM header names the same
        patient and view, other side); None for uploads and unnamed pairs."""
        paths = [source if isinstance(source, (str, Path)) else None for source in sources]
        found = iter(other_breasts([path for path in paths if path is not None]))
        return [next(found) if path is not None else None for path in paths]

    def _read_other_breast(self, label: str, source: Source | None) -> np.ndarray:
        return read_image(self._other_breast_source(label, source))

    @staticmethod
    def _other_breast_source(label: str, source: Source | None) -> Source:
        if source is None:
            raise ImageReadError(
                f"{label}: no other breast given, named in split.csv (other_breast "
                "column) or found by its name (LEFT/RIGHT swapped, or mini-MIAS's mdb001 "
                "with mdb002) or DICOM header among "
                "the files given; this model compares "
                "both breasts of a woman: pass --other-breast.")
        return source

    def read(self, source: Source, other_breast: Source | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
        """One file's image as read and its model input. For a model trained with
        --other-breast, its other breast is `other_breast` or, for a path, the film that
        split.csv names."""
        image = read_image(source)
        if not self.other_breast:
            return image, self.preprocess(image)
        if other_breast is None:
            other_breast = self._find_other_breasts([source])[0]
        label = str(source) if isinstance(source, (str, Path)) else "upload"
        return image, self.preprocess(image, self._read_other_breast(label, other_breast))

    def predict(self, sources: Sequence[Source], names: Sequence[str] | None = None,
                batch_size: int = 32,
                other_breasts: Sequence[Source] | None = None) -> list[Prediction]:
        """Classify files (paths or open binary files), in order.

        For a model trained with --other-breast, `other_breasts[i]` is the other breast of
        `sources[i]`; without `other_breasts`, each path's other breast is looked up in
        split.csv or among `sources` by name (`other_breast.other_breasts`).

        A file that cannot be read, or whose other breast is missing, gets a `Prediction`
        with `error` set; the others go on.
        """
        if other_breasts is not None and len(other_breasts) != len(sources):
            raise ValueError(f"give one other-breast film for each of the {len(sources)} "
                             f"image(s) (--other-breast, in the same order), not "
                             f"{len(other_breasts)}.")
        partners: Sequence[Source | None] | None = other_breasts
        if self.other_breast and partners is None:
            partners = self._find_other_breasts(sources)
        results: list[Prediction | None] = [None] * len(sources)
        pending: list[tuple[int, str, np.ndarray, dict[str, Any]]] = []
        # With the other breast, a folder's films are each other's partners: each path is
        # decoded once and its model input kept until its last use (a woman's two films
        # lie side by side in a sorted folder, so few wait at a time).
        uses: Counter[Path] = Counter(
            Path(item).resolve() for item in [*sources, *(partners or [])]
            if isinstance(item, (str, Path)))
        kept: dict[Path, tuple[np.ndarray, dict[str, Any]]] = {}

        def film_input(source: Source, label: str | None) -> tuple[np.ndarray, dict[str, Any]]:
            key = Path(source).resolve() if isinstance(source, (str, Path)) else None
            found = kept.get(key) if key is not None else None
            if found is None:
                image, metadata = read_image_and_metadata(source, label)
                found = (self._film_input(image), metadata)
            if key is not None:
                uses[key] -= 1
                if uses[key] > 0:
                    kept[key] = found
                else:
                    kept.pop(key, None)
            return found

        def flush() -> None:
            batch = np.stack([item[2] for item in pending])
            probabilities, copies = self.predict_batch(batch), self._near_copies(batch)
            for (index, label, _, metadata), row, copy in zip(pending, probabilities, copies,
                                                              strict=True):
                results[index] = self._prediction(label, row, metadata, copy)
            pending.clear()

        for index, source in enumerate(sources):
            if names:
                label = names[index]
            elif isinstance(source, (str, Path)):
                label = str(source)
            else:
                label = str(getattr(source, "name", f"<upload {index + 1}>"))
            try:
                model_input, metadata = film_input(source, label)
                if partners is not None:
                    partner = self._other_breast_source(label, partners[index])
                    model_input = np.concatenate(
                        [model_input, film_input(partner, None)[0]], axis=-1)
            except ImageReadError as error:
                logger.error("%s", error)
                results[index] = Prediction(file=label, error=str(error))
                continue
            pending.append((index, label, model_input, metadata))
            if len(pending) == batch_size:
                flush()
        if pending:
            flush()
        return [result for result in results if result is not None]


def write_predictions(results: Sequence[Prediction], class_names: Sequence[str], path: Path
                      ) -> None:
    """`results` as CSV (file, prediction, prob_<class>..., near_copy_of), one row per file
    that could be read, in the order given."""
    with Path(path).open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "prediction"] + [f"prob_{name}" for name in class_names]
                        + ["near_copy_of"])
        for result in results:
            if not result.error:
                writer.writerow([result.file, result.prediction]
                                + [f"{result.probabilities[name]:.6f}" for name in class_names]
                                + [result.near_copy_of or ""])
