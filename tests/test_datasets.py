from __future__ import annotations

import csv
import hashlib
import os
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tumor_classifier.cv import load_samples
from tumor_classifier.data import scan_folder
from tumor_classifier.datasets import (
    parse_mias_info,
    prepare_folders,
    prepare_mini_mias,
)
from tumor_classifier.other_breast import other_breasts


def _rows(dest: Path) -> list[dict[str, str]]:
    with (dest / "split.csv").open(encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_parse_info_labels_and_circles(mias_dir: Path) -> None:
    films = parse_mias_info((mias_dir / "Info.txt").read_text(encoding="latin-1"))
    assert len(films) == 240
    assert Counter(film.label for film in films.values()) == {"NOR": 155, "BEN": 47, "CAN": 38}
    assert films["mdb001"].circles == [(535, 425, 197)]
    assert films["mdb001"].patient_id == films["mdb002"].patient_id == "mias001"
    assert films["mdb003"].patient_id != films["mdb002"].patient_id


def test_prepare_splits_by_woman_and_counts_add_up(mias_dir: Path, prepared_mias: Path) -> None:
    rows = _rows(prepared_mias)
    assert len(rows) == 240
    assert Counter(row["label"] for row in rows) == {"NOR": 155, "BEN": 47, "CAN": 38}
    splits_of_woman: dict[str, set[str]] = {}
    for row in rows:
        splits_of_woman.setdefault(row["patient_id"], set()).add(row["split"])
        path = prepared_mias / row["file"]
        assert path.is_file() and path.parts[-3:-1] == (row["split"], row["label"])
    assert len(splits_of_woman) == 120
    assert all(len(splits) == 1 for splits in splits_of_woman.values())
    on_disk = sorted(str(p.relative_to(prepared_mias)) for p in prepared_mias.rglob("*.png"))
    assert on_disk == sorted(row["file"] for row in rows)
    per_split = Counter(row["split"] for row in rows)
    assert per_split["train"] > per_split["validation"] > 0 and per_split["test"] > 0
    # every split sees every class (stratified by woman's label)
    for split in ("train", "validation", "test"):
        assert {row["label"] for row in rows if row["split"] == split} == {"BEN", "CAN", "NOR"}
    # lossless: same pixels as the source film
    film = next(row for row in rows if row["file"].endswith("mdb001.png"))
    np.testing.assert_array_equal(
        np.asarray(Image.open(prepared_mias / film["file"])),
        np.asarray(Image.open(mias_dir / "mdb001.pgm")),
    )


def test_same_seed_same_split_other_seed_other_split(mias_dir: Path, prepared_mias: Path,
                                                      tmp_path: Path) -> None:
    prepare_mini_mias(mias_dir, tmp_path / "again", seed=0)
    assert _rows(tmp_path / "again") == _rows(prepared_mias)
    prepare_mini_mias(mias_dir, tmp_path / "other", seed=1)
    assert _rows(tmp_path / "other") != _rows(prepared_mias)


def test_prepare_reads_the_official_archive(mias_dir: Path, tmp_path: Path) -> None:
    archive = tmp_path / "all-mias.tar.gz"
    with tarfile.open(archive, "w:gz") as handle:
        handle.add(mias_dir / "Info.txt", arcname="Info.txt")
        for number in range(1, 21):
            path = mias_dir / f"mdb{number:03d}.pgm"
            if path.exists():
                handle.add(path, arcname=path.name)
    counts = prepare_mini_mias(archive, tmp_path / "from_archive")
    present = len([n for n in range(1, 21) if (mias_dir / f"mdb{n:03d}.pgm").exists()])
    assert sum(sum(per_class.values()) for per_class in counts.values()) == present


def test_prepare_never_touches_the_source_and_refuses_a_full_dest(
    mias_dir: Path, prepared_mias: Path
) -> None:
    digest = hashlib.sha256((mias_dir / "mdb001.pgm").read_bytes()).hexdigest()
    with pytest.raises(FileExistsError, match="folder exists and is not empty"):
        prepare_mini_mias(mias_dir, prepared_mias)
    assert hashlib.sha256((mias_dir / "mdb001.pgm").read_bytes()).hexdigest() == digest
    with pytest.raises(FileNotFoundError, match="no Info.txt"):
        prepare_mini_mias(prepared_mias, prepared_mias.parent / "x")


def test_prepare_names_each_films_other_breast(prepared_mias: Path) -> None:
    rows = _rows(prepared_mias)
    assert len(rows) == 240
    _assert_pairs_are_mutual_within_a_woman(rows)
    first = next(row for row in rows if row["file"].endswith("/mdb001.png"))
    assert first["other_breast"].endswith("/mdb002.png")


def _flat_films(prepared_mias: Path, source: Path) -> None:
    """The 240 real films as plain class folders, the woman in each name (hard links)."""
    for row in _rows(prepared_mias):
        target = source / row["label"] / f"{row['patient_id']}_{Path(row['file']).name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(prepared_mias / row["file"], target)


def test_prepare_folders_splits_real_films_by_patient_and_only_links_them(
    prepared_mias: Path, tmp_path: Path
) -> None:
    source = tmp_path / "flat"
    _flat_films(prepared_mias, source)
    before = sorted((path, path.stat().st_mtime_ns) for path in source.rglob("*"))
    counts = prepare_folders(source, tmp_path / "split", patient_pattern=r"mias\d+")
    rows = _rows(tmp_path / "split")
    assert len(rows) == sum(sum(per_class.values()) for per_class in counts.values()) == 240
    splits_of: dict[str, set[str]] = {}
    for row in rows:
        film = tmp_path / "split" / row["file"]
        # linked to its own source film, under its split and class; patient from the name
        assert film.is_symlink() and film.samefile(source / row["label"] / film.name)
        assert film.parts[-3:-1] == (row["split"], row["label"])
        assert film.name.startswith(row["patient_id"] + "_")
        splits_of.setdefault(row["patient_id"], set()).add(row["split"])
    assert len(splits_of) == 120 and all(len(splits) == 1 for splits in splits_of.values())
    women = Counter(next(iter(splits)) for splits in splits_of.values())
    assert women == {"train": 72, "validation": 24, "test": 24}
    assert all(count > 0 for per_class in counts.values() for count in per_class.values())
    assert sorted((path, path.stat().st_mtime_ns) for path in source.rglob("*")) == before
    # the split layout every command reads
    assert len(scan_folder(tmp_path / "split" / "train").files) == sum(counts["train"].values())
    assert len(load_samples(tmp_path / "split")) == 240

    # the same patients from a CSV give the same split; another seed another one
    groups = tmp_path / "groups.csv"
    with groups.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "patient_id"])
        for path in sorted(source.rglob("*.png")):
            writer.writerow([path.relative_to(source).as_posix(), path.name.split("_")[0]])
    prepare_folders(source, tmp_path / "by_csv", groups=groups)
    assert _rows(tmp_path / "by_csv") == rows
    # cv --groups reads the same CSV the same way
    samples = load_samples(source, groups)
    assert len(samples) == 240
    assert all(sample.path.name.startswith(sample.patient + "_") for sample in samples)
    prepare_folders(source, tmp_path / "seed1", patient_pattern=r"(mias\d+)_", seed=1)
    assert [row["split"] for row in _rows(tmp_path / "seed1")] != [row["split"] for row in rows]


