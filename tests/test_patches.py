from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tumor_classifier.config import TrainConfig
from tumor_classifier.data import scan_folder
from tumor_classifier.models import build_model
from tumor_classifier.patches import load_annotations, pretrain_on_patches, sample_patches
from tumor_classifier.train import train


def test_patches_from_real_lesions_and_normal_tissue(prepared_mias: Path) -> None:
    folder = scan_folder(prepared_mias / "train")
    annotations = load_annotations(prepared_mias)
    patches, targets = sample_patches(folder.files, folder.labels, folder.class_names,
                                      annotations, image_size=128, channels=1,
                                      patch_size=32, per_lesion=2, per_normal_image=1)
    counts = Counter(folder.class_names[t] for t in targets)
    assert set(counts) == {"BEN", "CAN", "NOR"}
    assert counts["NOR"] == folder.counts()["NOR"]  # one patch per normal film
    assert patches.shape == (len(targets), 32, 32, 1) and patches.dtype == np.float32
    # lesion patches are centred near the marked circles: brighter than the film average
    lesion = patches[targets != folder.class_names.index("NOR")]
    assert float(lesion[:, 12:20, 12:20].mean()) > 0.3
    weights = pretrain_on_patches("mammo_net", patches[:24], targets[:24], 3, epochs=1,
                                  batch_size=8, learning_rate=1e-3)
    whole = build_model("mammo_net", (128, 128, 1), 3)
    assert [w.shape for w in weights] == [tuple(w.shape) for w in whole.get_weights()]


@pytest.mark.slow
def test_patch_pretraining_refuses_what_it_cannot_do(prepared_mias: Path,
                                                     tmp_path: Path) -> None:
    base = TrainConfig(data_dir=str(prepared_mias), out=str(tmp_path / "run"), epochs=1,
                       image_size=64, patch_pretrain_epochs=1, workers=1)
    with pytest.raises(ValueError, match="works on uncropped images; drop --crop-breast"):
        train(base)
    with pytest.raises(ValueError, match=r"preset 'seed' has weights that depend on the "
                       r"input size"):
        train(TrainConfig(**{**base.to_dict(), "crop_breast": False,
                             "out": str(tmp_path / "run2")}))
    with pytest.raises(FileNotFoundError, match="annotations.csv: not found"):
        load_annotations(tmp_path)
