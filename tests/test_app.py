"""The Streamlit app: AppTest for the view logic, and a real headless browser end to end."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tumor_classifier.predict import Classifier

APP = Path(__file__).resolve().parents[1] / "src" / "tumor_classifier" / "app.py"


def _films(prepared_mias: Path) -> list[Path]:
    return sorted((prepared_mias / "test" / "CAN").glob("*.png"))[:2]


def _app(trained_run: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("TUMOR_CLASSIFIER_RUN_DIR", str(trained_run))
    app = AppTest.from_file(str(APP), default_timeout=120)
    app.run()
    assert not app.exception
    return app


def _probabilities(table) -> dict[str, float]:  # type: ignore[no-untyped-def]
    frame = table.value
    return dict(zip(frame["class"], map(float, frame["probability"]), strict=True))


def test_model_card_gives_each_number_its_interval_beside_the_baseline() -> None:
    from tumor_classifier.app import evaluation_summary

    metrics = {"n": 46, "accuracy": 0.4348, "majority_baseline": 0.6739,
               "balanced_accuracy": 0.4063, "macro_auc_ovr": 0.5702,
               "binary": {"CAN_vs_rest": {"auc": 0.5165}},
               "bootstrap_unit": "patients (split.csv)",
               "confidence_intervals": {"accuracy": [0.2826, 0.5870],
                                        "macro_auc_ovr": [0.4391, 0.7109],
                                        "auc_CAN_vs_rest": [0.3058, 0.7273]}}
    assert evaluation_summary("test", metrics).splitlines() == [
        "**Evaluation on the test split**, n = 46; 95% intervals by bootstrap over patients "
        "(split.csv):",
        "",
        "- accuracy 0.435 [0.283, 0.587] (majority baseline 0.674)",
        "- balanced accuracy 0.406",  # no interval recorded: none shown
        "- macro AUC 0.570 [0.439, 0.711]",
        "- CAN vs rest AUC 0.516 [0.306, 0.727]",  # two classes: no abnormal-vs-normal line
    ]
    assert "used in training for calibration" in evaluation_summary("validation", metrics)


@pytest.mark.slow
def test_upload_shows_the_same_probabilities_as_predict(
    trained_run: Path, prepared_mias: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = _app(trained_run, monkeypatch)
    assert "not a medical device" in app.info[0].value
    assert any("Model card" in header.value for header in app.sidebar.header)
    card = "\n".join(markdown.value for markdown in app.sidebar.markdown)
    assert "**Evaluation on the validation split** (used in training for calibration" in card
    assert "- macro AUC 0." in card and "] (majority baseline 0." in card
    assert "- **Class weights** in training: BEN " in card  # balanced, the default
    film = _films(prepared_mias)[0]
    app.file_uploader[0].set_value((film.name, film.read_bytes(), "image/png")).run()
    assert not app.exception and not app.error
    expected = Classifier.load(trained_run).predict([film])[0]
    shown = _probabilities(app.table[0])
    for name, value in expected.probabilities.items():
        assert shown[name] == pytest.approx(value, abs=1e-6)
    assert app.subheader[0].value.startswith(f"{film.name}: ")
    assert len(app.image) == 1
    assert not app.main.warning  # a test film: the model never saw it
    app.checkbox[0].check().run()  # test-time augmentation: the mean with the flip
    with_flip = Classifier.load(trained_run, tta=True).predict([film])[0].probabilities
    shown = _probabilities(app.table[0])
    for name, value in with_flip.items():
        assert shown[name] == pytest.approx(value, abs=1e-6)
    assert max(abs(with_flip[name] - value) for name, value in
               expected.probabilities.items()) > 1e-5  # the flip changes them
    app.checkbox[0].uncheck().run()

    trained = sorted((prepared_mias / "train" / "CAN").glob("*.png"))[0]
    app.file_uploader[0].set_value((trained.name, trained.read_bytes(), "image/png")).run()
    assert not app.exception
    assert [warning.value for warning in app.main.warning] == [
        f"This is a train image {trained} of this model, or a near-copy of it: its result "
        "shows what the model learnt, not how it does on new images."]


@pytest.mark.slow
def test_bad_upload_is_an_error_and_the_other_files_still_work(
    trained_run: Path, prepared_mias: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = _app(trained_run, monkeypatch)
    film = _films(prepared_mias)[0]
    app.file_uploader[0].set_value([
        ("notes.png", b"this is not an image", "image/png"),
        (film.name, film.read_bytes(), "image/png"),
        ("truncated.png", film.read_bytes()[:4000], "image/png"),
    ]).run()
    assert not app.exception
    errors = [error.value for error in app.error]
    assert len(errors) == 2
    assert errors[0].startswith("notes.png: not a readable image")
    assert errors[1].startswith("truncated.png: cannot decode image")
    assert [sub.value.split(":")[0] for sub in app.subheader] == [film.name]


@pytest.mark.slow
def test_dicom_upload_shows_metadata_but_no_identifiers(
    trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from conftest import ramp, write_dicom

    app = _app(trained_run, monkeypatch)
    data = write_dicom(tmp_path / "scan.dcm", ramp(256, 256),
                       PhotometricInterpretation="MONOCHROME1").read_bytes()
    app.file_uploader[0].set_value(("scan.dcm", data, "application/dicom")).run()
    assert not app.exception and not app.error
    metadata = app.table[1].value
    assert list(metadata["value"]) == ["MG", "MLO", "L", "16", "MONOCHROME1"]
    page = str([element.value for element in app.markdown] + [t.value.to_string()
                                                              for t in app.table])
    assert "SECRET-PATIENT-42" not in page and "Doe" not in page


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
def test_real_browser_two_sessions(trained_run: Path, prepared_mias: Path,
                                   tmp_path: Path) -> None:
    playwright = pytest.importorskip("playwright.sync_api")
    if not Path("/usr/bin/chromium").exists():
        pytest.fail("Debian's chromium is required at /usr/bin/chromium (apt-get install "
                    "chromium); .ci/run installs it.")
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tumor_classifier.cli", "app", str(trained_run),
         "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise AssertionError("the app did not start") from None
                time.sleep(0.5)
        films = _films(prepared_mias)
        classifier = Classifier.load(trained_run)
        with playwright.sync_playwright() as driver:
            browser = driver.chromium.launch(
                executable_path="/usr/bin/chromium",
                args=["--headless", "--no-sandbox", "--disable-gpu",
                      "--disable-background-networking", "--disable-component-update",
                      "--disable-sync", "--no-first-run"])
            pages = [browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
                     for _ in films]
            for page in pages:
                page.goto(f"http://127.0.0.1:{port}/", timeout=60_000)
                page.wait_for_selector("input[type=file]", state="attached", timeout=60_000)
            # two sessions upload at the same time
            for page, film in zip(pages, films, strict=True):
                page.set_input_files("input[type=file]", str(film))
            for index, (page, film) in enumerate(zip(pages, films, strict=True)):
                expected = classifier.predict([film])[0].probabilities
                # Wait for the table itself: the heading can render seconds before it (a
                # fixed wait after the heading once saw the page without the table).
                for value in expected.values():
                    page.get_by_text(f"{value:.6f}").first.wait_for(timeout=120_000)
                page.wait_for_timeout(1500)  # let the image render for the screenshot
                text = page.inner_text("body")
                for value in expected.values():
                    assert f"{value:.6f}" in text
                page.screenshot(path=str(tmp_path / f"session{index}.png"), full_page=True)
            browser.close()
        assert all((tmp_path / f"session{i}.png").stat().st_size > 10_000 for i in range(2))
    finally:
        server.terminate()
        server.wait(timeout=30)
    # stopping the command stops the server (it is Streamlit itself, not its parent)
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2)


def test_display_stretches_a_12_bit_image_stored_in_16_bits(tmp_path: Path) -> None:

    from conftest import ramp, write_png
    from tumor_classifier.app import _display_image
    from tumor_classifier.imaging import read_image

    image = read_image(write_png(tmp_path / "twelve.png", ramp(high=4095)))
    assert image.max() < 0.07  # read at its true depth: nearly black if shown as is
    display = _display_image(image)
    assert display.min() == 0.0 and display.max() == 1.0


@pytest.mark.slow
def test_a_model_with_the_other_breast_asks_for_both_films(
    paired_run: Path, prepared_mias: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = _app(paired_run, monkeypatch)
    assert len(app.file_uploader) == 2
    film, other = prepared_mias / "test/BEN/mdb019.png", prepared_mias / "test/NOR/mdb020.png"
    app.file_uploader[0].set_value((film.name, film.read_bytes(), "image/png")).run()
    assert not app.exception and not app.subheader  # waits for the other breast
    app.file_uploader[1].set_value((other.name, other.read_bytes(), "image/png")).run()
    assert not app.exception and not app.error
    expected = Classifier.load(paired_run).predict([film], other_breasts=[other])[0]
    shown = _probabilities(app.table[0])
    for name, value in expected.probabilities.items():
        assert shown[name] == pytest.approx(value, abs=1e-6)
    assert app.subheader[0].value.startswith(f"{film.name}: ")
