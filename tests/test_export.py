from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tumor_classifier.cli import main
from tumor_classifier.export import export, load_onnx_classifier, saved_model_metadata
from tumor_classifier.predict import Classifier


@pytest.fixture(scope="module")
def onnx_file(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("tf2onnx")
    return export(trained_run, tmp_path_factory.mktemp("export") / "model.onnx", "onnx")


@pytest.mark.slow
def test_onnx_gives_the_keras_probabilities_on_real_films(
    trained_run: Path, prepared_mias: Path, onnx_file: Path
) -> None:
    films = sorted((prepared_mias / "test").rglob("*.png"))[::6]
    keras_results = Classifier.load(trained_run).predict(films)
    onnx_classifier = load_onnx_classifier(onnx_file)
    assert onnx_classifier.class_names == ("BEN", "CAN", "NOR")
    for keras_result, onnx_result in zip(keras_results, onnx_classifier.predict(films),
                                         strict=True):
        for name, value in keras_result.probabilities.items():
            assert onnx_result.probabilities[name] == pytest.approx(value, abs=1e-4)
    # The run's test-time augmentation default travels in the metadata (off for seed), and
    # turned on it averages with the top-bottom flip as the Keras model does.
    assert onnx_classifier.config["tta"] is False and not onnx_classifier.tta
    onnx_classifier.tta = True
    keras_flipped = Classifier.load(trained_run, tta=True).predict(films[:2])
    for keras_result, onnx_result in zip(keras_flipped, onnx_classifier.predict(films[:2]),
                                         strict=True):
        for name, value in keras_result.probabilities.items():
            assert onnx_result.probabilities[name] == pytest.approx(value, abs=1e-4)


@pytest.mark.slow
def test_predict_onnx_runs_without_tensorflow_or_keras(
    trained_run: Path, prepared_mias: Path, onnx_file: Path, tmp_path: Path
) -> None:
    film = next((prepared_mias / "test" / "CAN").glob("*.png"))
    # Make `import tensorflow` and `import keras` fail in the child process.
    script = (
        "import sys\n"
        "sys.modules['tensorflow'] = None\n"
        "sys.modules['keras'] = None\n"
        "from tumor_classifier.cli import main\n"
        f"code = main(['predict', '--onnx', {str(onnx_file)!r}, {str(film)!r}, "
        f"'--csv', {str(tmp_path / 'p.csv')!r}])\n"
        "assert 'tensorflow' not in [m.split('.')[0] for m in sys.modules if sys.modules[m]]\n"
        "sys.exit(code)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    row = (tmp_path / "p.csv").read_text().splitlines()[1].split(",")
    expected = Classifier.load(trained_run).predict([film])[0].probabilities
    assert [float(value) for value in row[2:5]] == pytest.approx(
        [expected[name] for name in ("BEN", "CAN", "NOR")], abs=1e-4)
    assert row[5] == ""  # near_copy_of: an ONNX file carries no thumbnails of its data


@pytest.mark.slow
def test_saved_model_export_with_metadata(trained_run: Path, tmp_path: Path) -> None:
    import tensorflow as tf

    out = export(trained_run, tmp_path / "saved", "saved-model")
    metadata = saved_model_metadata(out)
    assert metadata["class_names"] == ["BEN", "CAN", "NOR"] and metadata["image_size"] == 128
    loaded = tf.saved_model.load(str(out))
    batch = np.random.default_rng(0).random((2, 128, 128, 1), np.float32)
    expected = np.asarray(Classifier.load(trained_run).model.predict_on_batch(batch))
    np.testing.assert_allclose(np.asarray(loaded.serve(batch)), expected, atol=1e-5)
    with pytest.raises(FileExistsError, match="exists; choose another output path"):
        export(trained_run, out, "saved-model")
    assert main(["export", str(trained_run), str(tmp_path / "x"), "--format", "onnx"]) == 0
    assert json.loads(json.dumps(metadata))["calibration"]["temperature"] > 0


@pytest.mark.parametrize("name", ["seed_augmented", "mammo_net", "mammo_mil", "resnet_small",
                                  "efficientnet_lite0"])
def test_onnx_export_runs_augmented_batchnorm_presets_in_inference_mode(
        name: str, tmp_path: Path) -> None:
    """Exported as plain Keras exports them, these presets ran BatchNormalization in
    training mode and kept the augmentation's random ops (outputs off by up to 0.5)."""
    pytest.importorskip("tf2onnx")
    import keras
    import onnxruntime

    from tumor_classifier.export import _inference_model
    from tumor_classifier.models import build_model

    rng = np.random.default_rng(0)
    images = rng.random((4, 64, 64, 1), np.float32)
    model = build_model(name, (64, 64, 1), 3)
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    model.fit(images, np.eye(3, dtype=np.float32)[[0, 1, 2, 0]], epochs=2, verbose=0)
    expected = np.asarray(model(images, training=False))
    wrapped = _inference_model(model)
    wrapped(images[:1])
    wrapped.export(str(tmp_path / "m.onnx"), format="onnx", verbose=False)
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"))
    got = session.run(None, {session.get_inputs()[0].name: images})[0]
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert keras.config.dtype_policy().name == "float32"


@pytest.mark.slow
def test_onnx_of_a_model_with_the_other_breast(paired_run: Path, prepared_mias: Path,
                                               tmp_path: Path) -> None:
    pytest.importorskip("tf2onnx")
    onnx_classifier = load_onnx_classifier(export(paired_run, tmp_path / "m.onnx", "onnx"))
    films = [prepared_mias / "test/BEN/mdb019.png", prepared_mias / "test/NOR/mdb020.png"]
    expected = Classifier.load(paired_run).predict(films, other_breasts=films[::-1])
    for keras_result, onnx_result in zip(expected, onnx_classifier.predict(
            films, other_breasts=films[::-1]), strict=True):
        for name, value in keras_result.probabilities.items():
            assert onnx_result.probabilities[name] == pytest.approx(value, abs=1e-4)
