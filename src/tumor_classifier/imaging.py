"""One image reader for every command: PNG/JPEG/TIFF/BMP/PGM and DICOM, at full bit depth.

`read_image` returns float32 in [0, 1]; `preprocessing.preprocess` turns that into the
model's input. Train, evaluate, predict and the app all go through these two functions, so
training and use can never disagree about pixels.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".pgm", ".ppm", ".pnm", ".dcm", ".dicom"}
)
DICOM_EXTENSIONS = frozenset({".dcm", ".dicom"})

# Full-field digital mammograms are at most about 5,000 x 6,000 pixels (30 MP). Anything over
# 150 MP is refused from its header, before decoding, so a decompression bomb cannot exhaust
# memory (150 MP is 600 MB as float32).
MAX_PIXELS = 150_000_000
# Smaller than this is not a mammogram (a 1x1 tracking pixel, an icon).
MIN_SIDE = 16

# DICOM attributes that callers may show. Everything else, and in particular every patient
# identifier (name, ID, birth date, accession number...), is never read out of the dataset.
DICOM_METADATA_FIELDS = {
    "modality": "Modality",
    "view": "ViewPosition",
    "laterality": "ImageLaterality",
    "bits_stored": "BitsStored",
    "photometric_interpretation": "PhotometricInterpretation",
}

Source = str | Path | IO[bytes]


class ImageReadError(ValueError):
    """An image that cannot be used; the message names the file, the problem and the fix."""


def is_dicom(path: Path) -> bool:
    """True for a `.dcm`/`.dicom` file or any file with the DICOM `DICM` preamble."""
    if path.suffix.lower() in DICOM_EXTENSIONS:
        return True
    try:
        with path.open("rb") as handle:
            header = handle.read(132)
    except OSError:
        return False
    return len(header) == 132 and header[128:132] == b"DICM"


def read_image(source: Source, name: str | None = None) -> np.ndarray:
    """Read an image file as float32 in [0, 1] at its full bit depth.

    Args:
        source: a path, or an open binary file (an upload) whose bytes are read.
        name: the name used in error messages for a file object.

    Returns:
        (height, width) for grey images, (height, width, 3) for colour ones.

    Raises:
        ImageReadError: the file cannot be used; the message says which file, why, and what
            to do.
    """
    return read_image_and_metadata(source, name)[0]


def read_image_and_metadata(
    source: Source, name: str | None = None
) -> tuple[np.ndarray, dict[str, Any]]:
    """Like `read_image`, and also what was read: format, size, bit depth and, for DICOM,
    modality, view, laterality, bits stored and photometric interpretation (never patient
    identifiers)."""
    label, data, dicom = _load_bytes(source, name)
    try:
        if dicom:
            # pydicom warns about non-conformant values by quoting them; those values may be
            # patient identifiers, which must never reach a log.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                image, metadata = _read_dicom(label, data)
        else:
            image, metadata = _read_pillow(label, data)
    except ImageReadError:
        raise
    except Exception as error:  # decoders raise many types on damaged files; one error out
        raise ImageReadError(
            f"{label}: cannot read image ({type(error).__name__}: {error}); the file may be "
            "truncated or damaged, re-copy or re-export it."
        ) from error
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    height, width = image.shape[:2]
    if min(height, width) < MIN_SIDE:
        raise ImageReadError(
            f"{label}: image is {width}x{height} pixels, too small to be a mammogram "
            f"(at least {MIN_SIDE}x{MIN_SIDE} expected); remove it or export the full image."
        )
    if float(image.max()) == float(image.min()):
        raise ImageReadError(
            f"{label}: image is constant (every pixel is {float(image.min()):.3g}), so it holds "
            "nothing to classify; check the export that produced it."
        )
    metadata.update(width=width, height=height)
    return image.astype(np.float32, copy=False), metadata


def _load_bytes(source: Source, name: str | None) -> tuple[str, bytes, bool]:
    """The file's bytes, after the checks that need no decoding."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        label = name or str(path)
        if path.is_dir():
            raise ImageReadError(f"{label}: is a folder, not an image file; pass the files in it.")
        if not path.exists():
            raise ImageReadError(f"{label}: file not found; check the path.")
        try:
            data = path.read_bytes()
        except OSError as error:
            raise ImageReadError(f"{label}: cannot be read ({error.strerror}).") from error
        suffix = path.suffix.lower()
    else:
        label = name or getattr(source, "name", None) or "<upload>"
        data = source.read()
        suffix = Path(label).suffix.lower()
    if not data:
        raise ImageReadError(f"{label}: empty file (0 bytes); re-copy or re-export it.")
    dicom = suffix in DICOM_EXTENSIONS or data[128:132] == b"DICM"
    return label, data, dicom


