from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ramp, write_dicom, write_png
from tumor_classifier.imaging import ImageReadError, read_image, read_image_and_metadata
from tumor_classifier.preprocessing import load_model_input, preprocess


def test_real_mias_film_reads_as_float_in_unit_range(mias_dir: Path) -> None:
    image = read_image(mias_dir / "mdb001.pgm")
    raw = np.asarray(Image.open(mias_dir / "mdb001.pgm"))
    assert image.shape == (1024, 1024) and image.dtype == np.float32
    np.testing.assert_allclose(image, raw / 255.0, atol=1e-7)


def test_16_bit_png_keeps_all_16_bits(tmp_path: Path) -> None:
    pixels = ramp(dtype=np.uint16, high=65535)
    pixels[0, 0], pixels[0, 1] = 1000, 1001  # differ only below the top 8 bits
    image = read_image(write_png(tmp_path / "film16.png", pixels))
    np.testing.assert_allclose(image, pixels / 65535.0, atol=1e-7)
    assert image[0, 1] - image[0, 0] == pytest.approx(1 / 65535, abs=1e-9)
    assert read_image_and_metadata(tmp_path / "film16.png")[1]["bits_stored"] == 16


def test_16_bit_tiff(tmp_path: Path) -> None:
    pixels = ramp(dtype=np.uint16, high=40000)
    path = tmp_path / "film.tiff"
    Image.fromarray(pixels).save(path)
    np.testing.assert_allclose(read_image(path), pixels / 65535.0, atol=1e-7)


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".pgm", ".tif"])
def test_8_bit_grey_formats(tmp_path: Path, suffix: str) -> None:
    pixels = ramp(dtype=np.uint8, high=255)
    path = tmp_path / f"film{suffix}"
    Image.fromarray(pixels).save(path)
    np.testing.assert_allclose(read_image(path), pixels / 255.0, atol=1e-7)


