from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tumor_classifier.cli import main


@pytest.mark.slow
def test_predict_prints_every_class_and_exits_nonzero_after_a_bad_file(
    trained_run: Path, prepared_mias: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    films = sorted((prepared_mias / "test" / "CAN").glob("*.png"))[:2]
    bad = tmp_path / "notes.png"
    bad.write_text("hello")
    code = main(["predict", str(trained_run), str(films[0]), str(bad), str(films[1]),
                 "--csv", str(tmp_path / "out.csv")])
    out = capsys.readouterr().out
    assert code == 1
    for film in films:
        assert f"{film}: " in out and "BEN " in out and "CAN " in out and "NOR " in out
    with (tmp_path / "out.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["file", "prediction", "prob_BEN", "prob_CAN", "prob_NOR"]
    assert [row["file"] for row in rows] == [str(film) for film in films]
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
        "epochs=1, image_size=64, workers=1))\n"
        f"result = Classifier.load(run).predict([sys.argv[1]])[0]\n"
        "print(sum(result.probabilities.values()))\n"
    )
    film = next((small_dataset / "validation" / "NOR").glob("*.png"))
    done = subprocess.run([sys.executable, "-c", script, str(film)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert float(done.stdout.strip().splitlines()[-1]) == pytest.approx(1.0, abs=1e-4)
    assert np.isclose(1.0, 1.0)
