from __future__ import annotations

import csv
import dataclasses
import json
import logging
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tumor_classifier.config import TrainConfig
from tumor_classifier.cv import (
    _women_in_two_test_folds,
    cross_validate,
    format_cv,
    load_samples,
    patient_folds,
)


def test_folds_keep_every_patient_in_one_place(prepared_mias: Path) -> None:
    samples = load_samples(prepared_mias)
    assert len(samples) == 240
    labels = [sample.label for sample in samples]
    patients = [sample.patient for sample in samples]
    folds = patient_folds(labels, patients, folds=5, seed=0)
    tested = Counter()
    for train, validation, test in folds:
        parts = [{patients[i] for i in part} for part in (train, validation, test)]
        assert not parts[0] & parts[1] and not parts[0] & parts[2] and not parts[1] & parts[2]
        assert len(train) + len(validation) + len(test) == 240
        assert {labels[i] for i in test} == {"BEN", "CAN", "NOR"}  # stratified
        tested.update(test)
    assert sorted(tested) == list(range(240)) and set(tested.values()) == {1}
    with pytest.raises(ValueError, match="--folds must be at least 2, got 1"):
        patient_folds(labels, patients, folds=1, seed=0)


def test_cv_refuses_to_split_without_patients(tmp_path: Path) -> None:
    from conftest import ramp, write_png

    # class folders whose names say nothing of whose the images are
    for name in ("BEN/scan1.png", "NOR/scan2.png", "NOR/mdb003.png"):
        write_png(tmp_path / name, ramp())
    with pytest.raises(FileNotFoundError, match="no file names that say whose each film is; "
                       "cross-validation needs the patient of every image"):
        load_samples(tmp_path)


def test_cv_says_when_its_groups_part_one_womans_films(prepared_mias: Path,
                                                     tmp_path: Path) -> None:
    # Real films under DDSM names, with a --groups CSV that gives each film its own patient
    source = tmp_path / "ddsm"
    lines = ["file,patient_id"]
    for sample in load_samples(prepared_mias):
        number = int(sample.path.stem[3:])
        name = f"A_{(number + 1) // 2:04d}_1.{'LEFT' if number % 2 else 'RIGHT'}_MLO.png"
        (source / sample.label).mkdir(parents=True, exist_ok=True)
        (source / sample.label / name).symlink_to(sample.path)
        lines.append(f"{sample.label}/{name},{sample.label}/{name}")
    (tmp_path / "groups.csv").write_text("\n".join(lines) + "\n")
    by_image = load_samples(source, tmp_path / "groups.csv")
    parts = patient_folds([s.label for s in by_image], [s.patient for s in by_image], 5, 0)
    message = _women_in_two_test_folds(by_image, parts, tmp_path / "groups.csv")
    assert message is not None and re.match(
        r"\d+ women's images are tested in different folds, though their file names or DICOM "
        r"headers say they are one woman's \(for example "
        r"A_\d{4}_1\.(LEFT|RIGHT)_MLO\.png in fold \d", message)
    assert f"the patients of {tmp_path / 'groups.csv'} part them" in message
    # the same films grouped by woman: nothing to say
    (tmp_path / "women.csv").write_text("\n".join(
        [lines[0]] + [f"{line.split(',')[0]},{line.split('/')[1][:6]}" for line in lines[1:]]))
    by_woman = load_samples(source, tmp_path / "women.csv")
    # the CSV gives no sides: the names pair each film with the woman's other film, where
    # the CSV makes both one patient's
    assert all(sample.other_breast is None for sample in by_image)
    for sample in by_woman:
        assert sample.other_breast is not None
        assert sample.other_breast.name == sample.path.name.replace(
            "LEFT", "x").replace("RIGHT", "LEFT").replace("x", "RIGHT")
    # with the CSV's optional laterality and view, each film gets its woman's other film
    (tmp_path / "sides.csv").write_text("\n".join(
        ["file,patient_id,laterality,view"] + [
            f"{line.split(',')[0]},{line.split('/')[1][:6]},"
            f"{'L' if 'LEFT' in line.split(',')[0] else 'R'},MLO" for line in lines[1:]]))
    paired = load_samples(source, tmp_path / "sides.csv")
    for sample in paired:
        assert sample.other_breast is not None
        assert sample.other_breast.name == sample.path.name.replace(
            "LEFT", "x").replace("RIGHT", "LEFT").replace("x", "RIGHT")
    assert len({sample.patient for sample in by_woman}) == 120
    parts = patient_folds([s.label for s in by_woman], [s.patient for s in by_woman], 5, 0)
    assert _women_in_two_test_folds(by_woman, parts, tmp_path / "women.csv") is None