def test_colour_modes_become_rgb_and_grey_input(tmp_path: Path) -> None:
    grey = ramp(dtype=np.uint8, high=255)
    rgb = np.stack([grey, grey, grey], axis=-1)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(rgb).convert("RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(rgb).convert("P").save(tmp_path / "palette.png")
    Image.fromarray(rgb).save(tmp_path / "photo.jpg", quality=95)
    for name in ("rgb.png", "rgba.png", "palette.png", "photo.jpg"):
        image = read_image(tmp_path / name)
        assert image.shape == (64, 48, 3), name
        model_input = preprocess(image, 32, 1)
        assert model_input.shape == (32, 32, 1)
    np.testing.assert_allclose(read_image(tmp_path / "rgb.png")[..., 0], grey / 255.0, atol=1e-7)


def test_dicom_16_bit_monochrome2_uses_stored_range_and_metadata(tmp_path: Path) -> None:
    pixels = ramp(dtype=np.uint16, high=4095)
    path = write_dicom(tmp_path / "film.dcm", pixels, BitsStored=12, HighBit=11)
    image, metadata = read_image_and_metadata(path)
    np.testing.assert_allclose(image, pixels / 4095.0, atol=1e-6)
    assert metadata["modality"] == "MG" and metadata["view"] == "MLO"
    assert metadata["laterality"] == "L" and metadata["bits_stored"] == 12
    assert metadata["photometric_interpretation"] == "MONOCHROME2"
    assert "SECRET-PATIENT-42" not in repr(metadata) and "Doe" not in repr(metadata)


def test_dicom_monochrome1_is_inverted(tmp_path: Path) -> None:
    pixels = ramp(dtype=np.uint16, high=65535)
    normal = read_image(write_dicom(tmp_path / "m2.dcm", pixels))
    inverted = read_image(
        write_dicom(tmp_path / "m1.dcm", pixels, PhotometricInterpretation="MONOCHROME1")
    )
    np.testing.assert_allclose(inverted, 1.0 - normal, atol=1e-6)


def test_dicom_window_and_rescale(tmp_path: Path) -> None:
    pixels = ramp(dtype=np.uint16, high=4000)
    path = write_dicom(
        tmp_path / "window.dcm", pixels, RescaleSlope=2, RescaleIntercept=-1000,
        WindowCenter=3000, WindowWidth=2001,
    )
    image = read_image(path)
    values = pixels.astype(np.float64) * 2 - 1000
    expected = np.clip((values - 2999.5) / 2000 + 0.5, 0, 1)
    np.testing.assert_allclose(image, expected, atol=1e-6)


def test_dicom_recognised_by_preamble_without_extension(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "IM0001", ramp())
    assert read_image(path).shape == (64, 48)


def test_dicom_multiframe_and_no_pixel_data_are_refused(tmp_path: Path) -> None:
    pixels = np.concatenate([ramp(), ramp()])
    multi = write_dicom(tmp_path / "multi.dcm", pixels, NumberOfFrames=2, Rows=64)
    with pytest.raises(ImageReadError, match=r"multi.dcm: multi-frame DICOM \(2 frames"):
        read_image(multi)
    empty = write_dicom(tmp_path / "report.dcm", ramp())
    import pydicom

    dataset = pydicom.dcmread(empty)
    del dataset.PixelData
    dataset.save_as(empty)
    with pytest.raises(ImageReadError, match="report.dcm: DICOM without pixel data"):
        read_image(empty)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims a huge size: a decompression bomb's signature."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 1024)) + chunk(b"IEND", b""))


def test_bad_inputs_each_get_one_clear_message(tmp_path: Path) -> None:
    (tmp_path / "empty.png").write_bytes(b"")
    good = io.BytesIO()
    Image.fromarray(ramp(256, 256, np.uint8, 255)).save(good, format="PNG")
    (tmp_path / "truncated.png").write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    (tmp_path / "notes.png").write_text("this is not an image")
    (tmp_path / "bomb.png").write_bytes(_png_header_only(100_000, 100_000))
    write_png(tmp_path / "pixel.png", np.array([[7]], np.uint8))
    write_png(tmp_path / "black.png", np.zeros((64, 64), np.uint8))
    dicom = write_dicom(tmp_path / "full.dcm", ramp(128, 128)).read_bytes()
    (tmp_path / "truncated.dcm").write_bytes(dicom[: len(dicom) - 5000])
    (tmp_path / "notes.dcm").write_text("not dicom either")
    (tmp_path / "folder.png").mkdir()
    expected = {
        "empty.png": r"empty.png: empty file \(0 bytes\)",
        "truncated.png": r"truncated.png: cannot decode image .* truncated",
        "notes.png": r"notes.png: not a readable image \(unknown format\)",
        "bomb.png": r"bomb.png: image claims .* \(possible decompression bomb",
        "pixel.png": r"pixel.png: image is 1x1 pixels, too small",
        "black.png": r"black.png: image is constant \(every pixel is 0\)",
        "truncated.dcm": r"truncated.dcm: cannot decode DICOM pixel data",
        "notes.dcm": r"notes.dcm: not a DICOM file",
        "folder.png": r"folder.png: is a folder, not an image file",
    }
    for name, message in expected.items():
        with pytest.raises(ImageReadError, match=message):
            read_image(tmp_path / name)


def test_unicode_and_spaces_in_names_simply_work(tmp_path: Path) -> None:
    path = write_png(tmp_path / "Mammographie gauche — été.png", ramp(dtype=np.uint8, high=255))
    assert load_model_input(path, 32, 1).shape == (32, 32, 1)


def test_file_object_upload(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "upload.dcm", ramp())
    from_file = read_image(io.BytesIO(path.read_bytes()), name="upload.dcm")
    np.testing.assert_array_equal(from_file, read_image(path))


def _real_film_12_bit(mias_dir: Path, size: int = 256) -> np.ndarray:
    """A real mini-MIAS film as 12-bit pixels (the 8 bits shifted up, plus a low-bit ramp)."""
    film = np.asarray(Image.open(mias_dir / "mdb028.pgm").resize((size, size)), np.uint16)
    return (film << 4) | (np.arange(size * size, dtype=np.uint16).reshape(size, size) % 16)


def _compressed(path: Path, pixels: np.ndarray, syntax: str) -> Path:
    import imagecodecs
    import pydicom
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit, JPEGLossless

    if syntax == JPEGBaseline8Bit:
        eight = (pixels >> 4).astype(np.uint8)
        encoded = io.BytesIO()
        Image.fromarray(eight).save(encoded, format="JPEG", quality=95)
        dataset = pydicom.dcmread(write_dicom(path, eight))
        dataset.PixelData = encapsulate([encoded.getvalue()])
    elif syntax == JPEGLossless:
        dataset = pydicom.dcmread(write_dicom(path, pixels, BitsStored=12, HighBit=11))
        dataset.PixelData = encapsulate([imagecodecs.ljpeg_encode(pixels, bitspersample=12)])
    else:
        dataset = pydicom.dcmread(write_dicom(path, pixels, BitsStored=12, HighBit=11))
        dataset.compress(syntax)
        dataset.save_as(path)
        return path
    dataset.file_meta.TransferSyntaxUID = syntax
    dataset["PixelData"].VR = "OB"
    dataset.save_as(path)
    return path


@pytest.mark.parametrize("syntax", [
    "1.2.840.10008.1.2.5",      # RLE Lossless
    "1.2.840.10008.1.2.4.57",   # JPEG Lossless, process 14
    "1.2.840.10008.1.2.4.80",   # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.90",   # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.50",   # JPEG Baseline (lossy, 8-bit)
])
def test_compressed_dicom_transfer_syntaxes_of_real_films(mias_dir: Path, tmp_path: Path,
                                                          syntax: str) -> None:
    pixels = _real_film_12_bit(mias_dir)
    image, metadata = read_image_and_metadata(_compressed(tmp_path / "c.dcm", pixels, syntax))
    assert image.shape == pixels.shape
    if syntax.endswith(".50"):
        np.testing.assert_allclose(image, (pixels >> 4) / 255.0, atol=0.05)
    else:
        np.testing.assert_allclose(image, pixels / 4095.0, atol=1e-6)  # bit-exact
        assert metadata["bits_stored"] == 12


def test_unsupported_transfer_syntax_is_named(tmp_path: Path) -> None:
    import pydicom
    from pydicom.encaps import encapsulate

    path = write_dicom(tmp_path / "video.dcm", ramp())
    dataset = pydicom.dcmread(path)
    dataset.PixelData = encapsulate([b"\xff\x0a" + b"\x00" * 64])
    dataset["PixelData"].VR = "OB"
    dataset.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.102"  # MPEG-4 AVC/H.264
    dataset.save_as(path)
    with pytest.raises(ImageReadError,
                       match=r"video.dcm: cannot decode DICOM transfer syntax 'MPEG-4 AVC"):
        read_image(path)


def _pydicom_file(name: str) -> Path:
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name, download=False)
    assert path is not None, f"pydicom test file {name} is not installed"
    return Path(path)


