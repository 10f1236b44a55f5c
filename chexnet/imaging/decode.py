"""Decode PNG, JPEG and DICOM bytes to one 8-bit grayscale display image.

The display image is the reference input of every model: raster images that are already 8-bit
are used as they are; 16-bit rasters and DICOM pixel data are scaled min-max to 0..255 after the
DICOM LUT pipeline (see :mod:`chexnet.imaging.dicom`).
"""

from dataclasses import dataclass

import numpy as np

from chexnet.errors import PayloadTooLarge
from chexnet.imaging.sniff import sniff

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
# 40 megapixels: above the largest detector in routine use (43x43 cm at 100 µm is 18.5 MP),
# small enough that a decoded 16-bit frame stays far below a gigabyte.
DEFAULT_MAX_PIXELS = 40_000_000


@dataclass(frozen=True)
class DecodeLimits:
    max_bytes: int = DEFAULT_MAX_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS

    def check_bytes(self, size: int) -> None:
        if size > self.max_bytes:
            raise PayloadTooLarge(
                f"The file is {size / 2**20:.1f} MiB; the limit is {self.max_bytes / 2**20:.0f} MiB."
            )

    def check_pixels(self, width: int, height: int) -> None:
        if width <= 0 or height <= 0:
            raise PayloadTooLarge(f"The image header declares an impossible size {width}x{height}.")
        if width * height > self.max_pixels:
            raise PayloadTooLarge(
                f"The image is {width}x{height} pixels; the limit is {self.max_pixels:,} pixels in all."
            )


@dataclass(frozen=True)
class DecodedImage:
    """An 8-bit grayscale display image and what a response may say about the source."""

    pixels: np.ndarray  # uint8, H x W
    format: str  # "png" | "jpeg" | "dicom"
    bits: int  # bits per sample of the source

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])


def to_display_u8(values: np.ndarray) -> np.ndarray:
    """Min-max scale any grayscale array to 0..255 (a constant image becomes all zeros)."""
    values = np.asarray(values, dtype=np.float64)
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = np.rint((values - lo) * (255.0 / (hi - lo)))
    return np.clip(scaled, 0, 255).astype(np.uint8)


def decode_image(data: bytes, limits: DecodeLimits = DecodeLimits()) -> DecodedImage:
    """Sniff and decode; raise a :class:`chexnet.errors.ChexnetError` subclass on any failure."""
    limits.check_bytes(len(data))
    kind = sniff(data)
    if kind == "dicom":
        from chexnet.imaging.dicom import decode_dicom

        return decode_dicom(data, limits)
    from chexnet.imaging.raster import decode_raster

    return decode_raster(data, kind, limits)
