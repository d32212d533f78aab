from __future__ import annotations

import csv
import hashlib
import json
import re
import shlex
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tumor_classifier.config import TrainConfig
from tumor_classifier.fit import read_history
from tumor_classifier.train import _scan_splits, patients_in_several_splits, train


def test_each_preset_has_its_own_default_input_size() -> None:
    assert TrainConfig(model="seed",
                       data_dir="d", out="o").input_size == 128  # seed, as the original
    for model in ("seed_augmented", "mammo_net", "mammo_mil", "efficientnet_lite0"):
        assert TrainConfig(data_dir="d", out="o", model=model).input_size == 256
    assert TrainConfig(data_dir="d", out="o", model="mammo_net", image_size=96).input_size == 96


def test_config_json_round_trip() -> None:
    config = TrainConfig(model="seed", data_dir="d", out="o", epochs=3, patience=2)
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match=r"Unknown training option\(s\) \['epoch'\]"):
        TrainConfig.from_dict({"data_dir": "d", "out": "o", "epoch": 3})


@pytest.mark.slow
def test_training_on_real_films_writes_a_complete_run_directory(trained_run: Path) -> None:
    for name in ("model.keras", "config.json", "history.csv", "plots/history.png",
                 "evaluation/validation/metrics.json", "evaluation/validation/report.txt",
                 "evaluation/validation/confusion_matrix.png", "evaluation/validation/roc.png",
                 "evaluation/validation/predictions.csv"):
        assert (trained_run / name).is_file(), name
    config = json.loads((trained_run / "config.json").read_text())
    assert config["class_names"] == ["BEN", "CAN", "NOR"]
    assert config["input_shape"] == [128, 128, 1] and config["parameters"] == 1_629_443
    assert config["training"]["seed"] == 0 and config["versions"]["keras"]
    assert config["training"]["learning_rate"] == 1e-3  # the default, resolved
    assert sum(config["data"]["train"].values()) > sum(config["data"]["validation"].values())
    assert config["class_weight"]["CAN"] > config["class_weight"]["NOR"]
    with (trained_run / "history.csv").open() as handle:
        history = list(csv.DictReader(handle))
    assert len(history) == 2 and {"loss", "val_loss", "accuracy", "val_accuracy"} <= set(
        history[0])
    assert 1 <= config["kept_epoch"] <= 2 and config["collapsed"] is False
    assert config["patients_in_several_splits"] == 0  # prepare splits by woman
    metrics = json.loads((trained_run / "evaluation/validation/metrics.json").read_text())
    assert metrics["n"] == sum(config["data"]["validation"].values())


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_train_refuses_unreadable_files_then_skips_them_on_request(small_dataset: Path,
                                                                    tmp_path: Path) -> None:
    (small_dataset / "train" / "CAN" / "broken scan.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (small_dataset / "validation" / "NOR" / "empty.png").write_bytes(b"")
    before = _digest(small_dataset)
    config = TrainConfig(model="seed",
                         data_dir=str(small_dataset), out=str(tmp_path / "run"), epochs=1,
                         image_size=64, workers=1)
    with pytest.raises(ValueError, match=r"(?s)2 unreadable image\(s\).*broken scan.png.*"
                       r"empty.png: empty file.*--skip-unreadable"):
        train(config)
    assert not (tmp_path / "run" / "model.keras").exists()
    run_dir = train(TrainConfig(**{**config.to_dict(), "skip_unreadable": True}))
    skipped = json.loads((run_dir / "config.json").read_text())["unreadable_skipped"]
    assert len(skipped) == 2 and "broken scan.png" in skipped[0]
    assert _digest(small_dataset) == before  # nothing deleted or modified
    with pytest.raises(FileExistsError, match="already holds a trained model"):
        train(TrainConfig(**{**config.to_dict(), "skip_unreadable": True}))


@pytest.mark.slow
def test_explicit_steps_and_early_stopping(small_dataset: Path, tmp_path: Path) -> None:
    run_dir = train(TrainConfig(model="seed", data_dir=str(small_dataset), out=str(tmp_path / "r"),
                                epochs=4, image_size=64, batch_size=4, steps_per_epoch=2,
                                validation_steps=1, patience=1, learning_rate=0.0,
                                class_weight="BEN=5,CAN=5,NOR=1", workers=1))
    config = json.loads((run_dir / "config.json").read_text())
    # with a zero learning rate validation loss never improves: early stopping after 2 epochs
    assert config["epochs_run"] == 2
    assert config["class_weight"] == {"BEN": 5.0, "CAN": 5.0, "NOR": 1.0}


def test_keep_last_keeps_the_final_epoch_not_the_best(small_dataset: Path,
                                                      tmp_path: Path) -> None:
    from tumor_classifier.data import scan_folder
    from tumor_classifier.predict import Classifier
    from tumor_classifier.preprocessing import load_model_input

    # at this rate the validation loss is lowest at epoch 3 of 4 (1.102, then 1.114)
    options = dict(data_dir=str(small_dataset), model="seed", epochs=4, image_size=32,
                   workers=1, learning_rate=0.01)
    validation = scan_folder(small_dataset / "validation")
    inputs = np.stack([load_model_input(path, 32, 1, crop=True) for path in validation.files])
    kept_loss = {}
    for keep in ("best", "last"):
        run = train(TrainConfig(out=str(tmp_path / keep), keep=keep, **options))
        config = json.loads((run / "config.json").read_text())
        losses = read_history(run)["val_loss"]
        assert config["training"]["keep"] == keep
        probabilities = Classifier.load(run).predict_batch(inputs, calibrated=False)
        # the kept model's validation loss is the one logged for the kept epoch: the
        # cross-entropy against targets smoothed by 0.1 (the default)
        assert config["training"]["label_smoothing"] == 0.1
        targets = np.full(probabilities.shape, 0.1 / 3)
        targets[np.arange(len(inputs)), validation.labels] += 0.9
        kept_loss[keep] = -np.mean(np.sum(targets * np.log(probabilities), axis=1))
        assert kept_loss[keep] == pytest.approx(losses[config["kept_epoch"] - 1], rel=1e-4)
        expected = 4 if keep == "last" else int(np.argmin(losses)) + 1
        assert config["kept_epoch"] == expected
    assert kept_loss["last"] > kept_loss["best"]  # the two runs kept different epochs
    with pytest.raises(ValueError, match="--keep 'first': use best or last"):
        train(TrainConfig(out=str(tmp_path / "x"), keep="first", **options))
    with pytest.raises(ValueError, match="--label-smoothing must be at least 0 and below 1, "
                       "got 1.0"):
        train(TrainConfig(out=str(tmp_path / "x"), label_smoothing=1.0, **options))


def test_an_interrupted_run_resumes_after_its_last_finished_epoch(
        small_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tumor_classifier import resume
    from tumor_classifier.data import Batches

    monkeypatch.setattr(resume, "BACKUP_SECONDS", 0.0)  # a backup after every epoch
    options = dict(data_dir=str(small_dataset), model="seed", epochs=4, image_size=32,
                   workers=1)
    whole = train(TrainConfig(out=str(tmp_path / "whole"), **options))
    set_epoch = Batches.set_epoch

    def stop_at_third_epoch(batches: Any, epoch: int) -> None:
        if epoch == 2:
            raise RuntimeError("power cut")
        set_epoch(batches, epoch)

    monkeypatch.setattr(Batches, "set_epoch", stop_at_third_epoch)
    cut = tmp_path / "cut"
    with pytest.raises(RuntimeError, match="power cut"):
        train(TrainConfig(out=str(cut), **options))
    monkeypatch.undo()
    monkeypatch.setattr(resume, "BACKUP_SECONDS", 0.0)
    assert len(read_history(cut)["loss"]) == 2 and not (cut / "config.json").exists()
    with pytest.raises(FileExistsError, match="holds an interrupted run; continue it with "
                       "--resume"):
        train(TrainConfig(out=str(cut), **options))
    with pytest.raises(ValueError, match="changed: --epochs 4 then, 5 now"):
        train(TrainConfig(out=str(cut), resume=True, **{**options, "epochs": 5}))
    with pytest.raises(FileNotFoundError, match="no interrupted run to resume"):
        train(TrainConfig(out=str(tmp_path / "new"), resume=True, **options))

    # a run started before --label-smoothing existed trained without it
    options_file = cut / resume.BACKUP / resume.OPTIONS
    started = options_file.read_text()
    options_file.write_text(json.dumps({key: value for key, value in json.loads(started).items()
                                        if key != "label_smoothing"}))
    with pytest.raises(ValueError, match="changed: --label-smoothing 0.0 then, the default now"):
        train(TrainConfig(out=str(cut), resume=True, **options))
    options_file.write_text(started)
    # how many processes decode is free to change
    resumed = train(TrainConfig(out=str(cut), resume=True, **{**options, "workers": 2}))
    assert not (resumed / "backup").exists()
    config = json.loads((resumed / "config.json").read_text())
    assert config["kept_epoch"] == 4 and config["epochs_run"] == 4
    # Weights, optimizer state and the batch order were restored: the run goes on
    # exactly as the uninterrupted one did.
    for column, values in read_history(whole).items():
        assert read_history(resumed)[column] == pytest.approx(values, rel=1e-5), column
    calibration = json.loads((whole / "config.json").read_text())["calibration"]
    assert config["calibration"]["temperature"] == pytest.approx(calibration["temperature"])
    assert config["calibration"]["thresholds"] == pytest.approx(calibration["thresholds"])


def test_mixed_precision_trains_and_saves_a_float32_model(small_dataset: Path,
                                                           tmp_path: Path) -> None:
    import keras
    import numpy as np

    from tumor_classifier.fit import precision_policy
    from tumor_classifier.predict import Classifier

    run_dir = train(TrainConfig(model="seed", data_dir=str(small_dataset), out=str(tmp_path / "r"),
                                epochs=1, image_size=64, batch_size=4, workers=1,
                                precision="mixed"))
    assert keras.config.dtype_policy().name == "float32"  # restored after training
    model = keras.models.load_model(run_dir / "model.keras", compile=False)
    assert {layer.dtype_policy.name for layer in model.layers} == {"float32"}
    probabilities = Classifier.load(run_dir).predict_batch(
        np.zeros((2, 64, 64, 1), np.float32))
    assert probabilities.dtype != np.float16 and np.allclose(probabilities.sum(axis=1), 1)
    with pytest.raises(ValueError, match="--precision 'half': use float32 or mixed"):
        with precision_policy("half"):
            pass


@pytest.mark.slow
def test_pretrained_preset_fine_tunes_on_real_films_at_a_tenth_of_the_rate(
        small_dataset: Path, tmp_path: Path) -> None:
    import numpy as np

    from tumor_classifier.efficientnet_lite import imagenet_weights_path, read_torch_state_dict
    from tumor_classifier.predict import Classifier

    # one batch per epoch: the default number of epochs is what is tested
    run_dir = train(TrainConfig(data_dir=str(small_dataset), out=str(tmp_path / "r"),
                                model="efficientnet_lite0", image_size=64, batch_size=4,
                                steps_per_epoch=1, validation_steps=1, workers=1))
    config = json.loads((run_dir / "config.json").read_text())
    assert config["training"]["learning_rate"] == 1e-4
    # fine-tuning takes 20 epochs by default, training from scratch 10
    assert config["training"]["epochs"] == config["epochs_run"] == 20
    scratch = train(TrainConfig(data_dir=str(small_dataset), out=str(tmp_path / "s"),
                                model="seed", image_size=32, steps_per_epoch=1,
                                validation_steps=1, workers=1))
    assert json.loads((scratch / "config.json").read_text())["epochs_run"] == 10
    assert config["training"]["weights"] == "imagenet"
    # Trained with top-bottom flips, it predicts with them by default (seed does not), and
    # its temperature, thresholds and validation report were fitted on those predictions.
    assert config["tta"] is True
    assert json.loads((scratch / "config.json").read_text())["tta"] is False
    classifier = Classifier.load(run_dir)
    assert classifier.tta and not Classifier.load(run_dir, tta=False).tta
    validation = run_dir / "evaluation" / "validation"
    assert json.loads((validation / "metrics.json").read_text())["tta"] is True
    with (validation / "predictions.csv").open() as handle:
        row = next(csv.DictReader(handle))
    (again,) = classifier.predict([row["file"]])
    for name, value in again.probabilities.items():
        assert float(row[f"prob_{name}"]) == pytest.approx(value, abs=1e-5)
    # Fine-tuned, but the frozen BatchNormalization still holds the ImageNet statistics.
    norm = classifier.model.get_layer("backbone").get_layer("head_bn")
    np.testing.assert_array_equal(np.asarray(norm.moving_mean),
                                  read_torch_state_dict(imagenet_weights_path())[
                                      "_bn1.running_mean"])
    film = sorted((small_dataset / "validation" / "CAN").iterdir())[0]
    (prediction,) = classifier.predict([film])
    assert abs(sum(prediction.probabilities.values()) - 1) < 1e-5


def _separable_dataset(root: Path, per_class: dict[str, int], seed: int) -> Path:
    """Noise images; BEN has a bright square, CAN a bright bar, NOR nothing."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, count in per_class.items():
        for name in ("BEN", "CAN", "NOR"):
            (root / split / name).mkdir(parents=True)
            for index in range(count):
                image = rng.normal(0.3, 0.1, (64, 64))
                y, x = rng.integers(8, 40, 2)
                if name == "BEN":
                    image[y : y + 10, x : x + 10] += 0.5
                elif name == "CAN":
                    image[y : y + 4, x : x + 20] += 0.5
                pixels = (np.clip(image, 0, 1) * 65535).astype(np.uint16)
                Image.fromarray(pixels).save(root / split / name / f"{index}.png")
    return root


@pytest.mark.slow
@pytest.mark.parametrize("model", ["resnet_small", "mammo_net", "efficientnet_lite0"])
def test_batch_norm_presets_learn_a_separable_task(model: str, tmp_path: Path) -> None:
    """Guards against inference statistics that never settle on small datasets (Keras'
    default BatchNorm momentum left these presets at chance after 15 epochs), and shows
    that the pretrained preset learns with its ImageNet statistics frozen."""
    data = _separable_dataset(tmp_path / "data", {"train": 40, "validation": 15}, seed=0)
    run_dir = train(TrainConfig(data_dir=str(data), out=str(tmp_path / "run"), model=model,
                                image_size=64, epochs=15, batch_size=16, workers=1,
                                crop_breast=False))
    metrics = json.loads((run_dir / "evaluation/validation/metrics.json").read_text())
    assert metrics["macro_auc_ovr"] > 0.8  # chance is 0.5; before the fix about 0.4


@pytest.mark.slow
def test_diverged_training_says_so_in_one_line(small_dataset: Path, tmp_path: Path) -> None:
    # A rate of 1e6 sends the loss to NaN in the first epoch; without the check, training
    # ended in an unrelated numpy error while computing the calibration error of NaNs.
    with pytest.raises(ValueError, match=r"training diverged .* lower --learning-rate than "
                       r"1e\+06, e\.g\. 100000"):
        train(TrainConfig(model="seed",
                          data_dir=str(small_dataset), out=str(tmp_path / "r"), epochs=3,
                          image_size=64, batch_size=4, workers=1, learning_rate=1e6))
    history = (tmp_path / "r" / "history.csv").read_text().splitlines()
    assert len(history) < 1 + 3  # TerminateOnNaN stopped it before the third epoch


@pytest.mark.slow
def test_a_collapsed_model_is_flagged(small_dataset: Path, tmp_path: Path,
                                      caplog: pytest.LogCaptureFixture) -> None:
    # At rate 10 the loss stays finite but every ReLU dies: the same probabilities for
    # every film (what `seed` at 1,024 px did at its default rate on the GPU).
    run_dir = train(TrainConfig(model="seed", data_dir=str(small_dataset), out=str(tmp_path / "r"),
                                epochs=2, image_size=64, batch_size=4, workers=1,
                                learning_rate=10.0))
    assert json.loads((run_dir / "config.json").read_text())["collapsed"] is True
    assert "gives every validation image the same probabilities" in caplog.text
    assert "lower --learning-rate (e.g. 1)" in caplog.text


def test_other_breast_refuses_what_it_cannot_pair(small_dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"--other-breast needs a preset trained from scratch"):
        train(TrainConfig(data_dir=str(small_dataset), out=str(tmp_path / "a"),
                          model="efficientnet_lite0", other_breast=True))
    # class folders without split.csv, under names that pair nothing (not mini-MIAS's
    # mdbNNN): one line saying what is missing and what to do
    for film in list(small_dataset.glob("*/*/mdb*.png")):
        film.rename(film.with_name(f"film{film.name[3:]}"))
    with pytest.raises(ValueError, match=r"nothing names the other breast of these films"):
        train(TrainConfig(model="seed", data_dir=str(small_dataset), out=str(tmp_path / "b"),
                          image_size=32, epochs=1, workers=1, other_breast=True))
    assert not (tmp_path / "b" / "model.keras").exists()
    # by default, plain class folders train one film at a time
    run = train(TrainConfig(model="seed", data_dir=str(small_dataset), out=str(tmp_path / "c"),
                            image_size=32, epochs=1, workers=1))
    config = json.loads((run / "config.json").read_text())
    assert config["training"]["other_breast"] is False and config["input_shape"] == [32, 32, 1]


def test_splits_named_as_public_sets_name_them(small_dataset: Path, tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    # Training/ and val/, as Keras tutorials and many public sets name them
    (small_dataset / "train").rename(small_dataset / "Training")
    (small_dataset / "validation").rename(small_dataset / "val")
    with caplog.at_level("INFO", logger="tumor_classifier"):
        run = train(TrainConfig(data_dir=str(small_dataset), out=str(tmp_path / "r"),
                                epochs=1, workers=1))
    assert "splits: Training/ for training, val/ for validation" in caplog.text
    config = json.loads((run / "config.json").read_text())
    # the defaults: these films' other breasts are not named, so --model auto trains
    # efficientnet_lite0 from ImageNet weights, at its own 256 pixels, recorded as used
    assert config["model"] == config["training"]["model"] == "efficientnet_lite0"
    assert config["image_size"] == config["training"]["image_size"] == 256
    assert "--model auto: efficientnet_lite0 from ImageNet weights" in caplog.text
    assert sum(config["data"]["validation"].values()) == 9
    assert (run / "evaluation" / "validation" / "metrics.json").is_file()
    # without a validation split, one line says what to do; test/ is never used instead
    (small_dataset / "val").rename(small_dataset / "test")
    with pytest.raises(FileNotFoundError, match=r"no validation/ folder beside Training/; "
                       r"training checks each epoch .* \(never on test/\)"):
        train(TrainConfig(data_dir=str(small_dataset), out=str(tmp_path / "r2"), epochs=1))


def test_a_dataset_without_validation_split_is_told_the_command_that_makes_one(
        prepared_mias: Path, tmp_path: Path) -> None:
    from tumor_classifier.cli import main

    # train/ and test/ only, as many public sets ship (real films, linked: read only)
    data = tmp_path / "data"
    data.mkdir()
    for split in ("train", "test"):
        (data / split).symlink_to(prepared_mias / split, target_is_directory=True)
    before = sorted(path.name for path in (data / "train").rglob("*.png"))
    with pytest.raises(FileNotFoundError) as error:
        train(TrainConfig(data_dir=str(data), out=str(tmp_path / "r"), epochs=1))
    message = str(error.value)
    assert f"train on DEST and evaluate on {data / 'test'}/" in message
    command = re.search(r"`tumor-classifier (prepare folders [^`]+)`", message)
    assert command is not None

    # The command, as given, with the women of this split.csv as the --groups CSV
    with (prepared_mias / "split.csv").open() as handle:
        rows = [row for row in csv.DictReader(handle) if row["split"] == "train"]
    groups = tmp_path / "groups.csv"
    groups.write_text("file,patient_id\n" + "".join(
        f"{row['file'].removeprefix('train/')},{row['patient_id']}\n" for row in rows))
    dest = tmp_path / "dest"
    arguments = shlex.split(command.group(1).replace("DEST", str(dest)).replace(
        "--patient-pattern REGEX", f"--groups {groups}"))
    assert main(arguments) == 0
    with (dest / "split.csv").open() as handle:
        split = list(csv.DictReader(handle))
    assert len(split) == len(rows) and {row["split"] for row in split} == {"train", "validation"}
    women = {split_name: {row["patient_id"] for row in split if row["split"] == split_name}
             for split_name in ("train", "validation")}
    assert not women["train"] & women["validation"]
    assert 0.15 < len(women["validation"]) / len(rows) * 2 < 0.35
    assert not (dest / "test").exists()
    assert sorted(path.name for path in (data / "train").rglob("*.png")) == before
    run = train(TrainConfig(model="seed", data_dir=str(dest), out=str(tmp_path / "run"),
                            image_size=32, epochs=1, workers=1))
    assert (run / "model.keras").is_file()


def test_one_womans_films_in_two_splits_are_found_by_name_or_split_csv(
    prepared_mias: Path, tmp_path: Path
) -> None:
    # Real films under DDSM-style names (woman N's films mdb{2N-1}, mdb{2N}: LEFT, RIGHT),
    # split by image as the original project's folders were: of the first three women, one
    # in train and validation, one in train and test, one in train only.
    films = sorted(prepared_mias.glob("*/*/mdb*.png"), key=lambda path: path.name)[:6]
    data = tmp_path / "by-image"
    for film, split in zip(films, ["train", "validation", "train", "test", "train", "train"],
                           strict=True):
        number = int(film.stem[3:])
        side = "LEFT" if number % 2 else "RIGHT"
        target = data / split / film.parent.name
        target.mkdir(parents=True, exist_ok=True)
        (target / f"A_{(number + 1) // 2:04d}_1.{side}_MLO.png").symlink_to(film)
    for split in ("train", "validation", "test"):  # every class in every split
        for label in ("BEN", "CAN", "NOR"):
            (data / split / label).mkdir(parents=True, exist_ok=True)
            extra = sorted((prepared_mias / "train" / label).glob("*.png"))[-1]
            (data / split / label / f"{split}-{extra.name}").symlink_to(extra)
    count, message = patients_in_several_splits(data, *_scan_splits(data))
    assert count == 2 and message is not None
    assert message.startswith(f"{data}: 2 of 3 patients have images in more than one split, "
                              "by their file names or DICOM headers (for example A_0001_1.")
    assert "prepare folders" in message
    # split.csv's patient_id, where it lists every image: prepare splits by woman
    assert patients_in_several_splits(prepared_mias, *_scan_splits(prepared_mias)) == (0, None)
