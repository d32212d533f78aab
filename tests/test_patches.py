from __future__ import annotations

import importlib.util
import json
import logging
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tumor_classifier.config import TrainConfig
from tumor_classifier.data import scan_folder
from tumor_classifier.models import build_model
from tumor_classifier.patches import load_annotations, pretrain_on_patches, sample_patches
from tumor_classifier.train import train


@pytest.mark.parametrize("crop", [False, True])
def test_patches_from_real_lesions_and_normal_tissue(prepared_mias: Path, crop: bool) -> None:
    folder = scan_folder(prepared_mias / "train")
    annotations = load_annotations(prepared_mias)
    patches, targets = sample_patches(folder.files, folder.labels, folder.class_names,
                                      annotations, image_size=128, channels=1,
                                      patch_size=32, per_lesion=2, per_normal_image=1,
                                      crop=crop)
    counts = Counter(folder.class_names[t] for t in targets)
    assert set(counts) == {"BEN", "CAN", "NOR"}
    assert counts["NOR"] == folder.counts()["NOR"]  # one patch per normal film
    assert patches.shape == (len(targets), 32, 32, 1) and patches.dtype == np.float32
    # lesion patches are centred near the marked circles (mapped into the crop when
    # cropping): brighter than the film average (a wrong mapping lands on background)
    lesion = patches[targets != folder.class_names.index("NOR")]
    assert float(lesion[:, 12:20, 12:20].mean()) > 0.3
    weights = pretrain_on_patches("mammo_net", patches[:24], targets[:24], 3, epochs=1,
                                  batch_size=8, learning_rate=1e-3)
    whole = build_model("mammo_net", (128, 128, 1), 3)
    assert [w.shape for w in weights] == [tuple(w.shape) for w in whole.get_weights()]
    # the patch stage starts from the whole-image model's weights (a pretrained preset's
    # ImageNet weights): with no epoch to train, they come back unchanged
    start = whole.get_weights()
    kept = pretrain_on_patches("mammo_net", patches[:24], targets[:24], 3, epochs=0,
                               batch_size=8, learning_rate=1e-3, initial_weights=start)
    for old, new in zip(start, kept, strict=True):
        np.testing.assert_array_equal(old, new)


@pytest.mark.slow
def test_patch_pretraining_refuses_what_it_cannot_do(prepared_mias: Path,
                                                     tmp_path: Path) -> None:
    base = TrainConfig(model="seed",
                       data_dir=str(prepared_mias), out=str(tmp_path / "run"), epochs=1,
                       image_size=128, patch_pretrain_epochs=1, workers=1)
    with pytest.raises(ValueError, match=r"preset 'seed' has weights that depend on the "
                       r"input size"):
        train(base)
    with pytest.raises(FileNotFoundError, match="annotations.csv: not found"):
        load_annotations(tmp_path)


