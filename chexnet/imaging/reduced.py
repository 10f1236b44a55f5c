"""Decoding at the resolution the model needs (DecodeSize), where the codestream allows it.

A JPEG 2000 frame holds every coarser resolution of its wavelet pyramid, and a JPEG frame can be
decoded with DCT scaling at 1/2, 1/4 or 1/8: either is far cheaper than decoding every pixel and then
shrinking the image to 224. Both go through Pillow (openjpeg, libjpeg-turbo), for single-component,
unsigned frames only; anything else, or any failure here, returns None and the caller decodes the full
frame as before, which also reports what is wrong with a damaged one.

Pillow sizes a reduced JPEG 2000 image by rounding where openjpeg rounds up, so a level at which the
two differ (an odd side at level 2 or more) is never asked for.
"""

import io
import math

import numpy as np
from PIL import Image

from chexnet.imaging.codestream import FrameHeader
from chexnet.imaging.types import DecodeSize

_FAILURES = (OSError, ValueError, SyntaxError, EOFError, IndexError, KeyError, Image.DecompressionBombError)


def j2k_level(header: FrameHeader, size: DecodeSize) -> int:
    """The coarsest usable resolution level of a JPEG 2000 frame (0: decode it in full)."""
    if header.components != 1 or header.signed or header.bits > 16:
        return 0
    level = 0
    for candidate in range(1, header.levels + 1):
        width, height = (math.ceil(side / 2**candidate) for side in (header.width, header.height))
        if not size.fits(width, height):
            break
        if all(
            side % 2**candidate == 0 or side % 2**candidate >= 2 ** (candidate - 1)
            for side in (header.width, header.height)
        ):  # where Pillow's size agrees with openjpeg's
            level = candidate
    return level


def jpeg_scale(width: int, height: int, size: DecodeSize) -> int:
    """The largest DCT scaling divisor (1, 2, 4 or 8) that still fits (1: decode in full)."""
    scale = 1
    while scale < 8 and size.fits(math.ceil(width / (scale * 2)), math.ceil(height / (scale * 2))):
        scale *= 2
    return scale


def decode_j2k(frame: bytes, header: FrameHeader, level: int) -> np.ndarray | None:
    """Samples at resolution level (from j2k_level), in the codestream's own bit depth."""
    try:
        with Image.open(io.BytesIO(frame)) as image:
            image.reduce = level  # type: ignore[method-assign, assignment]  # Pillow's JPEG 2000 plugin: a settable level
            image.load()
            samples = np.asarray(image)
    except _FAILURES:
        return None
    expected = tuple(math.ceil(side / 2**level) for side in (header.height, header.width))
    if samples.shape != expected:
        return None
    # Pillow widens samples to its mode's depth (a 15-bit codestream to 16 bits) by shifting left.
    depth = 8 if samples.dtype == np.uint8 else 16
    return samples >> (depth - header.bits) if header.bits < depth else samples


def decode_jpeg(frame: bytes, size: DecodeSize) -> np.ndarray | None:
    """An 8-bit grayscale JPEG frame with DCT scaling."""
    try:
        with Image.open(io.BytesIO(frame)) as image:
            if image.mode != "L" or not draft_jpeg(image, size):
                return None
            image.load()
            return np.asarray(image)
    except _FAILURES:
        return None


def draft_jpeg(image: Image.Image, size: DecodeSize) -> bool:
    """Ask libjpeg for the DCT scaling that still fits, before the image is loaded; True if it will
    decode at a reduced size."""
    width, height = image.size
    scale = jpeg_scale(width, height, size)
    if scale > 1:
        image.draft(image.mode, (math.ceil(width / scale), math.ceil(height / scale)))
    return scale > 1