@pytest.mark.parametrize("name", [
    "MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm",
    "MR_small_bigendian.dcm", "MR_small_implicit.dcm", "MR_small_expb.dcm",
])
def test_pydicom_lossless_and_big_endian_files_match_the_uncompressed_original(name: str) -> None:
    original = read_image(_pydicom_file("MR_small.dcm"))
    np.testing.assert_array_equal(read_image(_pydicom_file(name)), original)


@pytest.mark.parametrize("name, shape", [
    ("CT_small.dcm", (128, 128)),
    ("image_dfl.dcm", (512, 512)),                  # deflated
    ("JPGExtended.dcm", (1024, 256)),                # JPEG extended, 12-bit
    ("JPEG2000.dcm", (1024, 256)),
    ("SC_rgb_jpeg_gdcm.dcm", (100, 100, 3)),         # JPEG lossless SV1, RGB
    ("SC_rgb_jpeg_dcmtk.dcm", (100, 100, 3)),        # JPEG baseline, YBR
    ("examples_palette.dcm", (350, 800, 3)),         # palette colour
])
def test_pydicom_image_files_read(name: str, shape: tuple[int, ...]) -> None:
    image = read_image(_pydicom_file(name))
    assert image.shape == shape and 0.0 <= image.min() and image.max() <= 1.0


