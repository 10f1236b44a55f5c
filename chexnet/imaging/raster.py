"""PNG and JPEG: Pillow reads the header (and the size is checked) before any pixel is decoded.

An 8-bit grayscale PNG, what most radiograph exports are, is then decoded by OpenCV's libpng: the same
pixels as Pillow's in about 20% less CPU time, straight into the array that is returned, without the GIL
(measured against Pillow and pyspng in BENCHMARKS.md "Request path per stage"). Anything it does not
decode is decoded by Pillow as before, which also reports what is wrong with a damaged file.
"""

import io
import warnings

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from chexnet.errors import CorruptImage, PayloadTooLarge
from chexnet.imaging.display import to_display_u8
from chexnet.imaging.reduced import draft_jpeg
from chexnet.imaging.types import DecodedImage, DecodeLimits, DecodeSize

_HIGH_DEPTH_MODES = {"I;16", "I;16B", "I;16L", "I", "F"}
_NAMES = {"png": "PNG", "jpeg": "JPEG"}


def decode_raster(data: bytes, kind: str, limits: DecodeLimits, size: DecodeSize | None = None) -> DecodedImage:
    name = _NAMES[kind]
    with warnings.catch_warnings():
        # Our own pixel limit is stricter than Pillow's bomb warning; turn the warning into the error.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image: Image.Image = Image.open(io.BytesIO(data))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise PayloadTooLarge(
                f"The {name} header declares far more pixels than a radiograph has; {limits.pixel_limit}."
            ) from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
            raise CorruptImage(f"The {name} header is damaged; export the image again.") from None
        limits.check_pixels(*image.size)
        source_size = image.size
        if kind == "png" and (pixels := _gray_png(data, image)) is not None:
            return DecodedImage(pixels=pixels, format=kind, bits=8)
        reduced = kind == "jpeg" and size is not None and image.mode in ("L", "RGB") and draft_jpeg(image, size)
        try:
            image.load()
            image = ImageOps.exif_transpose(image)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
            raise CorruptImage(f"The {name} is truncated or corrupt; export the image again.") from None
    if reduced and (image.width > image.height) != (source_size[0] > source_size[1]):
        source_size = source_size[::-1]  # EXIF turned the image a quarter
    return DecodedImage(
        pixels=_grayscale_u8(image), format=kind, bits=_bits(image), source_size=source_size if reduced else None
    )


def _gray_png(data: bytes, image: Image.Image) -> np.ndarray | None:
    """An 8-bit grayscale PNG's pixels through OpenCV, or None: another mode, an eXIf chunk (Pillow turns
    the image as it says), or anything OpenCV cannot decode to the size the header declares."""
    if image.mode != "L" or b"eXIf" in data:
        return None
    pixels = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if pixels is None or pixels.dtype != np.uint8 or pixels.shape != (image.height, image.width):
        return None
    return pixels


def _grayscale_u8(image: Image.Image) -> np.ndarray:
    if image.mode == "L":
        return np.asarray(image, dtype=np.uint8).copy()
    if image.mode in _HIGH_DEPTH_MODES:
        samples = np.asarray(image)  # the native 2 or 4 bytes per pixel; scaled a block at a time
        image.close()
        return to_display_u8(samples)
    if image.mode in ("LA", "1"):
        return np.asarray(image.convert("L"), dtype=np.uint8).copy()
    # RGB, RGBA, palette, CMYK...: drop alpha, then ITU-R 601 luminance (equal channels stay equal).
    return np.asarray(image.convert("RGB").convert("L"), dtype=np.uint8).copy()


def _bits(image: Image.Image) -> int:
    return 16 if image.mode in _HIGH_DEPTH_MODES else 8
