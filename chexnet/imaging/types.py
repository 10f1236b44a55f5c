"""What decoding produces and what bounds it (imported by every decoder; imports none of them)."""

from dataclasses import dataclass

import numpy as np
import pydicom

from chexnet.errors import PayloadTooLarge

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

    @property
    def max_inflated_bytes(self) -> int:
        """A deflated DICOM may inflate to one 16-bit frame at the pixel limit plus its header."""
        return 2 * self.max_pixels + (1 << 20)


@dataclass(frozen=True)
class DecodedImage:
    """An 8-bit grayscale display image and what a response may say about the source."""

    pixels: np.ndarray  # uint8, H x W
    format: str  # "png" | "jpeg" | "dicom"
    bits: int  # bits per sample of the source
    source: pydicom.Dataset | None = None  # a DICOM's identifying header (imaging.dicom.SOURCE_KEYWORDS)

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])
