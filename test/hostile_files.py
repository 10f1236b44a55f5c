"""Hostile and malformed inputs, made in memory: small files that ask a decoder for gigabytes, and
headers with values no modality writes (the issue's list, and variants of it)."""

import io
import struct
import zlib

import numpy as np
from PIL import Image
from pydicom import config
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from dicom_factory import make_dicom

SMALL = np.tile(np.arange(0, 4096, 64, dtype=np.uint16), (64, 1))  # 64×64, 12-bit values


def _meta(syntax: str) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_file_meta_info(buf, meta, enforce_standard=True)
    return b"\0" * 128 + b"DICM" + buf.getvalue()


def _image_module(rows: int, cols: int, bits: int = 16) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "CR"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    return ds


def _dataset_bytes(ds: Dataset) -> bytes:
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_dataset(buf, ds)
    return buf.getvalue()


def deflate_bomb(inflated_mib: int = 512) -> bytes:
    """Deflated Explicit VR Little Endian: a 48×48 header, then a PixelData element of inflated_mib of zeros."""
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    size = inflated_mib << 20
    out = [
        _meta(DeflatedExplicitVRLittleEndian),
        deflater.compress(_dataset_bytes(_image_module(48, 48)) + b"\xe0\x7f\x10\x00OW\0\0" + struct.pack("<I", size)),
    ]
    zeros = bytes(1 << 20)
    for _ in range(inflated_mib):
        out.append(deflater.compress(zeros))
    out.append(deflater.flush())
    return b"".join(out)


def element_bomb(count: int = 5_000_000) -> bytes:
    """Deflated Explicit VR Little Endian: ``count`` private 10-byte elements (about 100 KiB on the wire), each
    within every byte limit, that a reader walking them all spends seconds on."""
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return (
        _meta(DeflatedExplicitVRLittleEndian)
        + deflater.compress(b"\x09\x00\x00\x10US\x02\x00\x00\x00" * count)
        + deflater.flush()
    )


def sequence_bomb(items: int = 1_000_000) -> bytes:
    """Deflated Explicit VR Little Endian: a VOI LUT Sequence of ``items`` tiny items (about 30 KiB on the
    wire), which a reader parsing the sequence spends tens of seconds on."""
    item = b"\xfe\xff\x00\xe0" + struct.pack("<I", 8) + b"\x09\x00\x00\x10US\x02\x00\x00\x00"
    sequence = (
        b"\x28\x00\x10\x30SQ\x00\x00" + struct.pack("<I", 0xFFFFFFFF) + item * items + b"\xfe\xff\xdd\xe0" + bytes(4)
    )
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return _meta(DeflatedExplicitVRLittleEndian) + deflater.compress(sequence) + deflater.flush()


def nested_element_bomb(count: int = 1_000_000) -> bytes:
    """Deflated Explicit VR Little Endian: a VOI LUT Sequence of one item holding ``count`` empty elements
    (about 1.5 MiB on the wire); pydicom parses items without the top level's stop_when."""
    elements = b"".join(struct.pack("<HH", 0x0009, 0x1000 + i % 0xEFFF) + b"LO\x00\x00" for i in range(count))
    sequence = (
        b"\x28\x00\x10\x30SQ\x00\x00"
        + struct.pack("<I", 0xFFFFFFFF)
        + b"\xfe\xff\x00\xe0"
        + struct.pack("<I", 0xFFFFFFFF)
        + elements
        + b"\xfe\xff\x0d\xe0"
        + bytes(4)
        + b"\xfe\xff\xdd\xe0"
        + bytes(4)
    )
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return _meta(DeflatedExplicitVRLittleEndian) + deflater.compress(sequence) + deflater.flush()


def _encapsulated(codestream: bytes, syntax: str, rows: int, cols: int, bits: int) -> bytes:
    ds = _image_module(rows, cols, bits)
    ds.PixelData = encapsulate([codestream])
    ds["PixelData"].VR = "OB"
    return _meta(syntax) + _dataset_bytes(ds)


