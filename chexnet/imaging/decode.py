"""Decode PNG, JPEG and DICOM bytes to one 8-bit grayscale display image.

The display image is the reference input of every model: raster images that are already 8-bit
are used as they are; 16-bit rasters and DICOM pixel data are scaled min-max to 0..255 after the
DICOM LUT pipeline (see :mod:`chexnet.imaging.dicom`).
"""

from chexnet.imaging.dicom import decode_dicom
from chexnet.imaging.raster import decode_raster
from chexnet.imaging.sniff import sniff
from chexnet.imaging.types import DecodedImage, DecodeLimits, DecodeSize


def decode_image(data: bytes, limits: DecodeLimits = DecodeLimits(), size: DecodeSize | None = None) -> DecodedImage:
    """Sniff and decode; raise a :class:`chexnet.errors.ChexnetError` subclass on any failure.
    size: the smallest image the caller needs (None: full resolution); see DecodeSize."""
    limits.check_bytes(len(data))
    kind = sniff(data)
    if kind == "dicom":
        return decode_dicom(data, limits, size)
    return decode_raster(data, kind, limits, size)