def _check_pixel_count(label: str, width: int, height: int) -> None:
    if width * height > MAX_PIXELS:
        raise ImageReadError(
            f"{label}: image claims {width}x{height} pixels ({width * height / 1e6:.0f} MP), "
            f"more than the {MAX_PIXELS / 1e6:.0f} MP limit; refused before decoding "
            "(possible decompression bomb)."
        )


def _read_pillow(label: str, data: bytes) -> tuple[np.ndarray, dict[str, Any]]:
    try:
        with warnings.catch_warnings():
            # Our own MAX_PIXELS check replaces Pillow's warning.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image: Image.Image = Image.open(io.BytesIO(data))
            _check_pixel_count(label, *image.size)
            image.load()
    except ImageReadError:
        raise
    except Image.DecompressionBombError as error:
        raise ImageReadError(
            f"{label}: image claims more than {MAX_PIXELS / 1e6:.0f} MP ({error}); refused "
            "before decoding (possible decompression bomb)."
        ) from error
    except UnidentifiedImageError as error:
        suffix = Path(label).suffix
        raise ImageReadError(
            f"{label}: not a readable image (unknown format); is it really "
            + (f"a {suffix} file?" if suffix else "an image file?")
        ) from error
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageReadError(
            f"{label}: cannot decode image ({error}); the file may be truncated or damaged, "
            "re-copy or re-export it."
        ) from error
    metadata: dict[str, Any] = {"format": image.format, "mode": image.mode}
    mode = image.mode
    if mode == "P" or mode == "PA":
        image = image.convert("RGBA" if "transparency" in image.info or mode == "PA" else "RGB")
        mode = image.mode
    if mode in ("1", "LA", "La"):
        image = image.convert("L")
        mode = "L"
    elif mode not in ("L", "RGB", "F") and not mode.startswith("I"):
        image = image.convert("RGB")  # RGBA, CMYK, YCbCr, LAB, HSV: drop alpha, to RGB
        mode = "RGB"
    array = np.asarray(image)
    if mode.startswith("I;16") or array.dtype == np.uint16:
        bits = 16
        scaled = array.astype(np.float32) / 65535.0
    elif mode == "I":
        # 32-bit integer mode: Pillow uses it for some 16-bit files; values above 16 bits
        # mean a genuinely 32-bit image.
        bits = 16 if array.min() >= 0 and array.max() <= 65535 else 32
        if bits == 16:
            scaled = array.astype(np.float32) / 65535.0
        else:
            scaled = stretch(array.astype(np.float64))
    elif mode == "F":
        bits = 32
        values = array.astype(np.float64)
        # Only float images can hold NaN or infinity; integer pixels and DICOM cannot.
        if not np.all(np.isfinite(values)):
            raise ImageReadError(
                f"{label}: image contains NaN or infinite values; re-export it."
            )
        inside = np.nanmin(values) >= 0.0 and np.nanmax(values) <= 1.0
        scaled = values.astype(np.float32) if inside else stretch(values)
    else:
        bits = 8
        scaled = array.astype(np.float32) / 255.0
    metadata["bits_stored"] = bits
    return scaled, metadata


def stretch(values: np.ndarray) -> np.ndarray:
    """Values mapped from their own [min, max] to [0, 1], as float32 (a constant array:
    zeros)."""
    low, high = float(np.min(values)), float(np.max(values))
    if high == low:
        return np.zeros(values.shape, np.float32)
    if values.dtype != np.float32:  # 32-bit integers: subtract at full precision first
        return ((values - low) / (high - low)).astype(np.float32)
    result = values - np.float32(low)  # one new array, scaled in place
    result /= np.float32(high - low)
    return result