def codestream_bomb(kind: str, width: int = 20000, height: int = 20000) -> bytes:
    """A DICOM whose header says 48×48 but whose JPEG 2000 SIZ / JPEG SOF declares width×height."""
    buf = io.BytesIO()
    if kind == "j2k":
        Image.fromarray(SMALL).save(buf, "JPEG2000", no_jp2=True, irreversible=False)
        stream = bytearray(buf.getvalue())
        siz = stream.find(b"\xff\x4f\xff\x51")
        struct.pack_into(">II", stream, siz + 8, width, height)
        return _encapsulated(bytes(stream), JPEG2000Lossless, 48, 48, 16)
    Image.fromarray((SMALL >> 4).astype(np.uint8)).save(buf, "JPEG")
    stream = bytearray(buf.getvalue())
    sof = stream.find(b"\xff\xc0")
    struct.pack_into(">HH", stream, sof + 5, height, width)
    return _encapsulated(bytes(stream), JPEGBaseline8Bit, 48, 48, 8)


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_bomb(width: int = 20000, height: int = 20000) -> bytes:
    """A tiny file whose header declares a huge 8-bit grayscale image."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (width + 1) * 4)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def png16(width: int, height: int) -> bytes:
    """A smooth 16-bit grayscale PNG (compresses to almost nothing)."""
    row = (np.arange(width, dtype=np.uint32) * 65535 // max(1, width - 1)).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(np.broadcast_to(row, (height, width)).copy()).save(buf, "PNG")
    return buf.getvalue()


def _lut_item(entries: int, first: int, bits: int, data: bytes) -> Dataset:
    item = Dataset()
    item.LUTDescriptor = [entries, first, bits]
    item.LUTData = data
    item["LUTData"].VR = "OW"
    return item


def _nested_sequence(depth: int) -> bytes:
    """(0040,A730) ContentSequence nested depth times, every length undefined."""
    opening = b"\x40\x00\x30\xa7SQ\0\0\xff\xff\xff\xff" + b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
    closing = b"\xfe\xff\x0d\xe0\0\0\0\0" + b"\xfe\xff\xdd\xe0\0\0\0\0"
    return opening * depth + closing * depth


def malformed_headers() -> dict[str, bytes]:
    """Each a small DICOM that a strict decoder must refuse with a 4xx, never a 500."""
    with config.disable_value_validation():
        files = {
            "frames_not_a_number": _raw(make_dicom(SMALL, NumberOfFrames="1"), 0x0028, 0x0008, b"abc"),
            "frames_zero": make_dicom(SMALL, NumberOfFrames="0"),
            "slope_not_a_number": _raw(
                make_dicom(SMALL, RescaleSlope="1", RescaleIntercept="0"), 0x0028, 0x1053, b"abc"
            ),
            "slope_infinite": _raw(make_dicom(SMALL, RescaleSlope="1", RescaleIntercept="0"), 0x0028, 0x1053, b"1e999"),
            "window_width_zero": make_dicom(SMALL, WindowCenter="100", WindowWidth="0"),
            "window_not_a_number": _raw(make_dicom(SMALL, WindowCenter="1", WindowWidth="100"), 0x0028, 0x1050, b"x"),
            "window_function_unknown": make_dicom(SMALL, WindowCenter="100", WindowWidth="100", VOILUTFunction="CUBIC"),
            "voi_lut_shorter_than_descriptor": make_dicom(SMALL, VOILUTSequence=[_lut_item(4096, 0, 12, bytes(100))]),
            "modality_lut_77_bits": make_dicom(SMALL, ModalityLUTSequence=[_lut_item(4096, 0, 77, bytes(8192))]),
            "lut_descriptor_missing": make_dicom(SMALL, VOILUTSequence=[Dataset()]),
            "bits_allocated_12": make_dicom(SMALL, BitsAllocated=12),
            "bits_stored_zero": _us(make_dicom(SMALL), 0x0028, 0x0101, 0),
            "samples_per_pixel_2": make_dicom(SMALL, SamplesPerPixel=2),
            "pixel_representation_7": make_dicom(SMALL, PixelRepresentation=7),
            "rows_zero": _us(make_dicom(SMALL), 0x0028, 0x0010, 0),
            "pixels_shorter_than_rows": make_dicom(SMALL)[:-3000],
        }
    uncompressed = make_dicom(SMALL)
    at = uncompressed.find(b"\xe0\x7f\x10\x00")
    files["sequences_nested_5000_deep"] = uncompressed[:at] + _nested_sequence(5000) + uncompressed[at:]
    rows = uncompressed.find(b"\x28\x00\x10\x00US")
    files["bad_vr"] = uncompressed[: rows + 4] + b"Q?" + uncompressed[rows + 6 :]
    return files


def _raw(data: bytes, group: int, element: int, value: bytes) -> bytes:
    """Replace a short explicit-VR element's value with bytes no writer would accept."""
    at = data.find(struct.pack("<HH", group, element))
    (length,) = struct.unpack_from("<H", data, at + 6)
    value += b" " * (len(value) % 2)
    return data[: at + 6] + struct.pack("<H", len(value)) + value + data[at + 8 + length :]


def _us(data: bytes, group: int, element: int, value: int) -> bytes:
    """Overwrite a US element's value in place."""
    out = bytearray(data)
    struct.pack_into("<H", out, out.find(struct.pack("<HH", group, element) + b"US") + 8, value)
    return bytes(out)
