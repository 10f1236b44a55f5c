"""A pydicom decoder plugin for JPEG Extended (Process 2 and 4) with 12-bit samples.

Of the permissively licensed codecs pydicom knows, none decodes 12-bit JPEG Extended (Pillow and
GDCM refuse it); imagecodecs' libjpeg-turbo (BSD-3-Clause / IJG) does. Registered in
:func:`chexnet.configure` after pydicom's own plugins, so it is tried when they decline.
"""

import importlib.util

import imagecodecs
from pydicom.pixels.decoders.base import DecodeRunner
from pydicom.uid import JPEGExtended12Bit

DECODER_DEPENDENCIES = {JPEGExtended12Bit: ("numpy", "imagecodecs")}


def is_available(uid: str) -> bool:
    return uid == JPEGExtended12Bit and importlib.util.find_spec("imagecodecs") is not None


def _decode_frame(src: bytes, runner: DecodeRunner) -> bytes:
    return imagecodecs.jpeg8_decode(src).tobytes()
