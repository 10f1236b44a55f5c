"""The geometry a compressed frame declares in its own header, read before any decoder runs.

A codec decodes what its codestream says, not what the DICOM header says: a 19 KiB file whose
header claims 48×48 can carry a 20000×20000 JPEG 2000 codestream. These readers look only at the
first marker segments (JPEG SOFn, JPEG-LS SOF55, JPEG 2000 SIZ) and never decode a pixel.
"""

import struct
from dataclasses import dataclass

from chexnet.errors import CorruptImage

# Start-of-frame markers: baseline, extended, progressive, lossless (Huffman and arithmetic), JPEG-LS.
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7}
_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # TEM, RSTn: no length field
_J2K_SOC_SIZ = b"\xff\x4f\xff\x51"
# How far into a frame to look for its header: real headers sit in the first few hundred bytes.
HEADER_WINDOW = 64 * 1024


@dataclass(frozen=True)
class FrameHeader:
    width: int
    height: int
    components: int
    bits: int
    signed: bool = False
    levels: int = 0  # JPEG 2000: wavelet decomposition levels (COD), i.e. how many coarser resolutions exist


def _damaged(kind: str) -> CorruptImage:
    return CorruptImage(f"The {kind} codestream header in the DICOM is damaged; export the image again.")


def jpeg_header(data: bytes) -> FrameHeader:
    """JPEG (ITU T.81) and JPEG-LS (T.87): the first SOFn segment after SOI."""
    if data[:2] != b"\xff\xd8":
        raise _damaged("JPEG")
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise _damaged("JPEG")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _STANDALONE:
            pos += 2
            continue
        (length,) = struct.unpack_from(">H", data, pos + 2)
        if marker in _SOF:
            if length < 8 or pos + 10 > len(data):
                raise _damaged("JPEG")
            bits, height, width, components = struct.unpack_from(">BHHB", data, pos + 4)
            return FrameHeader(width, height, components, bits)
        if marker in (0xD9, 0xDA) or length < 2:  # EOI or scan data before any frame header
            raise _damaged("JPEG")
        pos += 2 + length
    raise _damaged("JPEG")


def j2k_header(data: bytes) -> FrameHeader:
    """JPEG 2000 / HTJ2K: the SIZ segment that follows SOC (inside a JP2 wrapper too)."""
    pos = data.find(_J2K_SOC_SIZ)
    if pos < 0 or pos + 42 > len(data):
        raise _damaged("JPEG 2000")
    x, y, x0, y0 = struct.unpack_from(">IIII", data, pos + 8)
    (components,) = struct.unpack_from(">H", data, pos + 40)
    if components == 0 or pos + 43 > len(data):
        raise _damaged("JPEG 2000")
    bits, signed = (data[pos + 42] & 0x7F) + 1, bool(data[pos + 42] & 0x80)
    # COD follows SIZ in the main header: marker, Lcod, Scod, SGcod (4 bytes), then SPcod's level count.
    cod = data.find(b"\xff\x52", pos + 42)
    levels = data[cod + 9] if 0 <= cod and cod + 10 <= len(data) else 0
    return FrameHeader(x - x0, y - y0, components, bits, signed, levels)