@pytest.mark.parametrize("name, message", [
    ("MR_truncated.dcm", "cannot decode DICOM pixel data"),
    ("reportsi.dcm", r"DICOM without pixel data \(Basic Text SR Storage\): not an image"),
    ("rtplan.dcm", r"DICOM without pixel data \(RT Plan Storage\)"),
    ("no_meta.dcm", "not a DICOM file"),
    ("rtdose.dcm", r"multi-frame DICOM \(15 frames"),
])
def test_pydicom_non_image_and_damaged_files_are_refused(name: str, message: str) -> None:
    with pytest.raises(ImageReadError, match=f"{name}: {message}"):
        read_image(_pydicom_file(name))


def test_dicom_voi_lut_sequence(tmp_path: Path) -> None:
    from pydicom.dataset import Dataset

    pixels = ramp(dtype=np.uint16, high=255)
    lut = Dataset()
    lut.LUTDescriptor = [256, 0, 8]
    # an inverting 8-bit LUT, stored as 16-bit words (OW)
    lut.LUTData = np.arange(255, -1, -1, dtype=np.uint16).tobytes()
    path = write_dicom(tmp_path / "voi.dcm", pixels, BitsStored=8, HighBit=7,
                       VOILUTSequence=[lut])
    np.testing.assert_allclose(read_image(path), 1.0 - pixels / 255.0, atol=1e-6)


def test_dicom_bomb_is_refused_from_the_header(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "huge.dcm", ramp())
    import pydicom

    dataset = pydicom.dcmread(path)
    dataset.Rows, dataset.Columns = 60000, 60000
    dataset.save_as(path)
    with pytest.raises(ImageReadError, match=r"huge.dcm: image claims 60000x60000 pixels"):
        read_image(path)


# Property test: whatever bytes arrive, read_image either works or raises ImageReadError.
from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


def _valid_files() -> dict[str, bytes]:
    files = {}
    for suffix, pixels in ((".png", ramp(dtype=np.uint16)), (".tif", ramp(dtype=np.uint16)),
                           (".jpg", ramp(dtype=np.uint8, high=255))):
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format=Image.registered_extensions()[suffix])
        files[suffix] = buffer.getvalue()
    for name in ("MR_small.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm"):
        files[".dcm" + name] = _pydicom_file(name).read_bytes()
    return files


VALID_FILES = _valid_files()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(sorted(VALID_FILES)), cut=st.floats(0, 1),
       noise=st.binary(max_size=64), position=st.floats(0, 1))
# Found by this test: damaged RLE data on which pylibjpeg-rle's Rust decoder panics (pyo3's
# PanicException is a BaseException, not an Exception).
@example(kind=".dcmMR_small_RLE.dcm", cut=0.9874072850877417, position=0.4803026088537472,
         noise=bytes.fromhex("c2b28d127b8a6400fd020e02265ab9ebfd30ce51ec5fbcee5321ec0eeec4281a"
                             "ec2a394ee150113f16ddbfaf3ebed4fe341e623f5aea"))
def test_random_truncations_and_corruptions_only_raise_image_read_error(
    kind: str, cut: float, noise: bytes, position: float
) -> None:
    data = VALID_FILES[kind][: int(len(VALID_FILES[kind]) * cut)]
    at = int(len(data) * position)
    data = data[:at] + noise + data[at + len(noise):]
    suffix = ".dcm" if kind.startswith(".dcm") else kind
    try:
        image = read_image(io.BytesIO(data), name=f"fuzz{suffix}")
    except ImageReadError as error:
        assert str(error).startswith(f"fuzz{suffix}: ")
    else:
        assert image.dtype == np.float32 and np.isfinite(image).all()


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=2048), suffix=st.sampled_from([".png", ".dcm", ".tif", ".jpg"]))
def test_random_bytes_only_raise_image_read_error(data: bytes, suffix: str) -> None:
    with pytest.raises(ImageReadError, match=f"^random{suffix}: "):
        read_image(io.BytesIO(data), name=f"random{suffix}")
