"""Radiograph input: sniff the type from the bytes, decode to an 8-bit display image, preprocess."""

from chexnet.imaging.decode import decode_image
from chexnet.imaging.preprocess import preprocess
from chexnet.imaging.types import DecodedImage, DecodeLimits, DecodeSize

__all__ = ["DecodedImage", "DecodeLimits", "DecodeSize", "decode_image", "preprocess"]
