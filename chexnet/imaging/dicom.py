"""DICOM through pydicom and its codec plugins (pylibjpeg: JPEG, JPEG-LS, JPEG 2000, RLE).

Display pipeline: Modality LUT (rescale slope/intercept) → VOI LUT or window (first one present)
→ invert for MONOCHROME1 or Presentation LUT Shape INVERSE → min-max to 0..255.
Nothing identifying the patient leaves this module.
"""

import io
import logging

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, UID

from chexnet.errors import (
    CorruptImage,
    MultiFrameImage,
    NoPixelData,
    UnsupportedMediaType,
    UnsupportedTransferSyntax,
)
from chexnet.imaging.decode import DecodedImage, DecodeLimits, to_display_u8

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
# pydicom logs a full traceback for every codec plugin that fails before it raises; the failure
# reaches the caller as one typed error instead, so those log records are noise (and tracebacks).
logging.getLogger("pydicom.pixels.decoders.base").setLevel(logging.CRITICAL)


def decode_dicom(data: bytes, limits: DecodeLimits) -> DecodedImage:
    ds = _read(data)
    _check_header(ds, limits)
    pixels = _pixel_array(ds)
    if pixels.ndim == 3:  # colour secondary capture: pydicom returns RGB; use luminance
        pixels = pixels[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    values = apply_modality_lut(pixels, ds)
    values = apply_voi_lut(values, ds, index=0)
    display = to_display_u8(values)
    if _inverted(ds):
        display = 255 - display
    return DecodedImage(pixels=display, format="dicom", bits=int(ds.get("BitsStored", 8)))


def _read(data: bytes) -> pydicom.Dataset:
    try:
        # force=True admits ACR-NEMA files and DICOM written without the 128-byte preamble.
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        ds.get("PixelData")  # touch the elements so a truncated header fails here
    except (InvalidDicomError, EOFError, ValueError, OSError, KeyError, TypeError, OverflowError):
        raise CorruptImage("The DICOM file is truncated or corrupt; export it again from the PACS.") from None
    if len(ds) == 0:
        raise UnsupportedMediaType("The file looked like DICOM but holds no DICOM elements.")
    if "TransferSyntaxUID" not in ds.file_meta:
        # ACR-NEMA / bare datasets carry no file meta: use the encoding pydicom detected.
        implicit, little = ds.original_encoding
        if not little:
            raise UnsupportedTransferSyntax("Big-endian DICOM without a transfer syntax is not supported.")
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    return ds


def _check_header(ds: pydicom.Dataset, limits: DecodeLimits) -> None:
    if not any(k in ds for k in _PIXEL_KEYWORDS):
        raise NoPixelData("The DICOM object has no pixel data (is it a report rather than an image?).")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise MultiFrameImage(
            f"The DICOM holds {frames} frames; send one projection radiograph per request."
        )
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
    except (AttributeError, TypeError, ValueError):
        raise CorruptImage("The DICOM header lacks Rows/Columns; export the image again.") from None
    limits.check_pixels(cols, rows)


def _pixel_array(ds: pydicom.Dataset) -> np.ndarray:
    syntax = UID(ds.file_meta.TransferSyntaxUID)
    try:
        return ds.pixel_array
    except NotImplementedError:
        raise UnsupportedTransferSyntax(
            f"No installed codec decodes DICOM transfer syntax {syntax.name} ({syntax}); "
            "re-export it uncompressed or as JPEG 2000 / JPEG lossless."
        ) from None
    except (RuntimeError, ValueError, AttributeError, TypeError, EOFError, OSError):
        bits = ds.get("BitsStored", "?")
        raise UnsupportedTransferSyntax(
            f"No installed codec could decode this {bits}-bit {syntax.name} pixel data; "
            "re-export it uncompressed or as JPEG 2000 / JPEG lossless."
        ) from None


def _inverted(ds: pydicom.Dataset) -> bool:
    # DX/CR objects with MONOCHROME1 carry Presentation LUT Shape INVERSE for the same inversion,
    # so either one means "invert once".
    return (
        str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1"
        or str(ds.get("PresentationLUTShape", "")).upper() == "INVERSE"
    )
