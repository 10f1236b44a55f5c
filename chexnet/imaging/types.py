"""What decoding produces and what bounds it (imported by every decoder; imports none of them)."""

from dataclasses import dataclass

import numpy as np
import pydicom

from chexnet.errors import PayloadTooLarge

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
# 40 megapixels: above the largest detector in routine use (43x43 cm at 100 µm is 18.5 MP),
# small enough that a decoded 16-bit frame stays far below a gigabyte.
DEFAULT_MAX_PIXELS = 40_000_000
# The settings that set these limits (chexnet.service.settings): every 413 names the limit it hit and its
# setting, so whoever runs the service knows what to raise and whoever sends the file what to shrink.
UPLOAD_SETTING = "CHEXNET_MAX_UPLOAD_MB"
PIXELS_SETTING = "CHEXNET_MAX_PIXELS"


@dataclass(frozen=True)
class DecodeLimits:
    max_bytes: int = DEFAULT_MAX_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS

    def check_bytes(self, size: int) -> None:
        if size > self.max_bytes:
            raise PayloadTooLarge(
                f"The file is {size / 2**20:.1f} MiB; the upload limit is {self.max_bytes / 2**20:.0f} MiB "
                f"({UPLOAD_SETTING})."
            )

    def check_pixels(self, width: int, height: int) -> None:
        if width <= 0 or height <= 0:
            raise PayloadTooLarge(f"The image header declares an impossible size {width}x{height}.")
        if width * height > self.max_pixels:
            raise PayloadTooLarge(f"The image is {width}x{height} pixels; {self.pixel_limit}.")

    @property
    def pixel_limit(self) -> str:
        """The pixel limit as a 413 states it."""
        return f"the pixel limit is {self.max_pixels:,} pixels in all ({PIXELS_SETTING})"

    @property
    def max_inflated_bytes(self) -> int:
        """A deflated DICOM may inflate to one 16-bit frame at the pixel limit plus its header."""
        return 2 * self.max_pixels + (1 << 20)

    @property
    def inflated_limit(self) -> str:
        """The inflated-size limit as a 413 states it."""
        return (
            f"the inflated-size limit (2 bytes per pixel at the pixel limit of {self.max_pixels:,} pixels, "
            f"{PIXELS_SETTING}, plus 1 MiB of header)"
        )


@dataclass(frozen=True)
class DecodeSize:
    """The smallest image a caller can use. A codestream that can be decoded at a coarser resolution
    (JPEG 2000 resolution levels, JPEG DCT scaling) is decoded at the coarsest one whose short side is
    still ≥ short and long side ≥ long (the model's input; the heatmap overlay's long side)."""

    short: int
    long: int

    def fits(self, width: int, height: int) -> bool:
        return min(width, height) >= self.short and max(width, height) >= self.long


@dataclass(frozen=True)
class DecodedImage:
    """An 8-bit grayscale display image and what a response may say about the source."""

    pixels: np.ndarray  # uint8, H x W; smaller than the source where decoded at a reduced resolution
    format: str  # "png" | "jpeg" | "dicom"
    bits: int  # bits per sample of the source
    source: pydicom.Dataset | None = None  # a DICOM's identifying header (imaging.dicom.SOURCE_KEYWORDS)
    source_size: tuple[int, int] | None = None  # (width, height) of the source where pixels are reduced

    @property
    def width(self) -> int:
        return self.source_size[0] if self.source_size else int(self.pixels.shape[1])

    @property
    def height(self) -> int:
        return self.source_size[1] if self.source_size else int(self.pixels.shape[0])
