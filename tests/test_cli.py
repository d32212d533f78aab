from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tumor_classifier.cli import build_parser, main


def test_every_argument_of_every_command_says_what_it_is() -> None:
    def arguments(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.Action]]:
        found = []
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for command in action.choices.values():
                    found += arguments(command)
            else:
                found.append((parser.prog, action))
        return found

    listed = arguments(build_parser())
    assert len({prog for prog, _ in listed}) == 12  # the program, 9 commands, 2 datasets
    assert [f"{prog} {action.dest}" for prog, action in listed if not action.help] == []


def test_tensorflows_retracing_warning_is_dropped_unless_verbose(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    tensorflow = logging.getLogger("tensorflow")
    assert main(["cache", "--cache-dir", str(tmp_path)]) == 0  # any command sets logging up
    tensorflow.warning("5 out of the last 5 calls to <function f> triggered tf.function "
                       "retracing. Tracing is expensive ...")
    tensorflow.warning("another warning")
    assert [record.getMessage() for record in caplog.records
            if record.name == "tensorflow"] == ["another warning"]


@pytest.mark.slow
def test_predict_prints_every_class_and_exits_nonzero_after_a_bad_file(
    trained_run: Path, prepared_mias: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    films = sorted((prepared_mias / "test" / "CAN").glob("*.png"))[:2]
    trained = sorted((prepared_mias / "train" / "BEN").glob("*.png"))[0]
    bad = tmp_path / "notes.png"
    bad.write_text("hello")
    code = main(["predict", str(trained_run), str(films[0]), str(bad), str(films[1]),
                 str(trained), "--csv", str(tmp_path / "out.csv")])
    out, err = capsys.readouterr()
    assert code == 1
    assert "1 of 4 file(s) could not be classified (see the lines above)." in err
    for film in films:
        assert f"{film}: " in out and "BEN " in out and "CAN " in out and "NOR " in out
    assert out.count("not a test of the model") == 1
    assert f"[a train image {trained} or a near-copy: not a test of the model]" in out
    with (tmp_path / "out.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["file", "prediction", "prob_BEN", "prob_CAN", "prob_NOR",
                             "near_copy_of"]
    assert [row["file"] for row in rows] == [str(film) for film in [*films, trained]]
    assert [row["near_copy_of"] for row in rows] == ["", "", f"train image {trained}"]
    for row in rows:
        total = sum(float(row[f"prob_{name}"]) for name in ("BEN", "CAN", "NOR"))
        assert total == pytest.approx(1.0, abs=1e-4)


def test_cli_errors_are_one_line_and_exit_2(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train", str(tmp_path / "nowhere"), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip() == f"error: {tmp_path / 'nowhere' / 'train'}: dataset folder not found; " \
        "check the path."


def test_a_failing_command_prints_only_its_error_line(tmp_path: Path) -> None:
    # In a fresh process, so TensorFlow is imported by the command itself: its C++ import
    # messages (oneDNN, absl) must not bury the one line of the error.
    done = subprocess.run(
        [sys.executable, "-m", "tumor_classifier.cli", "evaluate", str(tmp_path / "no-run"),
         str(tmp_path / "no-data")],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "KERAS_BACKEND": "tensorflow"},
    )
    assert done.returncode == 2
    assert done.stderr.splitlines() == [done.stderr.strip()]
    assert done.stderr.startswith(f"error: {tmp_path / 'no-run'}")


def test_output_piped_into_a_reader_that_stops_early_ends_quietly(tmp_path: Path) -> None:
    # `tumor-classifier ... | head -1`: the reader is gone before the output is written.
    process = subprocess.Popen(
        [sys.executable, "-m", "tumor_classifier.cli", "cache", "--cache-dir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()
    error = process.stderr.read().decode()
    assert process.wait(timeout=120) == 1
    assert error == ""


def test_plain_class_folders_are_split_by_patient_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from conftest import ramp, write_png

    for name in ("BEN/p1_a.png", "CAN/p2_a.png", "CAN/p2_b.png", "NOR/p3_a.png"):
        write_png(tmp_path / "flat" / name, ramp())
    code = main(["train", str(tmp_path / "flat"), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert err.startswith(f"error: {tmp_path / 'flat'}: no train/ folder;")
    assert f"tumor-classifier prepare folders {tmp_path / 'flat'} DEST" in err
    code = main(["prepare", "folders", str(tmp_path / "flat"), str(tmp_path / "split"),
                 "--patient-pattern", r"p\d", "--fractions", "1,0,0"])
    out = capsys.readouterr().out
    assert code == 0 and "train          4   BEN 1  CAN 2  NOR 1" in out
    assert "wrote " + str(tmp_path / "split") in out
    # names that do not say the patient, and no option: one line naming the four ways
    code = main(["prepare", "folders", str(tmp_path / "flat"), str(tmp_path / "other")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "--patient-pattern REGEX" in err
    assert not (tmp_path / "other").exists()
    with pytest.raises(SystemExit):  # argparse: at most one of them
        main(["prepare", "folders", str(tmp_path / "flat"), str(tmp_path / "other"),
              "--patient-pattern", r"p\d", "--one-image-per-patient"])
    # PNGs name no patient in a header: one line per file, exit 2, nothing written
    code = main(["prepare", "folders", str(tmp_path / "flat"), str(tmp_path / "other"),
                 "--patient-from-dicom"])
    err = capsys.readouterr().err
    assert code == 2 and "--patient-from-dicom: 4 of 4 image(s) name no patient" in err
    assert f"{tmp_path / 'flat' / 'BEN' / 'p1_a.png'}: not a DICOM file" in err
    assert not (tmp_path / "other").exists()


@pytest.mark.slow
def test_jax_backend_smoke(small_dataset: Path, tmp_path: Path) -> None:
    """The same code trains and predicts on the JAX backend (the GPU path)."""
    pytest.importorskip("jax")
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    run_dir = tmp_path / "jax_run"
    script = (
        "from tumor_classifier.config import TrainConfig\n"
        "from tumor_classifier.train import train\n"
        "from tumor_classifier.predict import Classifier\n"
        "import keras, sys\n"
        "assert keras.backend.backend() == 'jax'\n"
        f"run = train(TrainConfig(data_dir={str(small_dataset)!r}, out={str(run_dir)!r}, "
        "model='seed', epochs=1, image_size=64, workers=1))\n"
        "classifier = Classifier.load(run)\n"
        "result = classifier.predict([sys.argv[1]])[0]\n"
        "from tumor_classifier.explain import grad_cam\n"
        "from tumor_classifier.imaging import read_image\n"
        "heat = grad_cam(classifier.model, classifier.preprocess(read_image(sys.argv[1])), 0)\n"
        "assert heat.shape == (64, 64) and 0 <= heat.min() <= heat.max() <= 1\n"
        "print(sum(result.probabilities.values()))\n"
    )
    film = next((small_dataset / "validation" / "NOR").glob("*.png"))
    done = subprocess.run([sys.executable, "-c", script, str(film)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert float(done.stdout.strip().splitlines()[-1]) == pytest.approx(1.0, abs=1e-4)
    assert np.isclose(1.0, 1.0)


def _to_dicom(png: Path, target: Path, compressed: bool, monochrome1: bool) -> None:
    """A real film as a 16-bit DICOM that reads back to the same picture."""
    import pydicom
    from PIL import Image
    from pydicom.uid import RLELossless

    from conftest import write_dicom

    pixels = np.asarray(Image.open(png), np.uint16) * 257  # 8 -> 16 bits, same [0, 1] values
    attributes: dict[str, object] = {}
    if monochrome1:
        pixels = 65535 - pixels
        attributes["PhotometricInterpretation"] = "MONOCHROME1"
    path = write_dicom(target, pixels, **attributes)
    if compressed:
        dataset = pydicom.dcmread(path)
        dataset.compress(RLELossless)
        dataset.save_as(path)
    from tumor_classifier.imaging import read_image

    np.testing.assert_allclose(read_image(path), read_image(png), atol=1e-6)


@pytest.mark.slow
def test_dicom_datasets_train_evaluate_predict_without_leaking_identifiers(
    small_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Replace two of every three real films by DICOM (RLE or MONOCHROME1): a mixed dataset.
    pngs = sorted(small_dataset.rglob("*.png"))
    for index, png in enumerate(pngs):
        if index % 3:
            _to_dicom(png, png.with_suffix(".dcm"), compressed=index % 3 == 1,
                      monochrome1=index % 2 == 0)
            png.unlink()
    run_dir = tmp_path / "run"
    assert main(["train", str(small_dataset), "--out", str(run_dir), "--epochs", "1",
                 "--model", "seed", "--image-size", "64", "--workers", "1"]) == 0
    assert main(["evaluate", str(run_dir), str(small_dataset / "validation")]) == 0
    dicoms = sorted(small_dataset.rglob("*.dcm"))
    assert main(["predict", str(run_dir), *map(str, dicoms), "--csv",
                 str(tmp_path / "p.csv")]) == 0
    metrics = (run_dir / "evaluation" / "validation" / "metrics.json").read_text()
    assert '"n": 9' in metrics
    captured = capsys.readouterr()
    texts = [captured.out, captured.err, caplog.text]
    written = [*run_dir.rglob("*"), tmp_path / "p.csv"]
    texts += [path.read_text(errors="ignore") for path in written
              if path.is_file() and path.suffix in (".json", ".csv", ".txt")]
    with np.load(run_dir / "thumbnails.npz") as saved:  # compressed: read, not grepped
        assert sorted(saved.files) == ["train", "train_files", "validation",
                                       "validation_files"]
        texts += [" ".join(saved[name].tolist()) for name in saved.files if "files" in name]
    for text in texts:
        for identifier in ("SECRET-PATIENT-42", "Doe^Jane", "19600101"):
            assert identifier not in text
    assert all(str(path) in captured.out for path in dicoms)