@pytest.mark.slow
def test_cross_validation_end_to_end(prepared_mias: Path, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch,
                                     caplog: pytest.LogCaptureFixture) -> None:
    from tumor_classifier import cache, cache_maintenance

    config = TrainConfig(model="seed", data_dir="", out="", epochs=1, image_size=32, workers=1,
                         cache_dir=str(tmp_path / "cache"))
    with caplog.at_level(logging.INFO, logger="tumor_classifier.cv"):
        summary = cross_validate(prepared_mias, tmp_path / "cv", config, folds=2)
    progress = [record.getMessage() for record in caplog.records
                if record.name == "tumor_classifier.cv" and "fold " in record.getMessage()]
    assert len(progress) == 2
    for line in progress:  # three decimals, as every other number cv prints
        assert re.fullmatch(r"fold [12]/2: accuracy \d\.\d{3}, macro AUC \d\.\d{3}, "
                            r"trained in \d+ s", line), line
    # The decoded images stay in the cache once, not once per fold: fold 1's entries were
    # removed when fold 2 had copied them, and fold 2's hold every film...
    entries = cache_maintenance.cache_entries(tmp_path / "cache")
    assert sorted(Path(entry.root).name for entry in entries) == ["test", "train",
                                                                  "validation"]
    assert all(Path(entry.root).parent == (tmp_path / "cv" / "fold2" / "data").resolve()
               for entry in entries)
    assert sum(entry.images for entry in entries) == 240
    # ...so a dataset of links to the same films decodes none of them again
    again = tmp_path / "again"
    again.mkdir()
    films = sorted(prepared_mias.rglob("*.png"))
    for film in films:
        (again / film.name).symlink_to(film)
    decoded: list[str] = []
    monkeypatch.setattr(cache, "_decode", lambda task: decoded.append(task[0]))
    cache.cache_images(again, sorted(again.iterdir()), entries[0].image_size or 0,
                       entries[0].channels or 0, tmp_path / "cache", workers=1,
                       crop=bool(entries[0].crop))
    assert decoded == []
    for fold in (1, 2):
        assert (tmp_path / "cv" / f"fold{fold}" / "run" / "model.keras").is_file()
        assert (tmp_path / "cv" / f"fold{fold}" / "run" / "evaluation" / "test"
                / "metrics.json").is_file()
    saved = json.loads((tmp_path / "cv" / "cv_summary.json").read_text())
    assert saved["pooled_out_of_fold"]["n"] == 240
    # by default, with each film's other breast: the prepared split.csv names every one
    fold_config = json.loads((tmp_path / "cv" / "fold1" / "run" / "config.json").read_text())
    assert fold_config["training"]["other_breast"] is True
    assert fold_config["input_shape"] == [32, 32, 2]
    rows = summary["per_fold_mean_std"]
    for key in ("accuracy", "balanced_accuracy", "macro_auc_ovr", "binary.CAN_vs_rest.auc",
                "binary.abnormal_vs_normal.auc", "expected_calibration_error",
                "negative_log_likelihood", "prevalence_baseline_nll", "train_seconds"):
        assert rows[key]["mean"] is not None and rows[key]["std"] is not None, key
    assert "pooled [95% CI]" in format_cv(summary)
    assert "prevalence_baseline_nll" in format_cv(summary)
    # no woman's film is a near-copy of another woman's, even at 32 pixels
    assert saved["near_copies_in_test_folds"] == 0 and "WARNING" not in format_cv(summary)
    summary["near_copies_in_test_folds"] = 3
    assert "WARNING: 3 test-fold images are near-copies" in format_cv(summary)
    assert saved["same_patient_in_test_folds"] == 0
    summary["same_patient_in_test_folds"] = 2
    assert ("WARNING: 2 test-fold images are of women their fold's model was fitted on, by "
            "their file names") in format_cv(summary)
    # seed trains without flips: its folds predict without TTA, and the summary says so
    assert saved["tta"] is False and "TTA" not in format_cv(summary)
    assert "(TTA)" in format_cv({**summary, "tta": True})
    # the source dataset was only linked to, never modified
    assert sum(1 for _ in prepared_mias.rglob("*.png")) == 240


