"""Streamlit app: upload mammograms, read every class's probability, see where the model
looked. A thin view over `predict` and `explain`; started by `tumor-classifier app RUN_DIR`
(which passes the run directory in $TUMOR_CLASSIFIER_RUN_DIR).

Research software, not a medical device.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st

from tumor_classifier.config import describe_class
from tumor_classifier.explain import overlay
from tumor_classifier.imaging import ImageReadError, read_image_and_metadata, stretch
from tumor_classifier.predict import Classifier

MAX_UPLOAD_MB = 200
UPLOAD_TYPES = ["png", "jpg", "jpeg", "tif", "tiff", "bmp", "pgm", "dcm", "dicom"]
NOTICE = ("**Research software, not a medical device.** Not for diagnosis, screening or any "
          "decision about a patient.")
DISPLAY_SIDE = 1024  # display resolution; the model input is computed from the full image


@st.cache_resource
def load_classifier(run_dir: str) -> Classifier:
    """Loaded once per server process and shared by every session."""
    return Classifier.load(run_dir)


def model_card(classifier: Classifier) -> None:
    config = classifier.config
    st.sidebar.header("Model card")
    st.sidebar.warning(NOTICE)
    st.sidebar.markdown(
        f"- **Model**: `{config.get('model', '?')}`, {config.get('parameters', 0):,} parameters\n"
        f"- **Classes** (output order): {', '.join(classifier.class_names)}\n"
        f"- **Input**: {classifier.image_size}×{classifier.image_size}×{classifier.channels}"
        + (" and the same woman's other breast\n" if classifier.other_breast else "\n") +
        f"- **Trained**: {str(config.get('finished', '?'))[:10]}\n"
        f"- **Temperature** (calibration): {classifier.temperature:.2f}"
    )
    # A model trained with class weights or balanced batches gives probabilities that
    # weigh the classes so, not by how common they are (README, "Calibration and class
    # weights").
    weights = config.get("class_weight")
    if weights:
        st.sidebar.markdown(
            "- **Class weights** in training: "
            + ", ".join(f"{name} {value:.2f}" for name, value in weights.items())
            + ": the probabilities weigh the classes so, not by how common they are")
    elif config.get("training", {}).get("sampling") == "balanced":
        st.sidebar.markdown("- **Balanced batches** in training: the probabilities weigh "
                            "the classes equally, not by how common they are")
    data = config.get("data", {})
    if data:
        st.sidebar.markdown("**Training data** (images per class)")
        st.sidebar.table({split: data[split] for split in ("train", "validation")
                          if split in data})
    evaluation = classifier.evaluation()
    if evaluation:
        st.sidebar.markdown(evaluation_summary(*evaluation))


def evaluation_summary(split: str, metrics: dict[str, Any]) -> str:
    """The run's evaluation as the model card shows it: each number with its 95% interval
    (a few dozen test images leave them wide), next to the majority baseline."""
    intervals = metrics.get("confidence_intervals") or {}

    def shown(value: float | None, key: str) -> str:
        if value is None:
            return "n/a"
        interval = intervals.get(key)
        return f"{value:.3f}" + (f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "")

    # The validation split chose nothing with the default --keep last, but it calibrated
    # the model and set its thresholds: a test split is the unbiased measure.
    caveat = (" (used in training for calibration; evaluate on a test split for the number "
              "to report)" if split == "validation" else "")
    lines = [
        f"**Evaluation on the {split} split**{caveat}, n = {metrics['n']}; 95% intervals by "
        f"bootstrap over {metrics.get('bootstrap_unit', 'images')}:",
        "",
        f"- accuracy {shown(metrics['accuracy'], 'accuracy')} (majority baseline "
        f"{metrics['majority_baseline']:.3f})",
        f"- balanced accuracy {shown(metrics['balanced_accuracy'], 'balanced_accuracy')}",
        f"- macro AUC {shown(metrics.get('macro_auc_ovr'), 'macro_auc_ovr')}",
    ]
    for task, name in (("CAN_vs_rest", "CAN vs rest"), ("abnormal_vs_normal",
                                                       "abnormal vs normal")):
        if task in metrics.get("binary", {}):
            lines.append(f"- {name} AUC {shown(metrics['binary'][task]['auc'], f'auc_{task}')}")
    return "\n".join(lines)


def _display_image(image: np.ndarray) -> np.ndarray:
    """The image as read (DICOM windowed, MONOCHROME1 inverted), stretched to its own range
    as the model input is (a 12-bit image in a 16-bit file is not shown black), at most
    DISPLAY_SIDE."""
    from PIL import Image

    height, width = image.shape[:2]
    scale = min(1.0, DISPLAY_SIDE / max(height, width))
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        planes = [image] if image.ndim == 2 else [image[..., i] for i in range(3)]
        image = np.stack([np.asarray(Image.fromarray(plane.astype(np.float32)).resize(
            size, Image.Resampling.BILINEAR)) for plane in planes], axis=-1).squeeze()
    return stretch(image)


def _probability_chart(probabilities: dict[str, float]) -> Any:
    """Horizontal bars on a fixed 0-1 axis, so small differences are not magnified."""
    import altair as alt

    rows = [{"class": name, "probability": value} for name, value in probabilities.items()]
    return alt.Chart(alt.Data(values=rows)).mark_bar().encode(
        x=alt.X("probability:Q", scale=alt.Scale(domain=[0, 1])),
        y=alt.Y("class:N", sort=list(probabilities)),
        tooltip=["class:N", alt.Tooltip("probability:Q", format=".4f")],
    ).properties(height=40 * len(rows))


def show_result(classifier: Classifier, name: str, data: bytes, opacity: float,
                other_breast: tuple[str, bytes] | None = None, tta: bool = False) -> None:
    """Classify one upload and show the decision, probabilities and Grad-CAM; a model
    trained with --other-breast also gets `other_breast` (name, bytes). With `tta`, the
    probabilities are the mean of the image's and its top-bottom flip's."""
    import io

    try:
        image, metadata = read_image_and_metadata(io.BytesIO(data), name)
        other = None
        if other_breast is not None:
            other = read_image_and_metadata(io.BytesIO(other_breast[1]), other_breast[0])[0]
    except ImageReadError as error:
        st.error(str(error))
        return
    model_input = classifier.preprocess(image, other)
    result = classifier.predict_input(model_input, name, metadata, tta=tta)
    assert result.prediction is not None
    decision = describe_class(result.prediction)
    st.subheader(f"{name}: {decision}")
    if result.near_copy_of:
        st.warning(f"This is a {result.near_copy_of} of this model, or a near-copy of it: "
                   "its result shows what the model learnt, not how it does on new images.")
    left, right = st.columns([3, 2])
    display = _display_image(image)
    heatmap = classifier.grad_cam(model_input, result.prediction)
    with left:
        st.image(overlay(display, heatmap, opacity) if opacity > 0 else display,
                 caption=f"Grad-CAM for '{result.prediction}' (opacity {opacity:.0%})",
                 width="stretch", clamp=True)
    with right:
        st.markdown("**Probabilities** (calibrated" + (", mean with the top-bottom flip)"
                                                        if tta else ")"))
        st.altair_chart(_probability_chart(result.probabilities), width="stretch")
        st.table({"class": list(result.probabilities),
                  "description": [describe_class(k) for k in result.probabilities],
                  "probability": [f"{v:.6f}" for v in result.probabilities.values()]})
        if metadata.get("format") == "DICOM":
            st.markdown("**DICOM**")
            st.table({"attribute": ["modality", "view", "laterality", "bits stored",
                                    "photometric interpretation"],
                      "value": [str(metadata.get(key) or "—") for key in (
                          "modality", "view", "laterality", "bits_stored",
                          "photometric_interpretation")]})
        else:
            st.caption(f"{metadata.get('format')} · {metadata['width']}×{metadata['height']}"
                       f" · {metadata.get('bits_stored')}-bit")


def main() -> None:
    st.set_page_config(page_title="tumor-classifier", layout="wide")
    st.title("Mammogram classifier: benign, malignant or normal")
    st.info(NOTICE)
    run_dir = os.environ.get("TUMOR_CLASSIFIER_RUN_DIR", "")
    if not run_dir or not (Path(run_dir) / "model.keras").is_file():
        st.error(f"No trained model at {run_dir!r}: start the app with "
                 "`tumor-classifier app RUN_DIR`.")
        st.stop()
    classifier = load_classifier(run_dir)
    model_card(classifier)
    other_breast = None
    if classifier.other_breast:
        # This model compares a woman's two breasts: one film and its counterpart.
        single = st.file_uploader(
            "Upload the mammogram to classify (PNG, JPEG, TIFF, PGM or DICOM; nothing is "
            "stored)", type=UPLOAD_TYPES)
        other = st.file_uploader("and the same woman's other breast (same view)",
                                 type=UPLOAD_TYPES)
        uploads = [single] if single else []
        if other is not None:
            other_breast = (other.name, other.getvalue())
    else:
        uploads = st.file_uploader(
            "Upload mammograms (PNG, JPEG, TIFF, PGM or DICOM; nothing is stored)",
            type=UPLOAD_TYPES, accept_multiple_files=True)
    opacity = st.slider("Heat-map opacity", 0.0, 1.0, 0.4, 0.05)
    # The run's default, as in `evaluate` and `predict` (--tta/--no-tta): on for models
    # trained with top-bottom flips.
    tta = st.checkbox("Test-time augmentation: average with the image flipped top to bottom",
                      value=classifier.tta)
    if not uploads or (classifier.other_breast and other_breast is None):
        st.stop()
    for upload in uploads:
        data = upload.getvalue()
        if max(len(data), len(other_breast[1]) if other_breast else 0) > MAX_UPLOAD_MB * 2**20:
            st.error(f"{upload.name}: over the {MAX_UPLOAD_MB} MB limit; downsample or crop "
                     "the image first.")
            continue
        show_result(classifier, upload.name, data, opacity, other_breast, tta)


# Streamlit runs this file as __main__. The guard keeps other importers (multiprocessing's
# "spawn" re-imports the main module of a process that ran the app in tests) from
# starting a page.
if __name__ == "__main__":
    main()