def test_hard_negatives_are_the_windows_the_model_finds_most_suspicious(
        caplog: pytest.LogCaptureFixture) -> None:
    from tumor_classifier.models import MIL_WINDOW
    from tumor_classifier.patches import most_suspicious_windows

    rng = np.random.default_rng(0)
    images = rng.random((3, 128, 128, 1)).astype(np.float32)
    model = build_model("mammo_mil", (128, 128, 1), 3)
    mined = most_suspicious_windows(model, images, per_image=2)
    assert mined.shape == (6, MIL_WINDOW, MIL_WINDOW, 1)
    # each is a window of its own image, on the model's 32-pixel grid of windows
    for index, patch in enumerate(mined):
        image = images[index // 2]
        assert any(np.array_equal(patch, image[row : row + 64, column : column + 64])
                   for row in range(0, 65, 32) for column in range(0, 65, 32))
    # pretraining with normal films mines in three rounds: 2 patches per film per round
    patches = rng.random((6, 64, 64, 1)).astype(np.float32)
    targets = np.array([0, 1, 2, 0, 1, 2])
    with caplog.at_level("INFO", logger="tumor_classifier.patches"):
        pretrain_on_patches("mammo_mil", patches, targets, 3, epochs=3, batch_size=4,
                            learning_rate=1e-3, normal_index=2, normal_images=images,
                            hard_negatives=2)
    assert "on 6 patches ([2, 2, 2]" in caplog.text
    assert "on 12 patches ([2, 2, 8]" in caplog.text
    assert "on 18 patches ([2, 2, 14]" in caplog.text


@pytest.mark.slow
def test_two_stage_training_on_real_lesions(prepared_mias: Path, tmp_path: Path,
                                            caplog: pytest.LogCaptureFixture) -> None:
    import keras

    options = dict(model="mammo_mil", image_size=128, epochs=1, patch_pretrain_epochs=3,
                   workers=1)
    with caplog.at_level("INFO"):
        run = train(TrainConfig(data_dir=str(prepared_mias), out=str(tmp_path / "run"),
                                **options))
    rounds = [line for line in caplog.messages if "lesion-patch pretraining on" in line]
    assert len(rounds) == 3  # patches, then twice more with mined hard negatives
    normal_counts = [int(line.split("[")[1].split("]")[0].split(", ")[2]) for line in rounds]
    assert normal_counts[0] < normal_counts[1] < normal_counts[2]
    model = keras.models.load_model(run / "model.keras", compile=False)
    assert model.predict(np.zeros((1, 128, 128, 1), np.float32), verbose=0).shape == (1, 3)
    # a fresh process (as `predict`, the app and the service are) loads its custom layer
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys; from tumor_classifier.predict import Classifier; "
         "print(Classifier.load(sys.argv[1]).class_names)", str(run)],
        capture_output=True, text=True, check=False)
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    assert "('BEN', 'CAN', 'NOR')" in loaded.stdout
    # its ONNX export (augmentation, frozen BatchNorm, custom head) gives the Keras
    # probabilities on real films
    if importlib.util.find_spec("tf2onnx") is not None:
        from tumor_classifier.export import export, load_onnx_classifier
        from tumor_classifier.predict import Classifier

        films = sorted((prepared_mias / "test").rglob("*.png"))[::8]
        onnx_results = load_onnx_classifier(export(run, tmp_path / "mil.onnx")).predict(films)
        for ours, theirs in zip(Classifier.load(run).predict(films), onnx_results,
                                strict=True):
            for name, value in ours.probabilities.items():
                assert theirs.probabilities[name] == pytest.approx(value, abs=1e-4)


@pytest.mark.slow
def test_a_dataset_without_lesion_circles_trains_on_whole_films_with_one_warning(
        small_dataset: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("INFO"):
        train(TrainConfig(data_dir=str(small_dataset), out=str(tmp_path / "run"),
                          model="mammo_mil", image_size=128, epochs=1, patch_pretrain_epochs=3,
                          workers=1))
    assert sum("no annotations.csv" in line and "whole images only" in line
               for line in caplog.messages) == 1
    assert not any("lesion-patch pretraining on" in line for line in caplog.messages)


@pytest.mark.slow
def test_a_resumed_run_without_a_backup_runs_its_patch_stage_again(
        small_dataset: Path, prepared_mias: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from tumor_classifier.data import Batches

    shutil.copy(prepared_mias / "annotations.csv", small_dataset / "annotations.csv")
    options = dict(data_dir=str(small_dataset), out=str(tmp_path / "run"), model="mammo_net",
                   image_size=64, epochs=2, batch_size=4, patch_pretrain_epochs=1, workers=1)

    def power_cut(batches: Any, epoch: int) -> None:
        raise RuntimeError("power cut")

    # stopped in its first epoch, long before the first backup (every 30 s of training)
    monkeypatch.setattr(Batches, "set_epoch", power_cut)
    with pytest.raises(RuntimeError, match="power cut"):
        train(TrainConfig(**options))
    monkeypatch.undo()
    caplog.set_level(logging.INFO, logger="tumor_classifier")
    run_dir = train(TrainConfig(**options, resume=True))
    # nothing was restored, so the whole-film stage did not start from random weights
    assert "lesion-patch pretraining on" in caplog.text
    assert json.loads((run_dir / "config.json").read_text())["kept_epoch"] == 2
