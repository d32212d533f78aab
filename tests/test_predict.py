from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from tumor_classifier.explain import grad_cam
from tumor_classifier.predict import Classifier, Prediction, write_predictions


@pytest.mark.slow
def test_classifier_grad_cam_explains_the_layer_its_config_names(trained_run: Path,
                                                                 prepared_mias: Path) -> None:
    classifier = Classifier.load(trained_run)
    film = next((prepared_mias / "test" / "CAN").glob("*.png"))
    model_input = classifier.read(film)[1]
    default = classifier.grad_cam(model_input, "CAN")
    np.testing.assert_array_equal(default, grad_cam(classifier.model, model_input, 1))
    # config.json's gradcam_layer (set by hand) is honoured by predict, the app and serve
    first_convolution = next(layer.name for layer in classifier.model.layers
                             if type(layer).__name__ == "Conv2D")
    classifier.config["gradcam_layer"] = first_convolution
    named = classifier.grad_cam(model_input, "CAN")
    np.testing.assert_array_equal(
        named, grad_cam(classifier.model, model_input, 1, layer_name=first_convolution))
    assert not np.array_equal(named, default)
    classifier.config["gradcam_layer"] = "nope"
    with pytest.raises(ValueError, match=r"Grad-CAM layer 'nope' not in the model"):
        classifier.grad_cam(model_input, "CAN")


def test_predictions_csv_has_a_row_per_readable_file_in_order(tmp_path: Path) -> None:
    names = ("BEN", "CAN", "NOR")
    results = [
        Prediction("b.png", {"BEN": 0.1, "CAN": 0.7, "NOR": 0.2}, "CAN"),
        Prediction("bad.png", error="bad.png: not an image file"),
        Prediction("a.png", {"BEN": 0.5, "CAN": 0.25, "NOR": 0.25}, "BEN",
                   near_copy_of="train image x.png"),
    ]
    write_predictions(results, names, tmp_path / "out.csv")
    with (tmp_path / "out.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert rows == [
        ["file", "prediction", "prob_BEN", "prob_CAN", "prob_NOR", "near_copy_of"],
        ["b.png", "CAN", "0.100000", "0.700000", "0.200000", ""],
        ["a.png", "BEN", "0.500000", "0.250000", "0.250000", "train image x.png"],
    ]


@pytest.mark.slow
def test_a_paired_model_pairs_dicom_films_by_their_headers(paired_run: Path, prepared_mias: Path,
                                                            tmp_path: Path) -> None:
    from PIL import Image

    from conftest import write_dicom

    with (prepared_mias / "split.csv").open() as handle:
        row = next(row for row in csv.DictReader(handle) if row["split"] == "test")
    films = [prepared_mias / row["file"], prepared_mias / row["other_breast"]]
    scans = [write_dicom(tmp_path / f"{number}.dcm",
                         np.asarray(Image.open(film).convert("L")), PatientID="W1",
                         ViewPosition="MLO", ImageLaterality="LR"[number])
             for number, film in enumerate(films)]
    classifier = Classifier.load(paired_run)
    by_header = classifier.predict(scans)
    by_split_csv = classifier.predict(films)
    assert all(result.error is None for result in by_header + by_split_csv)
    for dicom, png in zip(by_header, by_split_csv, strict=True):
        assert dicom.probabilities == pytest.approx(png.probabilities, abs=1e-5)


def test_the_model_card_shows_the_test_evaluation_once_there_is_one(
        trained_run: Path, prepared_mias: Path, tmp_path: Path) -> None:
    import shutil

    from tumor_classifier.evaluate import evaluate

    split, metrics = Classifier.load(trained_run).evaluation() or ("", {})
    validation = list((prepared_mias / "validation").rglob("*.png"))
    assert split == "validation" and metrics["n"] == len(validation)  # written by train
    run = tmp_path / "run"
    shutil.copytree(trained_run, run, copy_function=lambda src, dst: Path(dst).hardlink_to(src))
    written = evaluate(run, prepared_mias / "test")
    split, metrics = Classifier.load(run).evaluation() or ("", {})
    assert split == "test" and metrics["accuracy"] == written["accuracy"]
    assert Classifier(None, Classifier.load(run).config).evaluation() is None  # no run dir


def test_batches_shrink_with_the_input_and_change_no_probability() -> None:
    import keras

    calls: list[int] = []

    class Recorder(keras.Model):
        def predict_on_batch(self, batch: np.ndarray) -> np.ndarray:
            calls.append(len(batch))
            return np.stack([batch.mean(axis=(1, 2, 3)), batch.max(axis=(1, 2, 3)),
                             batch.min(axis=(1, 2, 3))], axis=1)

    config = {"class_names": ["BEN", "CAN", "NOR"], "image_size": 512, "channels": 1}
    classifier = Classifier(Recorder(), config)
    images = np.random.default_rng(0).random((40, 512, 512, 2), np.float32)
    batched = classifier.predict_batch(images)
    assert calls == [8] * 5  # 4M input values a batch: 8 of 512 x 512 x 2
    np.testing.assert_allclose(batched, classifier.predict_batch(images, batch_size=1))
    calls.clear()
    classifier.predict_batch(images[:, :128, :128])
    assert calls == [40]  # small inputs: up to 64 at a time