@pytest.mark.slow
def test_cross_validation_with_the_other_breast(prepared_mias: Path, tmp_path: Path) -> None:
    config = TrainConfig(model="seed", data_dir="", out="", epochs=1, image_size=32, workers=1,
                         other_breast=True)
    summary = cross_validate(prepared_mias, tmp_path / "cv", config, folds=2)
    assert summary["pooled_out_of_fold"]["n"] == 240  # every film had its other breast
    for fold in (1, 2):
        data = tmp_path / "cv" / f"fold{fold}" / "data"
        with (data / "split.csv").open() as handle:
            rows = {row["file"]: row for row in csv.DictReader(handle)}
        for row in rows.values():  # the other breast followed its film into the fold
            other = rows[row["other_breast"]]
            assert other["patient_id"] == row["patient_id"] and other["split"] == row["split"]
            assert other["file"] != row["file"]
        assert json.loads((tmp_path / "cv" / f"fold{fold}" / "run" / "config.json")
                          .read_text())["input_shape"] == [32, 32, 2]


@pytest.mark.slow
def test_cv_computes_each_films_probe_features_once(prepared_mias: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # seed_asymmetry in cv: each real film is in two of three folds' training or validation
    # films, but its probe features are computed once per size for the whole cv.
    from tumor_classifier.asymmetry import _Features

    computed: Counter[int] = Counter()
    original = _Features._compute

    def counting(self: _Features, images: Any, rows: Any, size: int) -> Any:
        computed[size] += len(rows)
        return original(self, images, rows, size)

    monkeypatch.setattr(_Features, "_compute", counting)
    config = TrainConfig(model="seed_asymmetry", data_dir="", out="", epochs=1,
                         image_size=128, workers=1)
    summary = cross_validate(prepared_mias, tmp_path / "cv", config, folds=3)
    assert summary["pooled_out_of_fold"]["n"] == 240
    assert computed == {32: 240, 64: 240, 96: 240, 128: 240}  # not 2 x 240 each


@pytest.mark.slow
def test_an_interrupted_cv_resumes_where_it_stopped(prepared_mias: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from tumor_classifier import resume
    from tumor_classifier.data import Batches

    monkeypatch.setattr(resume, "BACKUP_SECONDS", 0.0)  # a backup after every epoch
    config = TrainConfig(model="seed", data_dir="", out="", epochs=2, image_size=32, workers=1)
    whole = cross_validate(prepared_mias, tmp_path / "whole", config, folds=2)
    set_epoch, calls = Batches.set_epoch, []

    def stop_in_the_second_fold(batches: Any, epoch: int) -> None:
        calls.append(epoch)
        if len(calls) == 4:  # fold 2, epoch 2
            raise RuntimeError("power cut")
        set_epoch(batches, epoch)

    monkeypatch.setattr(Batches, "set_epoch", stop_in_the_second_fold)
    with pytest.raises(RuntimeError, match="power cut"):
        cross_validate(prepared_mias, tmp_path / "cut", config, folds=2)
    monkeypatch.undo()
    monkeypatch.setattr(resume, "BACKUP_SECONDS", 0.0)
    first_model = tmp_path / "cut" / "fold1" / "run" / "model.keras"
    finished_at = first_model.stat().st_mtime_ns
    with pytest.raises(FileExistsError, match="continue an interrupted cv there with --resume"):
        cross_validate(prepared_mias, tmp_path / "cut", config, folds=2)
    with pytest.raises(ValueError, match="its patients differ from this run's fold 1"):
        cross_validate(prepared_mias, tmp_path / "cut",
                       dataclasses.replace(config, resume=True, seed=1), folds=2)
    resumed = cross_validate(prepared_mias, tmp_path / "cut",
                             dataclasses.replace(config, resume=True), folds=2)
    assert first_model.stat().st_mtime_ns == finished_at  # fold 1 was not trained again
    # fold 2 went on from its first epoch's backup and ended as the uninterrupted run did
    assert resumed["pooled_out_of_fold"] == whole["pooled_out_of_fold"]
    assert sum(1 for _ in prepared_mias.rglob("*.png")) == 240


@pytest.mark.slow
def test_cv_can_keep_a_copy_in_its_originals_fold(prepared_mias: Path, tmp_path: Path) -> None:
    from PIL import Image

    from tumor_classifier.cli import main

    # Class folders of real films (a few women per class), one film saved again as JPEG
    # under another patient: without the option the copy is its own patient.
    source, rows = tmp_path / "flat", [["file", "patient_id"]]
    women = 0
    for row in load_samples(prepared_mias):
        if row.label == "NOR" and women > 40:
            continue
        women += row.label == "NOR"
        target = source / row.label / row.path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(row.path)
        rows.append([f"{row.label}/{row.path.name}", row.patient])
    original = sorted((source / "CAN").iterdir())[0]
    Image.open(original).convert("L").save(source / "CAN" / "copy.jpg", quality=75)
    rows.append(["CAN/copy.jpg", "someone_else"])
    groups = tmp_path / "groups.csv"
    groups.write_text("\n".join(",".join(row) for row in rows) + "\n")

    assert main(["cv", str(source), "--groups", str(groups), "--folds", "2", "--out",
                 str(tmp_path / "cv"), "--model", "seed", "--epochs", "1", "--image-size",
                 "32", "--workers", "1", "--group-near-copies"]) == 0
    summary = json.loads((tmp_path / "cv" / "cv_summary.json").read_text())
    assert summary["group_near_copies"] is True
    assert summary["near_copies_in_test_folds"] == 0
    for fold in (1, 2):
        with (tmp_path / "cv" / f"fold{fold}" / "data" / "split.csv").open() as handle:
            placed = {row["file"].split("__")[-1]: row for row in csv.DictReader(handle)}
        assert placed["copy.jpg"]["split"] == placed[original.name]["split"]
        assert placed["copy.jpg"]["patient_id"] == placed[original.name]["patient_id"]


@pytest.mark.slow
def test_cv_reads_the_patients_from_dicom_headers_and_never_writes_them(
        prepared_mias: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import numpy as np
    from PIL import Image

    from conftest import write_dicom
    from tumor_classifier.cli import main

    # The films of 30 women as DICOM files with opaque names: only the headers say whose
    # each film is and which breast it shows.
    source = tmp_path / "dicom"
    woman_of: dict[str, int] = {}
    for number, sample in enumerate(sorted(load_samples(prepared_mias),
                                           key=lambda sample: sample.path.name)[:60]):
        film = int(sample.path.stem[3:])
        name = f"img{number:03d}.dcm"
        woman_of[name] = (film + 1) // 2
        write_dicom(source / sample.label / name,
                    np.asarray(Image.open(sample.path).convert("L")),
                    PatientID=f"SECRET-{woman_of[name]:03d}",
                    ImageLaterality="L" if film % 2 else "R", ViewPosition="MLO")
    out = tmp_path / "cv"
    with caplog.at_level("DEBUG"):
        assert main(["cv", str(source), "--out", str(out), "--patient-from-dicom",
                     "--folds", "2", "--model", "seed", "--epochs", "1", "--image-size", "32",
                     "--workers", "1"]) == 0
    tested: list[str] = []
    for fold in (1, 2):
        with (out / f"fold{fold}" / "data" / "split.csv").open() as handle:
            rows = list(csv.DictReader(handle))
        assert len(rows) == 60
        places: dict[int, set[tuple[str, str]]] = {}
        for row in rows:
            name = row["file"].split("__")[-1]
            places.setdefault(woman_of[name], set()).add((row["split"], row["patient_id"]))
            tested += [name] if row["split"] == "test" else []
            assert row["other_breast"]  # paired by the headers' laterality and view
        assert all(len(place) == 1 for place in places.values())  # one patient, one part
        assert json.loads((out / f"fold{fold}" / "run" / "config.json").read_text())[
            "input_shape"] == [32, 32, 2]
    assert sorted(tested) == sorted(woman_of)  # every film tested once
    written = [path for path in out.rglob("*") if path.suffix in {".csv", ".json", ".txt"}]
    assert written and not any("SECRET" in path.read_text() for path in written)
    assert "SECRET" not in caplog.text