def test_prepare_folders_splits_an_image_split_dataset_again_by_patient(
    prepared_mias: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The original project's layout, split by image as student projects often are: each
    # woman's first film in Train/, her second in val/ (names in any case, Keras' aliases).
    source = tmp_path / "by_image"
    for row in _rows(prepared_mias):
        part = "Train" if int(Path(row["file"]).stem[3:]) % 2 else "val"
        target = source / part / row["label"] / f"{row['patient_id']}_{Path(row['file']).name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(prepared_mias / row["file"], target)
    before = sorted((path, path.stat().st_mtime_ns) for path in source.rglob("*"))
    # the pattern is searched below the class folder, so an anchored one works
    counts = prepare_folders(source, tmp_path / "out", patient_pattern=r"^mias\d+")
    assert "pooled and split again by patient" in caplog.text
    rows = _rows(tmp_path / "out")
    assert len(rows) == sum(sum(per_class.values()) for per_class in counts.values()) == 240
    splits_of: dict[str, set[str]] = {}
    for row in rows:
        film = tmp_path / "out" / row["file"]
        old_part = film.parent.name  # each file keeps its old split folder in its path
        assert film.parts[-4:-2] == (row["split"], row["label"]) and old_part in ("Train", "val")
        assert film.samefile(source / old_part / row["label"] / film.name)
        splits_of.setdefault(row["patient_id"], set()).add(row["split"])
    assert len(splits_of) == 120 and all(len(splits) == 1 for splits in splits_of.values())
    assert sorted((path, path.stat().st_mtime_ns) for path in source.rglob("*")) == before
    # cv --groups pools the splits the same way (paths relative to the dataset)
    groups = tmp_path / "groups.csv"
    groups.write_text("file,patient_id\n" + "".join(
        f"{path.relative_to(source).as_posix()},{path.name.split('_')[0]}\n"
        for path in sorted(source.rglob("*.png"))))
    samples = load_samples(source, groups)
    assert len(samples) == 240 and len({sample.patient for sample in samples}) == 120
    with pytest.raises(FileNotFoundError, match=r"by_image DEST --patient-pattern REGEX"):
        load_samples(source)


def test_prepare_folders_says_when_names_show_one_woman_in_two_splits(
    prepared_mias: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Real films under DDSM names (A_0001_1.LEFT_MLO.png, A_0001_1.RIGHT_MLO.png, ...)
    source = tmp_path / "ddsm"
    for row in _rows(prepared_mias):
        number = int(Path(row["file"]).stem[3:])
        name = f"A_{(number + 1) // 2:04d}_1.{'LEFT' if number % 2 else 'RIGHT'}_MLO.png"
        (source / row["label"]).mkdir(parents=True, exist_ok=True)
        os.link(prepared_mias / row["file"], source / row["label"] / name)
    prepare_folders(source, tmp_path / "by-image", one_image_per_patient=True)
    assert ("women have images in more than one split, though their file names or DICOM "
            "headers say the images are one woman's" in caplog.text)
    assert "--one-image-per-patient gave them different patients" in caplog.text
    caplog.clear()
    prepare_folders(source, tmp_path / "by-woman", patient_pattern=r"^A_\d{4}")
    assert "more than one split" not in caplog.text
    assert len({row["patient_id"] for row in _rows(tmp_path / "by-woman")}) == 120
    # no patient option: the names say whose each film is, and pair the breasts
    prepare_folders(source, tmp_path / "by-name")
    assert "more than one split" not in caplog.text
    rows = _rows(tmp_path / "by-name")
    assert len({row["patient_id"] for row in rows}) == 120
    _assert_pairs_are_mutual_within_a_woman(rows)


def _assert_pairs_are_mutual_within_a_woman(rows: list[dict[str, str]]) -> None:
    """Each row's other breast: the same woman, the same split, another film, mutually."""
    by_file = {row["file"]: row for row in rows}
    for row in rows:
        other = by_file[row["other_breast"]]
        assert other["patient_id"] == row["patient_id"] and other["split"] == row["split"]
        assert other["file"] != row["file"] and other["other_breast"] == row["file"]


def test_mini_mias_films_in_class_folders_need_no_patient_option(
    prepared_mias: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The 240 real films as plain class folders under their own names (mdb001.png, ...),
    # as mini-MIAS is often passed around: its numbers say whose each film is.
    source = tmp_path / "flat"
    for row in _rows(prepared_mias):
        target = source / row["label"] / Path(row["file"]).name
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(prepared_mias / row["file"], target)
    with caplog.at_level("INFO"):
        prepare_folders(source, tmp_path / "out")
    assert "each image's patient from its file name" in caplog.text
    rows = _rows(tmp_path / "out")
    # the women and pairs that `prepare mini-mias` reads from Info.txt
    truth = {Path(row["file"]).name: row for row in _rows(prepared_mias)}
    assert len(rows) == 240
    for row in rows:
        name = Path(row["file"]).name
        assert row["patient_id"] == truth[name]["patient_id"]
        assert Path(row["other_breast"]).name == Path(truth[name]["other_breast"]).name
    _assert_pairs_are_mutual_within_a_woman(rows)
    # cv reads the same women and pairs from the folders, with no split.csv or --groups
    samples = load_samples(source)
    assert len(samples) == 240
    for sample in samples:
        assert sample.patient == truth[sample.path.name]["patient_id"]
        assert sample.other_breast is not None
        assert sample.other_breast.name == Path(truth[sample.path.name]["other_breast"]).name


def test_prepare_folders_reads_the_patient_from_dicom_headers_and_never_writes_it(
    prepared_mias: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from conftest import write_dicom

    # The films of 15 women as DICOM files named img1.dcm, img2.dcm, ...: only the header
    # says whose each is; one woman's IDs carry side and view, as CBIS-DDSM's do.
    source = tmp_path / "dicom"
    rows = sorted(_rows(prepared_mias), key=lambda row: row["file"].split("/")[-1])[:30]
    for number, row in enumerate(rows, start=1):
        film = int(Path(row["file"]).stem[3:])
        woman = (film + 1) // 2
        patient_id = f"SECRET-{woman:03d}"
        if woman == (int(Path(rows[0]["file"]).stem[3:]) + 1) // 2:
            patient_id = f"Mass-Training_SECRET_{woman:05d}_{'LEFT' if film % 2 else 'RIGHT'}_CC"
        pixels = np.asarray(Image.open(prepared_mias / row["file"]).convert("L"))
        write_dicom(source / row["label"] / f"img{number}.dcm", pixels, PatientID=patient_id,
                    ImageLaterality="L" if film % 2 else "R", ViewPosition="MLO")
    with caplog.at_level("DEBUG"):
        prepare_folders(source, tmp_path / "out", patient_from_dicom=True)
    written = _rows(tmp_path / "out")
    assert len(written) == 30 and len({row["patient_id"] for row in written}) == 15
    assert {row["patient_id"] for row in written} == {f"patient-{n:04d}" for n in range(1, 16)}
    woman_of_film = {f"img{n}.dcm": (int(Path(row["file"]).stem[3:]) + 1) // 2
                     for n, row in enumerate(rows, start=1)}
    splits_of: dict[int, set[tuple[str, str]]] = {}
    for row in written:
        splits_of.setdefault(woman_of_film[Path(row["file"]).name], set()).add(
            (row["split"], row["patient_id"]))
    assert all(len(places) == 1 for places in splits_of.values())  # one patient, one split
    # each film's other breast: the same patient's film of the same view, other side
    by_file = {row["file"]: row for row in written}
    for row in written:
        other = by_file[row["other_breast"]]
        assert other["patient_id"] == row["patient_id"] and other["other_breast"] == row["file"]
        assert other["file"] != row["file"]
    assert all(other_breasts([tmp_path / "out" / row["file"] for row in written]))
    # the identifiers are compared, never written or logged
    assert "SECRET" not in (tmp_path / "out" / "split.csv").read_text()
    assert "SECRET" not in caplog.text

    # images whose header names no patient: one line each, nothing written
    Image.open(prepared_mias / rows[0]["file"]).save(source / "NOR" / "extra.png")
    write_dicom(source / "NOR" / "anonymised.dcm", np.asarray(
        Image.open(prepared_mias / rows[1]["file"]).convert("L")), PatientID="")
    with pytest.raises(ValueError, match=r"--patient-from-dicom: 2 of 32 image\(s\) name no "
                       r"patient:\n  .*anonymised.dcm: no PatientID in its DICOM header "
                       r"\(anonymised\).\n  .*extra.png: not a DICOM file"):
        prepare_folders(source, tmp_path / "out2", patient_from_dicom=True)
    assert not (tmp_path / "out2").exists()


def test_prepare_folders_pairs_the_breasts_from_a_groups_csv(
    prepared_mias: Path, tmp_path: Path
) -> None:
    # Real films under opaque names, with patient, side and view in a CSV (as public sets
    # publish them); one woman has a second left film of the same view: she stays unpaired.
    source = tmp_path / "plain"
    lines = ["file,patient_id,laterality,view"]
    rows = sorted(_rows(prepared_mias), key=lambda row: row["file"].split("/")[-1])[:20]
    for number, row in enumerate(rows, start=1):
        film = int(Path(row["file"]).stem[3:])
        target = source / row["label"] / f"{number:03d}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(prepared_mias / row["file"], target)
        lines.append(f"{row['label']}/{target.name},w{(film + 1) // 2},"
                     f"{'LEFT' if film % 2 else 'right'},MLO")
    woman = lines[1].split(",")[1]
    os.link(source / lines[1].split(",")[0], source / lines[1].split("/")[0] / "999.png")
    lines.append(f"{lines[1].split('/')[0]}/999.png,{woman},L,mlo")
    (tmp_path / "groups.csv").write_text("\n".join(lines) + "\n")
    prepare_folders(source, tmp_path / "out", groups=tmp_path / "groups.csv")
    written = {Path(row["file"]).name: row for row in _rows(tmp_path / "out")}
    assert len(written) == 21
    for row in written.values():
        if row["patient_id"] == woman:
            assert row["other_breast"] == ""
        else:
            other = written[Path(row["other_breast"]).name]
            assert other["patient_id"] == row["patient_id"] != woman
            assert Path(other["other_breast"]).name == Path(row["file"]).name


def test_prepare_folders_can_keep_near_copies_with_their_original(
    prepared_mias: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = tmp_path / "flat"
    _flat_films(prepared_mias, source)
    originals = [sorted((source / label).glob("*.png"))[5] for label in ("BEN", "CAN", "NOR")]
    copies = [source / "BEN" / "copy.jpg", source / "CAN" / "copy_512.png",
              source / "NOR" / "copy_16bit.png"]
    film = [Image.open(path).convert("L") for path in originals]
    film[0].save(copies[0], quality=75)
    film[1].resize((512, 512)).save(copies[1])
    Image.fromarray(np.asarray(film[2]).astype(np.uint16) * 257).save(copies[2])

    prepare_folders(source, tmp_path / "plain", one_image_per_patient=True)
    assert len({row["patient_id"] for row in _rows(tmp_path / "plain")}) == 243

    from tumor_classifier.cli import main

    assert main(["prepare", "folders", str(source), str(tmp_path / "joined"),
                 "--one-image-per-patient", "--group-near-copies"]) == 0
    rows = {Path(row["file"]).name: row for row in _rows(tmp_path / "joined")}
    for original, copy in zip(originals, copies, strict=True):
        assert rows[copy.name]["patient_id"] == rows[original.name]["patient_id"]
        assert rows[copy.name]["split"] == rows[original.name]["split"]
    # only the three copies were joined: no two of the 240 real films, not even a woman's
    # two breasts, are taken for copies
    assert len({row["patient_id"] for row in rows.values()}) == 240
    assert "3 pair(s) of near-copies with different patients" in caplog.text


def test_prepare_folders_names_each_problem(tmp_path: Path) -> None:
    from conftest import ramp, write_png

    source = tmp_path / "flat"
    for name in ("BEN/p1_a.png", "CAN/p2_a.png", "CAN/p2_b.png", "NOR/scan.png"):
        write_png(source / name, ramp())
    with pytest.raises(ValueError, match=r"with one of --groups CSV .* \(the file names do "
                                         "not say it"):
        prepare_folders(source, tmp_path / "out")
    with pytest.raises(ValueError, match="with one option only"):
        prepare_folders(source, tmp_path / "out", patient_pattern=r"p\d",
                        one_image_per_patient=True)
    with pytest.raises(ValueError, match=r"finds no patient in 1 of 4 file name\(s\), e\.g\. "
                                         r"scan\.png; fix the pattern"):
        prepare_folders(source, tmp_path / "out", patient_pattern=r"p\d")
    with pytest.raises(ValueError, match="not a regular expression"):
        prepare_folders(source, tmp_path / "out", patient_pattern="p(")
    with pytest.raises(FileNotFoundError, match="groups.csv: --groups CSV not found"):
        prepare_folders(source, tmp_path / "out", groups=tmp_path / "groups.csv")
    groups = tmp_path / "groups.csv"
    groups.write_text("file,patient_id\nBEN/p1_a.png,p1\nCAN/p2_a.png,p2\nCAN/p2_b.png,p2\n")
    with pytest.raises(ValueError, match=r"no patient_id for 1 of 4 image\(s\), e\.g\. NOR/scan"):
        prepare_folders(source, tmp_path / "out", groups=groups)
    with pytest.raises(ValueError, match="lies inside"):
        prepare_folders(source, source / "split", one_image_per_patient=True)
    assert not (tmp_path / "out").exists() and not (source / "split").exists()
    counts = prepare_folders(source, tmp_path / "out", one_image_per_patient=True,
                             fractions=(1, 0, 0))
    assert counts["train"] == {"BEN": 1, "CAN": 2, "NOR": 1}
    with pytest.raises(FileExistsError, match="not empty"):
        prepare_folders(source, tmp_path / "out", one_image_per_patient=True)
