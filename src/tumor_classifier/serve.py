"""REST service: `tumor-classifier serve RUN_DIR` (FastAPI on uvicorn).

    POST /v1/predict   multipart field `file` (PNG, JPEG, TIFF, PGM or DICOM); `?heatmap=true`
                       adds the Grad-CAM overlay as a base64 PNG; `?tta=true` averages
                       the image's probabilities with its top-bottom flip's (`?tta=false`
                       does not; by default, as the run records)
    GET  /v1/model     the model card
    GET  /healthz      liveness

The OpenAPI schema (`/openapi.json`) is the contract. A bad upload is a 4xx with a message
naming the problem, never a 500. Only whitelisted DICOM attributes are ever returned or
logged: no patient identifiers.
"""

from __future__ import annotations

import base64
import io
import logging
import threading
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, File, HTTPException, Query, UploadFile
from pydantic import BaseModel, Field

from . import __version__
from .config import describe_class
from .imaging import read_image_and_metadata
from .predict import Classifier

logger = logging.getLogger(__name__)

MAX_UPLOAD_BYTES = 200 * 1024 * 1024


class ModelInfo(BaseModel):
    name: str
    version: str


class DicomInfo(BaseModel):
    modality: str | None = None
    view: str | None = None
    laterality: str | None = None
    bits_stored: int | None = None
    photometric_interpretation: str | None = None


class PredictionResponse(BaseModel):
    file: str
    prediction: str = Field(description="the most probable class")
    decision: str = Field(description="the prediction in words")
    probabilities: dict[str, float] = Field(description="calibrated probability per class")
    model: ModelInfo
    dicom: DicomInfo | None = None
    heatmap_png_base64: str | None = Field(
        default=None, description="Grad-CAM overlay (PNG, base64), when heatmap=true")
    near_copy_of: str | None = Field(
        default=None, description="set when the upload is an image the model was trained or "
        "validated on, or a near-copy of one: 'train image FILE' or 'validation image FILE'")


class ModelCard(BaseModel):
    model: ModelInfo
    class_names: list[str]
    input_shape: list[int]
    preprocessing: dict[str, Any]
    training_data: dict[str, Any]
    trained: str | None
    evaluation: dict[str, Any] | None
    tta: bool  # what /v1/predict does without ?tta=
    notice: str


class Health(BaseModel):
    status: str


NOTICE = "Research software, not a medical device: not for diagnosis."


def create_app(run_dir: Path | str) -> FastAPI:
    """The service for one run directory; the model is loaded once."""
    run_dir = Path(run_dir)
    classifier = Classifier.load(run_dir)
    # One forward pass at a time: Keras models are not guaranteed thread-safe, and the
    # endpoints run in a thread pool.
    lock = threading.Lock()
    model_info = ModelInfo(name=str(classifier.config.get("model", "unknown")),
                           version=f"{run_dir.name} (tumor-classifier {__version__})")
    app = FastAPI(title="tumor-classifier", version=__version__,
                  description=f"Classify breast images as BEN, CAN or NOR. {NOTICE}")

    @app.get("/healthz")
    def healthz() -> Health:
        return Health(status="ok")

    @app.get("/v1/model")
    def model_card() -> ModelCard:
        evaluation = None
        if found := classifier.evaluation():
            split, metrics = found
            evaluation = {"split": split, **{key: metrics.get(key) for key in (
                "n", "accuracy", "balanced_accuracy", "majority_baseline", "majority_class",
                "macro_auc_ovr", "confidence_intervals", "bootstrap_unit")},
                "binary_auc": {task: result.get("auc")
                               for task, result in (metrics.get("binary") or {}).items()}}
        config = classifier.config
        return ModelCard(
            model=model_info, class_names=list(classifier.class_names),
            input_shape=list(config.get("input_shape") or [
                classifier.image_size, classifier.image_size, classifier.channels]),
            preprocessing=config.get("preprocessing", {}), training_data=config.get("data", {}),
            trained=config.get("finished"), evaluation=evaluation, tta=classifier.tta,
            notice=NOTICE)

    def _read(upload: UploadFile, name: str) -> bytes:
        data = upload.file.read(MAX_UPLOAD_BYTES + 1)
        if len(data) > MAX_UPLOAD_BYTES:
            raise HTTPException(413, f"{name}: over the {MAX_UPLOAD_BYTES // 2**20} MB limit.")
        return data

    @app.post("/v1/predict", responses={400: {"description": "unreadable or unsupported image"},
                                        413: {"description": "upload over the size limit"}})
    def predict(
        file: Annotated[UploadFile, File(description="PNG, JPEG, TIFF, PGM or DICOM image")],
        heatmap: Annotated[bool, Query(description="add the Grad-CAM overlay")] = False,
        tta: Annotated[bool | None, Query(
            description="test-time augmentation: average the probabilities of the image "
                        "and its top-bottom flip (default: as the run records: on for "
                        "models trained with that flip)")] = None,
        other_breast: Annotated[UploadFile | None, File(
            description="models trained with --other-breast: the same woman's other "
                        "breast (same view)")] = None,
    ) -> PredictionResponse:
        name = Path(file.filename or "upload").name
        try:
            image, metadata = read_image_and_metadata(io.BytesIO(_read(file, name)), name)
            other = None
            if other_breast is not None:
                other_name = Path(other_breast.filename or "other_breast").name
                other = read_image_and_metadata(
                    io.BytesIO(_read(other_breast, other_name)), other_name)[0]
            model_input = classifier.preprocess(image, other)
        # An ImageReadError, or a missing other breast for a model that needs one.
        except ValueError as error:
            raise HTTPException(400, str(error)) from None
        with lock:
            result = classifier.predict_input(model_input, name, metadata, tta=tta)
        prediction = str(result.prediction)
        response = PredictionResponse(
            file=name, prediction=prediction,
            decision=describe_class(prediction),
            probabilities=result.probabilities,
            model=model_info,
            near_copy_of=result.near_copy_of,
            dicom=DicomInfo(**{key: metadata.get(key) for key in DicomInfo.model_fields})
            if metadata.get("format") == "DICOM" else None,
        )
        if heatmap:
            from PIL import Image

            from .explain import overlay

            with lock:
                cam = classifier.grad_cam(model_input, prediction)
            buffer = io.BytesIO()
            Image.fromarray(overlay(image, cam)).save(buffer, format="PNG")
            response.heatmap_png_base64 = base64.b64encode(buffer.getvalue()).decode()
        logger.info("predicted %s for %s", prediction, name)
        return response

    return app
