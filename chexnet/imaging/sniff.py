"""Identify an upload from its first bytes; file names and Content-Type headers are not trusted."""

from chexnet.errors import UnsupportedMediaType

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
DICM_OFFSET = 128

# ACR-NEMA / DICOM without the 128-byte preamble starts directly with a little-endian data
# element of group 0x0002 (file meta) or 0x0008 (identifying information).
_BARE_DICOM_GROUPS = (b"\x02\x00", b"\x08\x00")


def sniff(data: bytes) -> str:
    """Return ``"png"``, ``"jpeg"`` or ``"dicom"``, or raise :class:`UnsupportedMediaType`."""
    if not data:
        raise UnsupportedMediaType("The upload is empty; send a PNG, JPEG or DICOM file.")
    if data.startswith(PNG_MAGIC):
        return "png"
    if data.startswith(JPEG_MAGIC):
        return "jpeg"
    if data[DICM_OFFSET : DICM_OFFSET + 4] == b"DICM":
        return "dicom"
    if len(data) >= 8 and data[:2] in _BARE_DICOM_GROUPS:
        return "dicom"
    raise UnsupportedMediaType("The file is not a PNG, JPEG or DICOM image (its first bytes match none of them).")
