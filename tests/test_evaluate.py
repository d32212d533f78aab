from __future__ import annotations

import csv
import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tumor_classifier import predict as predict_module
from tumor_classifier.evaluate import evaluate, fitted_patients, resampled_patients
from tumor_classifier.metrics import compute_metrics
from tumor_classifier.predict import Classifier, expand_paths


def test_compute_metrics_on_a_hand_made_example() -> None:
    labels = np.array([0, 0, 1, 2, 2, 2])
    probabilities = np.array([[.8, .1, .1], [.2, .5, .3], [.1, .7, .2],
                              [.1, .1, .8], [.3, .3, .4], [.6, .2, .2]])
    metrics = compute_metrics(labels, probabilities, ("BEN", "CAN", "NOR"))
    assert metrics["n"] == 6
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    assert metrics["majority_baseline"] == pytest.approx(3 / 6)
    assert metrics["majority_class"] == "NOR"
    assert metrics["balanced_accuracy"] == pytest.approx((1 / 2 + 1 + 2 / 3) / 3)
    assert metrics["confusion_matrix"] == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    assert metrics["per_class"]["CAN"]["precision"] == pytest.approx(0.5)
    assert metrics["per_class"]["CAN"]["auc_ovr"] == pytest.approx(1.0)
    assert metrics["per_class"]["NOR"]["support"] == 3
    # the class frequencies 2/6, 1/6, 3/6 given to every image
    assert metrics["prevalence_baseline_nll"] == pytest.approx(
        -(2 * np.log(2 / 6) + np.log(1 / 6) + 3 * np.log(3 / 6)) / 6)
    assert metrics["negative_log_likelihood"] == pytest.approx(
        -np.log([.8, .2, .7, .8, .4, .2]).mean())


def test_fitted_patients_by_name_but_not_the_image_itself() -> None:
    references = {"train": (None, ["/d/train/CAN/A_0001_1.LEFT_CC.png", "/d/train/NOR/mdb3.png"]),
                  "validation": (None, ["/d/validation/NOR/A_0002_1.LEFT_CC.png"])}
    files = ["/e/BEN/A_0001_1.RIGHT_MLO.png", "/e/NOR/A_0002_1.RIGHT_CC.png",
             "/d/train/CAN/A_0001_1.LEFT_CC.png", "/e/NOR/mdb4.png", "/e/NOR/A_0003_1.LEFT_CC.png"]
    assert fitted_patients(files, references) == [
        ("train", "/d/train/CAN/A_0001_1.LEFT_CC.png"),
        ("validation", "/d/validation/NOR/A_0002_1.LEFT_CC.png"), None, None, None]
    # names that repeat (a folder per patient) tell no patient
    files = ["/e/P7/A_0001_1.RIGHT_MLO.png", "/e/P8/A_0001_1.RIGHT_MLO.png"]
    assert fitted_patients(files, references) == [None, None]


def test_a_class_missing_from_the_labels_has_no_auc() -> None:
    metrics = compute_metrics(np.array([0, 2, 2]), np.eye(3)[[0, 2, 1]], ("BEN", "CAN", "NOR"))
    assert metrics["per_class"]["CAN"]["auc_ovr"] is None
    assert metrics["macro_auc_ovr"] is not None


@pytest.mark.slow
def test_evaluate_agrees_with_predict_file_by_file(trained_run: Path, prepared_mias: Path,
                                                   tmp_path: Path) -> None:
    test_dir = prepared_mias / "test"
    metrics = evaluate(trained_run, test_dir, tmp_path / "report")
    for name in ("metrics.json", "confusion_matrix.png", "roc.png", "predictions.csv",
                 "report.txt"):
        assert (tmp_path / "report" / name).is_file()
    saved = json.loads((tmp_path / "report" / "metrics.json").read_text())
    for key in ("n", "accuracy", "balanced_accuracy", "majority_baseline", "macro_auc_ovr",
                "per_class", "confusion_matrix"):
        assert key in saved
    assert set(saved["per_class"]["CAN"]) == {"precision", "recall", "f1", "support", "auc_ovr"}
    assert saved["n"] == len(list(test_dir.rglob("*.png")))
    assert (f"NLL {saved['negative_log_likelihood']:.3f} (the class frequencies alone: "
            f"{saved['prevalence_baseline_nll']:.3f})") in (tmp_path / "report" / "report.txt"
                                                             ).read_text()

    # predict on the files in another order; pair by file name and recompute the accuracy
    classifier = Classifier.load(trained_run)
    files = expand_paths([test_dir])[::-1]
    results = {Path(r.file): r for r in classifier.predict(files)}
    correct = sum(results[path].prediction == path.parent.name for path in files)
    assert metrics["accuracy"] == pytest.approx(correct / len(files))
    with (tmp_path / "report" / "predictions.csv").open() as handle:
        for row in csv.DictReader(handle):
            result = results[Path(row["file"])]
            assert row["label"] == Path(row["file"]).parent.name
            assert float(row["prob_CAN"]) == pytest.approx(result.probabilities["CAN"], abs=1e-5)


