"""The notebook runs top to bottom on the real data and writes a complete run directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import MIAS_DIR

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "tumor_classifier.ipynb"


def test_notebook_is_stored_without_outputs() -> None:
    notebook = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None
    assert "parameters" in notebook["cells"][1]["metadata"]["tags"]


@pytest.mark.slow
def test_notebook_runs_and_writes_a_run_directory(tmp_path: Path) -> None:
    papermill = pytest.importorskip("papermill")
    run_dir = tmp_path / "run"
    papermill.execute_notebook(
        str(NOTEBOOK), str(tmp_path / "executed.ipynb"), cwd=str(NOTEBOOK.parent),
        parameters={"MIAS_SOURCE": str(MIAS_DIR), "DATA_DIR": str(tmp_path / "data"),
                    "RUN_DIR": str(run_dir), "EPOCHS": 1, "IMAGE_SIZE": 64},
        kernel_name="python3", progress_bar=False,
    )
    for name in ("model.keras", "config.json", "history.csv", "plots/history.png",
                 "evaluation/test/metrics.json", "evaluation/test/confusion_matrix.png"):
        assert (run_dir / name).is_file(), name
    executed = (tmp_path / "executed.ipynb").read_text(encoding="utf-8")
    assert "majority baseline" in executed and "tumor-classifier app" in executed
