from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest
import schemathesis
from fastapi.testclient import TestClient
from PIL import Image
from schemathesis.checks import positive_data_acceptance

from tumor_classifier.predict import Classifier
from tumor_classifier.serve import create_app


@pytest.fixture(scope="module")
def service(trained_run: Path):  # type: ignore[no-untyped-def]
    return create_app(trained_run)


@pytest.fixture(scope="module")
def client(service) -> TestClient:  # type: ignore[no-untyped-def]
    return TestClient(service)


@pytest.fixture(scope="module")
def api_schema(service):  # type: ignore[no-untyped-def]
    return schemathesis.openapi.from_asgi("/openapi.json", service)


@pytest.mark.slow
def test_predict_matches_the_cli_and_heatmap_is_a_png(client: TestClient, trained_run: Path,
                                                       prepared_mias: Path) -> None:
    film = next((prepared_mias / "test" / "CAN").glob("*.png"))
    answer = client.post("/v1/predict?heatmap=true",
                         files={"file": (film.name, film.read_bytes(), "image/png")})
    assert answer.status_code == 200
    body = answer.json()
    expected = Classifier.load(trained_run).predict([film])[0]
    assert body["prediction"] == expected.prediction
    for name, value in expected.probabilities.items():
        assert body["probabilities"][name] == pytest.approx(value, abs=1e-6)
    assert body["model"]["name"] == "seed" and body["dicom"] is None
    assert body["near_copy_of"] is None  # a test film
    # ?tta=true: the mean with the top-bottom flip, as `predict --tta`; this request only
    flipped = client.post("/v1/predict?tta=true",
                          files={"file": (film.name, film.read_bytes(), "image/png")}).json()
    with_flip = Classifier.load(trained_run, tta=True).predict([film])[0].probabilities
    for name, value in with_flip.items():
        assert flipped["probabilities"][name] == pytest.approx(value, abs=1e-6)
    assert max(abs(with_flip[name] - value) for name, value in
               expected.probabilities.items()) > 1e-5  # the flip changes them
    again = client.post("/v1/predict", files={"file": (film.name, film.read_bytes())}).json()
    assert again["probabilities"] == body["probabilities"]
    trained = sorted((prepared_mias / "validation" / "NOR").glob("*.png"))[0]
    answer = client.post("/v1/predict", files={"file": ("x.png", trained.read_bytes())})
    assert answer.json()["near_copy_of"] == f"validation image {trained}"
    with Image.open(io.BytesIO(base64.b64decode(body["heatmap_png_base64"]))) as image:
        assert image.format == "PNG" and image.size == (1024, 1024)
    assert client.get("/healthz").json() == {"status": "ok"}
    card = client.get("/v1/model").json()
    assert card["class_names"] == ["BEN", "CAN", "NOR"]
    assert card["tta"] is False  # seed trains without flips: no ?tta= means no TTA
    assert "not a medical device" in card["notice"]
    evaluation = card["evaluation"]  # train's validation report, with its intervals
    assert evaluation["split"] == "validation" and evaluation["n"] > 0
    assert set(evaluation["binary_auc"]) == {"CAN_vs_rest", "abnormal_vs_normal"}
    low, high = evaluation["confidence_intervals"]["macro_auc_ovr"]
    assert low <= evaluation["macro_auc_ovr"] <= high


@pytest.mark.slow
def test_bad_uploads_are_4xx_with_a_message(client: TestClient, prepared_mias: Path,
                                            tmp_path: Path) -> None:
    from conftest import ramp, write_dicom

    film = next((prepared_mias / "test" / "NOR").glob("*.png")).read_bytes()
    cases = {
        "notes.png": (b"just text", "not a readable image"),
        "truncated.png": (film[:5000], "cannot decode image"),
        "empty.dcm": (b"", "empty file"),
    }
    for name, (data, message) in cases.items():
        answer = client.post("/v1/predict", files={"file": (name, data, "image/png")})
        assert answer.status_code == 400 and message in answer.json()["detail"], name
    assert client.post("/v1/predict").status_code == 422
    dicom = write_dicom(tmp_path / "scan.dcm", ramp(256, 256)).read_bytes()
    answer = client.post("/v1/predict", files={"file": ("scan.dcm", dicom, "application/dicom")})
    assert answer.status_code == 200
    assert answer.json()["dicom"]["modality"] == "MG"
    assert "SECRET-PATIENT-42" not in answer.text and "Doe" not in answer.text


@pytest.mark.slow
def test_openapi_contract(api_schema) -> None:  # type: ignore[no-untyped-def]
    """Schemathesis: whatever the schema allows, the service answers as its schema says,
    and never with a server error."""
    from hypothesis import HealthCheck, given, settings

    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert {f"{op.method.upper()} {op.path}" for op in operations} >= {
        "POST /v1/predict", "GET /v1/model", "GET /healthz"}
    for operation in operations:
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def check(case) -> None:  # type: ignore[no-untyped-def]
            # The schema cannot say "a decodable image", so random bytes that it allows
            # are rightly rejected with 400: that one check does not apply.
            case.call_and_validate(excluded_checks=[positive_data_acceptance])

        check()


@pytest.mark.slow
def test_a_model_with_the_other_breast_takes_both_uploads(paired_run: Path,
                                                          prepared_mias: Path) -> None:
    client = TestClient(create_app(paired_run))
    film, other = prepared_mias / "test/BEN/mdb019.png", prepared_mias / "test/NOR/mdb020.png"
    answer = client.post("/v1/predict?heatmap=true", files={
        "file": (film.name, film.read_bytes(), "image/png"),
        "other_breast": (other.name, other.read_bytes(), "image/png")})
    assert answer.status_code == 200
    expected = Classifier.load(paired_run).predict([film], other_breasts=[other])[0]
    for name, value in expected.probabilities.items():
        assert answer.json()["probabilities"][name] == pytest.approx(value, abs=1e-6)
    assert answer.json()["heatmap_png_base64"]
    alone = client.post("/v1/predict", files={"file": (film.name, film.read_bytes(),
                                                       "image/png")})
    assert alone.status_code == 400 and "both breasts" in alone.json()["detail"]
    assert client.get("/v1/model").json()["input_shape"] == [64, 64, 2]