@pytest.mark.slow
def test_evaluate_default_out_and_bad_folders(trained_run: Path, prepared_mias: Path) -> None:
    with pytest.raises(ValueError, match=r"holds split folders .* not class folders"):
        evaluate(trained_run, prepared_mias)
    with pytest.raises(FileNotFoundError, match="no model.keras; pass a run directory"):
        evaluate(prepared_mias, prepared_mias / "test")


@pytest.mark.slow
def test_a_model_with_the_other_breast_pairs_each_film_with_its_own_woman(
        paired_run: Path, trained_run: Path, prepared_mias: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from tumor_classifier.cli import main

    config = json.loads((paired_run / "config.json").read_text())
    assert config["input_shape"] == [64, 64, 2] and config["preprocessing"]["other_breast"]
    assert (paired_run / "evaluation" / "validation" / "predictions.csv").is_file()
    test_dir = prepared_mias / "test"
    metrics = evaluate(paired_run, test_dir, tmp_path / "report")
    assert metrics["n"] == 46 and not metrics["unreadable"]
    with (prepared_mias / "split.csv").open() as handle:
        other = {(prepared_mias / row["file"]).resolve(): prepared_mias / row["other_breast"]
                 for row in csv.DictReader(handle)}
    with (tmp_path / "report" / "predictions.csv").open() as handle:
        every_row = list(csv.DictReader(handle))
    rows = every_row[::9]
    films = [Path(row["file"]) for row in rows]
    classifier = Classifier.load(paired_run)
    partners = [other[film.resolve()] for film in films]
    results = classifier.predict(films, other_breasts=partners)
    for row, result in zip(rows, results, strict=True):
        for name in ("BEN", "CAN", "NOR"):
            assert float(row[f"prob_{name}"]) == pytest.approx(result.probabilities[name],
                                                               abs=1e-5)
    # Paired with another woman's film, the same film gets other probabilities: the
    # second image is used, and evaluate paired each film with its own woman's.
    swapped = classifier.predict(films[:1], other_breasts=partners[1:2])[0]
    assert swapped.probabilities != results[0].probabilities

    assert main(["predict", str(paired_run), str(films[0]),
                 "--other-breast", str(partners[0])]) == 0
    assert f"{films[0]}: {results[0].prediction}" in capsys.readouterr().out
    # Without --other-breast, each file's other breast is the one split.csv names; a copy
    # outside the dataset has none: one error for it, the other file goes on.
    looked_up = classifier.predict(films[:2])
    assert [r.probabilities for r in looked_up] == [r.probabilities for r in results[:2]]
    # A whole folder: each film is also its partner's other breast, yet decoded only once.
    reads: Counter[Path] = Counter()

    def counting(read: Any) -> Any:
        def counted(source: Any, name: str | None = None) -> Any:
            reads[Path(source).resolve()] += 1
            return read(source, name)
        return counted

    for reader in ("read_image", "read_image_and_metadata"):
        monkeypatch.setattr(predict_module, reader, counting(getattr(predict_module, reader)))
    folder = {Path(r.file).resolve(): r for r in classifier.predict(expand_paths([test_dir]))}
    assert len(folder) == 46 and set(reads.values()) == {1} and set(reads) == set(folder)
    for row in every_row:
        assert float(row["prob_CAN"]) == pytest.approx(
            folder[Path(row["file"]).resolve()].probabilities["CAN"], abs=1e-5)
    monkeypatch.undo()
    lone = tmp_path / films[0].name
    lone.write_bytes(films[0].read_bytes())
    alone, found = classifier.predict([lone, films[1]])
    assert alone.error == (f"{lone}: no other breast given, named in split.csv "
                           "(other_breast column) or found by its name (LEFT/RIGHT swapped, "
                           "or mini-MIAS's mdb001 with mdb002) or DICOM header among the files "
                           "given; "
                           "this model compares both breasts of a woman: pass --other-breast.")
    assert found.probabilities == results[1].probabilities
    assert classifier.read(films[0])[1].shape == (64, 64, 2)
    assert main(["predict", str(trained_run), str(films[0]),
                 "--other-breast", str(partners[0])]) == 2
    assert "this model classifies one film" in capsys.readouterr().err


@pytest.mark.slow
def test_mini_mias_films_in_plain_class_folders_are_evaluated_with_the_other_breast(
        paired_run: Path, prepared_mias: Path, tmp_path: Path) -> None:
    """Held-out mini-MIAS films as plain class folders (mdbNNN.png, no split.csv), as an
    independent test set comes: a model that reads the other breast pairs each film with
    its woman's by the numbers, as split.csv would, and resamples women."""
    test_dir = prepared_mias / "test"
    plain = tmp_path / "held-out"
    shutil.copytree(test_dir, plain)
    assert not list(plain.rglob("split.csv"))
    by_table = evaluate(paired_run, test_dir, tmp_path / "by-table")
    by_name = evaluate(paired_run, plain, tmp_path / "by-name")
    assert by_name["n"] == by_table["n"] == 46 and not by_name["unreadable"]
    assert by_name["bootstrap_unit"] == "patients (file names)"
    assert by_table["bootstrap_unit"] == "patients (split.csv)"
    # the names group the films into the women split.csv names
    files = sorted(plain.rglob("*.png"))
    women, source = resampled_patients(files, plain)
    patients, _ = resampled_patients([test_dir / file.relative_to(plain) for file in files],
                                     test_dir)
    assert source == "file names" and women is not None and patients is not None
    pairs = set(zip(women, patients, strict=True))
    assert len(pairs) == len(set(women)) == len(set(patients)) == 23
    probabilities = {}
    for report in ("by-table", "by-name"):
        with (tmp_path / report / "predictions.csv").open() as handle:
            probabilities[report] = {Path(row["file"]).name: float(row["prob_CAN"])
                                     for row in csv.DictReader(handle)}
    assert probabilities["by-name"] == pytest.approx(probabilities["by-table"], abs=1e-6)


def test_films_named_left_and_right_train_and_evaluate_with_the_other_breast(
        prepared_mias: Path, tmp_path: Path) -> None:
    """Plain class folders, no split.csv: real films named like DDSM's (`..._LEFT_MLO`),
    paired by name, get the two-film default in train, evaluate and predict."""
    from tumor_classifier.config import TrainConfig
    from tumor_classifier.train import train

    with (prepared_mias / "split.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    data = tmp_path / "named"
    taken: Counter[tuple[str, str]] = Counter()
    for row in rows:  # a few women of each class per split (both films, same split)
        if taken[row["split"], row["label"]] < {"train": 8, "validation": 4}.get(
                row["split"], 3):
            for film in (row["file"], row["other_breast"]):
                label = next(r["label"] for r in rows if r["file"] == film)
                side = "LEFT" if int(Path(film).stem[3:]) % 2 else "RIGHT"
                target = data / row["split"] / label / f"{row['patient_id']}_{side}_MLO.png"
                if not target.exists():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.hardlink_to(prepared_mias / film)
                    taken[row["split"], label] += 1
    run = train(TrainConfig(model="seed", data_dir=str(data), out=str(tmp_path / "run"), epochs=1,
                            image_size=64, workers=2))
    config = json.loads((run / "config.json").read_text())
    assert config["training"]["other_breast"] and config["input_shape"] == [64, 64, 2]
    metrics = evaluate(run, data / "test", tmp_path / "report")
    assert metrics["n"] == len(list((data / "test").rglob("*.png"))) and not metrics["unreadable"]
    with (tmp_path / "report" / "predictions.csv").open() as handle:
        evaluated = {row["file"]: float(row["prob_CAN"]) for row in csv.DictReader(handle)}
    predicted = Classifier.load(run).predict(expand_paths([data / "test"]))
    assert all(result.error is None for result in predicted)
    for result in predicted:
        assert result.probabilities["CAN"] == pytest.approx(evaluated[str(result.file)], abs=1e-5)
    # split by woman: no test film is of a woman the model was fitted on
    assert config["patients_in_several_splits"] == 0
    assert metrics["same_patient_as_fitted"] == {"train": 0, "validation": 0}
    # one test woman's films filed under a training woman's name (as her CC views) are
    # named in the report and predictions.csv
    trained = sorted((data / "train").rglob("*_LEFT_MLO.png"))[0]
    leak = tmp_path / "leak"
    shutil.copytree(data / "test", leak, copy_function=lambda src, dst: Path(dst).hardlink_to(src))
    woman = sorted(leak.rglob("*_LEFT_MLO.png"))[0].name.removesuffix("_LEFT_MLO.png")
    for film in sorted(leak.rglob(f"{woman}_*.png")):
        film.rename(film.with_name(film.name.replace(woman, trained.name.removesuffix(
            "_LEFT_MLO.png")).replace("_MLO", "_CC")))
    metrics = evaluate(run, leak, tmp_path / "leak-report")
    total = len(list(leak.rglob("*.png")))
    assert metrics["n"] == total
    assert metrics["same_patient_as_fitted"] == {"train": 2, "validation": 0}
    assert metrics["near_copies"] == {"train": 0, "validation": 0}
    assert (tmp_path / "leak-report" / "report.txt").read_text().startswith(
        f"WARNING: 2 of {total} images are of patients the model was fitted on, by their "
        "file names (2 train)")
    with (tmp_path / "leak-report" / "predictions.csv").open() as handle:
        named = {Path(row["file"]).name: row["same_patient_as"] for row in csv.DictReader(handle)}
    left_cc = trained.name.replace("_MLO", "_CC")
    assert Path(named[left_cc]).name in (trained.name, trained.name.replace("LEFT", "RIGHT"))
    assert sum(bool(value) for value in named.values()) == 2


@pytest.mark.slow
def test_class_folders_named_benign_malignant_normal_get_the_clinical_questions(
        small_dataset: Path, tmp_path: Path) -> None:
    from tumor_classifier.config import TrainConfig
    from tumor_classifier.train import train

    names = {"BEN": "benign", "CAN": "malignant", "NOR": "normal"}
    for split in ("train", "validation"):
        for short, long in names.items():
            (small_dataset / split / short).rename(small_dataset / split / long)
    run_dir = train(TrainConfig(model="seed",
                                data_dir=str(small_dataset), out=str(tmp_path / "run"),
                                epochs=1, image_size=32, workers=1))
    metrics = evaluate(run_dir, small_dataset / "validation", tmp_path / "report")
    assert metrics["class_names"] == ["benign", "malignant", "normal"]
    assert set(metrics["binary"]) == {"CAN_vs_rest", "abnormal_vs_normal"}
    calibration = json.loads((run_dir / "config.json").read_text())["calibration"]
    assert set(calibration["thresholds"]) <= {"CAN_vs_rest", "abnormal_vs_normal"}
    assert "abnormal_vs_normal" in (tmp_path / "report" / "report.txt").read_text()


def test_images_the_model_was_fitted_on_are_flagged_in_every_report(
        trained_run: Path, prepared_mias: Path, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    metrics = evaluate(trained_run, prepared_mias / "test", tmp_path / "test")
    assert metrics["near_copies"] == {"train": 0, "validation": 0}
    assert "WARNING" not in (tmp_path / "test" / "report.txt").read_text()
    with (tmp_path / "test" / "predictions.csv").open() as handle:
        assert {row["near_copy_of"] for row in csv.DictReader(handle)} == {""}

    # The validation split (calibration, thresholds) is not a test split.
    validation = sorted((prepared_mias / "validation").rglob("*.png"))
    metrics = evaluate(trained_run, prepared_mias / "validation", tmp_path / "validation")
    assert metrics["near_copies"] == {"train": 0, "validation": len(validation)}
    report = (tmp_path / "validation" / "report.txt").read_text()
    assert report.startswith(f"WARNING: {len(validation)} of {len(validation)} images are "
                             "near-copies of images the model was fitted on")
    assert f"{validation[0]}, itself a validation image" in caplog.text
    assert "Evaluate on images the model was not fitted on (the dataset's test/ split)." in (
        caplog.text)
    assert "--group-near-copies" not in caplog.text


@pytest.mark.slow
def test_a_copy_of_a_training_film_in_another_split_is_named(
        small_dataset: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from PIL import Image

    from tumor_classifier.config import TrainConfig
    from tumor_classifier.train import train

    source = sorted((small_dataset / "train" / "CAN").glob("*.png"))[0]
    Image.open(source).convert("L").save(small_dataset / "validation" / "CAN" / "x.jpg",
                                         quality=75)
    run = train(TrainConfig(model="seed", data_dir=str(small_dataset), out=str(tmp_path / "run"),
                            epochs=1, image_size=64, workers=1))
    assert (f"1 of 10 images are near-copies of images the model was fitted on (1 train; for "
            f"example {small_dataset / 'validation/CAN/x.jpg'} and train image {source})"
            in caplog.text)
    assert "Remove the copies, or split with `tumor-classifier prepare folders " in caplog.text
    assert json.loads((run / "config.json").read_text())["validation_near_copies_of_train"] == 1
    assert (run / "evaluation/validation/report.txt").read_text().startswith(
        "WARNING: 1 of 10 images")

    test = tmp_path / "test" / "CAN"
    test.mkdir(parents=True)
    Image.open(source).resize((512, 512)).save(test / "resized.png")
    shutil.copy(sorted((small_dataset / "validation" / "NOR").glob("*.png"))[0], test / "y.png")
    metrics = evaluate(run, test.parent, tmp_path / "report")
    assert metrics["near_copies"] == {"train": 1, "validation": 1}
    with (tmp_path / "report" / "predictions.csv").open() as handle:
        rows = {Path(row["file"]).name: row["near_copy_of"] for row in csv.DictReader(handle)}
    assert rows["resized.png"] == str(source)


def test_tta_averages_each_image_with_its_top_bottom_flip(trained_run: Path, prepared_mias: Path,
                                                         tmp_path: Path) -> None:
    from tumor_classifier.imaging import read_image

    classifier = Classifier.load(trained_run)
    films = sorted((prepared_mias / "test" / "CAN").glob("*.png"))[:3]
    images = np.stack([classifier.preprocess(read_image(film)) for film in films])
    plain = classifier.predict_batch(images)
    top_bottom = classifier.predict_batch(images[:, ::-1])
    left_right = classifier.predict_batch(images[:, :, ::-1])
    classifier.tta = True
    averaged = classifier.predict_batch(images, calibrated=False)
    classifier.tta = False
    expected = (classifier.predict_batch(images, calibrated=False)
                + classifier.predict_batch(images[:, ::-1], calibrated=False)) / 2
    np.testing.assert_allclose(averaged, expected, atol=1e-6)
    assert not np.allclose(plain, top_bottom) and not np.allclose(top_bottom, left_right)

    # evaluate --tta reports the averaged (then calibrated) probabilities, file by file
    evaluate(trained_run, prepared_mias / "test", tmp_path / "tta", tta=True)
    with_tta = {Path(result.file): result
                for result in Classifier.load(trained_run, tta=True).predict(films)}
    with (tmp_path / "tta" / "predictions.csv").open() as handle:
        for row in csv.DictReader(handle):
            if Path(row["file"]) in with_tta:
                assert float(row["prob_CAN"]) == pytest.approx(
                    with_tta[Path(row["file"])].probabilities["CAN"], abs=1e-5)


def test_tta_default_is_the_runs_and_the_flags_override_it(trained_run: Path, films: list[Path],
                                                           tmp_path: Path, capsys) -> None:
    from tumor_classifier.cli import main

    # The same model, recorded as trained with top-bottom flips (as train writes it).
    flipped_run = tmp_path / "flipped"
    shutil.copytree(trained_run, flipped_run, ignore=shutil.ignore_patterns("evaluation"))
    config = json.loads((flipped_run / "config.json").read_text())
    assert config["tta"] is False
    (flipped_run / "config.json").write_text(json.dumps({**config, "tta": True}))
    assert Classifier.load(flipped_run).tta and not Classifier.load(trained_run).tta
    sample = films[:2]
    plain = [result.probabilities for result in Classifier.load(trained_run).predict(sample)]
    averaged = [result.probabilities
                for result in Classifier.load(trained_run, tta=True).predict(sample)]
    assert plain != averaged

    def predicted(*options: str) -> list[dict[str, float]]:
        out = tmp_path / "predictions.csv"
        assert main(["predict", str(flipped_run), *map(str, sample), "--csv", str(out),
                     *options]) == 0
        with out.open() as handle:
            return [{name: float(row[f"prob_{name}"]) for name in ("BEN", "CAN", "NOR")}
                    for row in csv.DictReader(handle)]

    for options, expected in (((), averaged), (("--no-tta",), plain), (("--tta",), averaged)):
        for got, want in zip(predicted(*options), expected, strict=True):
            assert got == pytest.approx(want, abs=1e-5), options
    capsys.readouterr()
    assert main(["evaluate", str(flipped_run), str(films[0].parent.parent), "--out",
                 str(tmp_path / "report")]) == 0
    report = (tmp_path / "report" / "report.txt").read_text()
    assert json.loads((tmp_path / "report" / "metrics.json").read_text())["tta"] is True
    assert "averaged with its top-bottom flip's (TTA)" in report
    assert main(["evaluate", str(flipped_run), str(films[0].parent.parent), "--out",
                 str(tmp_path / "plain"), "--no-tta"]) == 0
    assert json.loads((tmp_path / "plain" / "metrics.json").read_text())["tta"] is False