def _read_dicom(label: str, data: bytes) -> tuple[np.ndarray, dict[str, Any]]:
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut

    not_dicom = ImageReadError(
        f"{label}: not a DICOM file (no DICM preamble or file meta); re-export it or give "
        "it the right extension."
    )
    try:
        try:
            dataset = pydicom.dcmread(io.BytesIO(data))
        except InvalidDicomError:
            # Old files may lack the preamble and file meta; a .dcm file gets a second try.
            dataset = pydicom.dcmread(io.BytesIO(data), force=True)
            if not any(keyword in dataset for keyword in ("SOPClassUID", "Modality", "Rows")):
                raise not_dicom from None
    except ImageReadError:
        raise
    except Exception as error:  # pydicom raises many types for damaged headers
        raise ImageReadError(
            f"{label}: cannot parse DICOM header ({type(error).__name__}: {error}); the file "
            "may be truncated or damaged."
        ) from error

    metadata: dict[str, Any] = {"format": "DICOM"}
    for key, keyword in DICOM_METADATA_FIELDS.items():
        value = dataset.get(keyword)
        if key == "laterality" and not value:
            value = dataset.get("Laterality")  # series-level fallback
        metadata[key] = None if value in (None, "") else (str(value) if key != "bits_stored"
                                                        else int(value))
    file_meta = getattr(dataset, "file_meta", None)
    transfer_syntax = getattr(file_meta, "TransferSyntaxUID", None)
    metadata["transfer_syntax"] = transfer_syntax.name if transfer_syntax else None

    if "PixelData" not in dataset:
        sop_class = dataset.get("SOPClassUID")
        kind = sop_class.name if sop_class is not None else "unknown SOP class"
        raise ImageReadError(
            f"{label}: DICOM without pixel data ({kind}): not an image (a structured "
            "report, plan or other non-image object); pass an image DICOM instead."
        )
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ImageReadError(
            f"{label}: multi-frame DICOM ({frames} frames, e.g. tomosynthesis) is not "
            "supported; export a single 2D image (FFDM or synthesised 2D view)."
        )
    rows, columns = int(dataset.get("Rows", 0)), int(dataset.get("Columns", 0))
    _check_pixel_count(label, columns, rows)

    try:
        stored = dataset.pixel_array
    except (NotImplementedError, RuntimeError) as error:
        name = metadata["transfer_syntax"] or "unknown"
        raise ImageReadError(
            f"{label}: cannot decode DICOM transfer syntax '{name}' ({error}); reinstall the "
            "project (its dependencies bring the pydicom decoders) or convert the file to "
            "uncompressed DICOM."
        ) from error
    except Exception as error:
        raise ImageReadError(
            f"{label}: cannot decode DICOM pixel data ({type(error).__name__}: {error}); "
            "the file may be truncated or damaged."
        ) from error
    except BaseException as error:
        # pylibjpeg-rle (2.2.0) is written in Rust and panics on some damaged RLE segments;
        # pyo3 raises that as PanicException, a BaseException that `except Exception` lets
        # through, which would stop a whole batch. Ctrl-C and exits still pass.
        if type(error).__name__ != "PanicException":
            raise
        raise ImageReadError(
            f"{label}: cannot decode DICOM pixel data (the decoder failed on damaged data); "
            "the file may be truncated or damaged."
        ) from None

    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2"))
    bits_stored = int(dataset.get("BitsStored", dataset.get("BitsAllocated", 8)))
    if photometric == "PALETTE COLOR":
        lut_bits = int(dataset.RedPaletteColorLookupTableDescriptor[2])
        return apply_color_lut(stored, dataset) / float(2**lut_bits - 1), metadata
    if not photometric.startswith("MONOCHROME"):
        # Colour (RGB, YBR converted to RGB by pydicom): scale by the stored range.
        return stored.astype(np.float32) / float(2**bits_stored - 1), metadata

    values = np.asarray(apply_modality_lut(stored, dataset), dtype=np.float64)
    if "VOILUTSequence" in dataset:
        lut = dataset.VOILUTSequence[0]
        lut_bits = int(lut.LUTDescriptor[2])
        image = np.asarray(apply_voi_lut(values, dataset, prefer_lut=True), np.float64)
        image = np.clip(image / float(2**lut_bits - 1), 0.0, 1.0)
    elif "WindowCenter" in dataset and "WindowWidth" in dataset:
        image = _window(
            values,
            center=float(_first(dataset.WindowCenter)),
            width=float(_first(dataset.WindowWidth)),
            function=str(dataset.get("VOILUTFunction", "LINEAR")).upper(),
        )
    else:
        # No VOI: the full range the stored bits can hold, through the modality LUT.
        signed = int(dataset.get("PixelRepresentation", 0)) == 1
        low = -(2 ** (bits_stored - 1)) if signed else 0
        high = 2 ** (bits_stored - 1) - 1 if signed else 2**bits_stored - 1
        ends = np.asarray(apply_modality_lut(np.array([low, high]), dataset), np.float64)
        image = (values - ends.min()) / max(float(ends.max() - ends.min()), 1e-12)
        image = np.clip(image, 0.0, 1.0)
    if photometric == "MONOCHROME1":
        image = 1.0 - image  # MONOCHROME1 stores dense tissue dark; show it bright everywhere
    return image.astype(np.float32), metadata


def _first(value: Any) -> Any:
    """WindowCenter/WindowWidth may hold several values; the first is the default."""
    try:
        return value[0]
    except (TypeError, IndexError):
        return value


def _window(values: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """The DICOM VOI window (PS3.3 C.11.2.1.2), mapped onto [0, 1]."""
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / max(width, 1e-12)))
    if function == "LINEAR_EXACT":
        return np.clip((values - center) / max(width, 1e-12) + 0.5, 0.0, 1.0)
    if width <= 1.0:
        return (values > center - 0.5).astype(np.float64)
    return np.clip((values - (center - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0)
