"""DICOM through pydicom and permissively licensed codecs (DESIGN.md "Resource bounds"): GDCM (JPEG
lossless), pyjpegls (JPEG-LS), pylibjpeg-openjpeg (JPEG 2000), pylibjpeg-rle, Pillow (8-bit JPEG) and
imagecodecs for 12-bit JPEG Extended (:mod:`chexnet.imaging.jpeg12`).

Every size is checked before the allocation it governs: a deflated dataset inflates only up to a cap,
Rows/Columns against the pixel limit, an encapsulated frame's own codestream header against
Rows/Columns, native pixel data against the length it must have. Only the elements the decoder
needs are read, plus the identifying header (:data:`SOURCE_KEYWORDS`) that DICOM results copy and
eligibility reads; it travels as ``DecodedImage.source`` and never reaches a log or the audit file.

Display pipeline (DESIGN.md "Preprocessing reference"): Modality LUT (sequence, or rescale slope and
intercept) → VOI LUT (sequence, or the first window) → MONOCHROME1 / Presentation LUT Shape INVERSE
inverted → min-max to 0..255, applied a block at a time (:mod:`chexnet.imaging.display`).
"""

import io
import math
import struct
import zlib
from contextvars import ContextVar

import numpy as np
import pydicom
from pydicom import filereader
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import generate_fragments, generate_frames, parse_basic_offsets
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.filereader import read_partial
from pydicom.tag import BaseTag, Tag
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEG2000TransferSyntaxes,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEGLSTransferSyntaxes,
    JPEGTransferSyntaxes,
    RLELossless,
)

from chexnet.errors import (
    CorruptImage,
    InvalidImage,
    MultiFrameImage,
    NoPixelData,
    PayloadTooLarge,
    UnsupportedMediaType,
    UnsupportedTransferSyntax,
)
from chexnet.imaging.codestream import HEADER_WINDOW, FrameHeader, j2k_header, jpeg_header
from chexnet.imaging.display import Transform, to_display_u8
from chexnet.imaging.reduced import decode_j2k, decode_jpeg, j2k_level, jpeg_scale
from chexnet.imaging.types import DecodedImage, DecodeLimits, DecodeSize

# Every transfer syntax this module decodes (the DICOM node offers exactly these). Compressed first:
# pynetdicom accepts the first of these that a sender proposes, so a compressed file arrives as it is
# stored instead of the sender having to decompress it (which dcmtk's storescu cannot do for JPEG 2000).
DECODABLE_SYNTAXES = [
    JPEG2000Lossless,
    JPEG2000,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    RLELossless,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
]
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
# The source's header that DICOM results copy (patient, study, series references) and eligibility reads.
SOURCE_KEYWORDS = (
    "SpecificCharacterSet",
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "PatientAge",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyDescription",
    "Modality",
    "BodyPartExamined",
    "ViewPosition",
    "Laterality",
    "ImageLaterality",
    "PatientOrientation",
    "SeriesNumber",
    "InstanceNumber",
    "InstitutionName",
    # the geometry a Parametric Map of the image takes over (chexnet.dicom_results)
    "Rows",
    "Columns",
    "PixelSpacing",
    "ImagerPixelSpacing",
    "FrameOfReferenceUID",
    "ImagePositionPatient",
    "ImageOrientationPatient",
)
# Values in the Specific Character Set: kept as their bytes, so that chexnet.dicom_results decides, byte for
# byte, whether they are valid in the repertoire the source declares (pydicom's conversion would replace or
# reinterpret what is not).
CHARACTER_SET_VRS = frozenset({"SH", "LO", "ST", "LT", "UT", "PN", "UC"})
# The elements the decoder reads; every other element is skipped unparsed.
_READ = [
    "Rows",
    "Columns",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "PlanarConfiguration",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "NumberOfFrames",
    "RescaleSlope",
    "RescaleIntercept",
    "RescaleType",
    "ModalityLUTSequence",
    "VOILUTSequence",
    "WindowCenter",
    "WindowWidth",
    "VOILUTFunction",
    "PresentationLUTShape",
    *_PIXEL_KEYWORDS,
    *SOURCE_KEYWORDS,
]
_READ_TAGS: list[BaseTag | int] = [Tag(keyword) for keyword in _READ]
MAX_ELEMENTS = 20_000  # top-level elements of one data set
MAX_ITEMS = 10_000  # sequence items (and encapsulated fragments) of one data set
_ITEM_TAGS = (b"\xfe\xff\x00\xe0", b"\xff\xfe\xe0\x00")  # (FFFE,E000) little and big endian
_PHOTOMETRIC = {"MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT"}
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
# Anything a codec plugin or pydicom's own parser raises on hostile bytes.
_DECODER_FAILURES = (
    RuntimeError,
    ValueError,
    AttributeError,
    TypeError,
    KeyError,
    IndexError,
    EOFError,
    OSError,
    struct.error,
    OverflowError,
    RecursionError,
    zlib.error,
    InvalidDicomError,
    BytesLengthException,
)


class NotConfigured(Exception):
    """DICOM is read only in a process where :func:`chexnet.configure` has put the element budget (and the
    codec set-up) in place; an entry point that forgot it is refused, never served without the bound. Not
    one of the decoder's failures, so it is never mistaken for a corrupt file."""


def decode_dicom(data: bytes, limits: DecodeLimits, size: DecodeSize | None = None) -> DecodedImage:
    try:
        return _decode(data, limits, size)
    except _DECODER_FAILURES:
        # pydicom converts elements lazily, so damage can surface at any access; it is still damage.
        raise CorruptImage("The DICOM file is truncated or corrupt; export it again from the PACS.") from None


def read_header(data: bytes, limits: DecodeLimits) -> pydicom.Dataset:
    """The identifying header (:data:`SOURCE_KEYWORDS`) through the same bounded reader as decoding: a
    deflated data set inflates only up to the limit, no pixel is decoded."""
    limits.check_bytes(len(data))
    try:
        return _source(_read(data, limits))
    except _DECODER_FAILURES:
        raise CorruptImage("The DICOM file is truncated or corrupt; export it again from the PACS.") from None


def _decode(data: bytes, limits: DecodeLimits, size: DecodeSize | None) -> DecodedImage:
    ds = _read(data, limits)
    samples, frame_header = _check_header(ds, limits)
    pixels = _reduced_pixels(ds, frame_header, size) if size and frame_header else None  # None: decode in full
    source_size = (int(ds.Columns), int(ds.Rows)) if pixels is not None else None
    if pixels is None:
        pixels = _pixel_array(ds)
    transform, invert = (None, False) if samples == 3 else (_display_transform(ds), _inverted(ds))
    for keyword in _PIXEL_KEYWORDS:  # the encoded bytes are no longer needed
        if keyword in ds:
            delattr(ds, keyword)
    if samples == 3:  # colour secondary capture: pydicom returns RGB; use luminance
        pixels = np.dot(pixels.reshape(-1, 3), np.array([0.299, 0.587, 0.114], dtype=np.float32))
        pixels = pixels.astype(np.float32, copy=False).reshape(int(ds.Rows), int(ds.Columns))
    try:
        display = to_display_u8(pixels, transform, invert)
    except (ValueError, IndexError, FloatingPointError):
        raise InvalidImage(
            "The DICOM's LUT or window cannot be applied to its pixels; export the image again."
        ) from None
    return DecodedImage(
        pixels=display, format="dicom", bits=_integer(ds, "BitsStored", 8), source=_source(ds), source_size=source_size
    )


def _source(ds: pydicom.Dataset) -> pydicom.Dataset:
    """The header results and eligibility read, each value converted now so damage is a 400 here, but for
    the text in the character set, kept as read (:mod:`chexnet.dicom_results` decides which values are fit
    to copy, and in what repertoire)."""
    source = pydicom.Dataset()
    for keyword in SOURCE_KEYWORDS:
        if keyword in ds:
            raw = ds.get_item(keyword)
            if isinstance(raw, RawDataElement) and dictionary_VR(raw.tag) in CHARACTER_SET_VRS:
                source[raw.tag] = raw  # converted on access, under the source's Specific Character Set
                continue
            element = ds[keyword]
            source.add_new(element.tag, element.VR, element.value)
    if "TransferSyntaxUID" in ds.file_meta:  # how it was encoded (the monitor's input mix); a deflated one is
        source.file_meta = FileMetaDataset()  # read as the Explicit VR Little Endian it inflates to
        source.file_meta.TransferSyntaxUID = ds.file_meta.TransferSyntaxUID
    return source


# --- reading ---------------------------------------------------------------------------------
def _read(data: bytes, limits: DecodeLimits) -> pydicom.Dataset:
    if filereader.data_element_generator is not _installed:
        raise NotConfigured(
            "chexnet.configure() has not been called in this process (or pydicom's element "
            "generator was replaced since): DICOM is read only with the element budget in place."
        )
    syntax, body = _file_meta_syntax(data)
    if syntax == DeflatedExplicitVRLittleEndian:
        data = _inflate(data[body:], limits)  # a bare Explicit VR Little Endian dataset from here on
    # force=True admits ACR-NEMA files and DICOM written without the 128-byte preamble; parse failures
    # (here or at a later, lazy element access) become CorruptImage in decode_dicom.
    if sum(data.count(tag) for tag in _ITEM_TAGS) > MAX_ITEMS:  # a fast byte count, either byte order
        raise InvalidImage(
            f"The DICOM data set has more than {MAX_ITEMS:,} sequence items, where a radiograph "
            "has a few; export it again from the PACS."
        )
    budget = _ElementBudget()
    token = _BUDGET.set(budget)
    try:
        ds = read_partial(io.BytesIO(data), stop_when=budget, force=True, specific_tags=_READ_TAGS)
    finally:
        _BUDGET.reset(token)
    if len(ds) == 0:
        raise UnsupportedMediaType("The file looked like DICOM but holds no DICOM elements.")
    if syntax == DeflatedExplicitVRLittleEndian or "TransferSyntaxUID" not in ds.file_meta:
        # ACR-NEMA / bare datasets carry no file meta: use the encoding pydicom detected.
        implicit, little = ds.original_encoding
        if not little:
            raise UnsupportedTransferSyntax("Big-endian DICOM without a transfer syntax is not supported.")
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    syntax = UID(str(ds.file_meta.TransferSyntaxUID).strip("\0 "))
    if not syntax.is_transfer_syntax:
        raise UnsupportedTransferSyntax(
            f"The DICOM names transfer syntax '{syntax[:64]}', which is not one this service "
            "knows; re-export it uncompressed or as JPEG 2000 / JPEG lossless."
        )
    ds.file_meta.TransferSyntaxUID = syntax
    return ds


class _ElementBudget:
    """What one read may walk: millions of tiny elements (a 100 KiB deflated file can hold ten million, at
    the top level or inside one sequence item) cost seconds of CPU and gigabytes of objects although every
    byte is within the limits, so more than MAX_ELEMENTS are refused. Called as pydicom's ``stop_when`` for
    every top-level element it walks (read or skipped), and by :func:`_counted` for every element it
    parses at any depth (pydicom passes no ``stop_when`` into sequence items). Items are bounded by a byte
    count in :func:`_read`."""

    def __init__(self):
        self.seen = 0

    def __call__(self, tag=None, vr=None, length=None) -> bool:
        self.seen += 1
        if self.seen > MAX_ELEMENTS:
            raise InvalidImage(
                f"The DICOM data set has more than {MAX_ELEMENTS:,} elements, where a radiograph "
                "has a few hundred; export it again from the PACS."
            )
        return False


_BUDGET: ContextVar[_ElementBudget | None] = ContextVar("chexnet_element_budget", default=None)


def _counted(generator):
    """pydicom's element generator, charging each element it yields to the budget of the read in progress."""

    def counted(*args, **kwargs):
        budget = _BUDGET.get()
        for element in generator(*args, **kwargs):
            if budget is not None:
                budget()
            yield element

    return counted


_installed = None  # the counting generator install_element_budget() put in place


def install_element_budget() -> None:
    """Route pydicom's element generator through :func:`_counted` (by :func:`chexnet.configure`, never on
    import); read_dataset looks the generator up at each call, for the top level and for every sequence
    item. Idempotent: the generator is wrapped once."""
    global _installed
    if filereader.data_element_generator is not _installed:
        _installed = _counted(filereader.data_element_generator)
        filereader.data_element_generator = _installed


def _file_meta_syntax(data: bytes) -> tuple[str | None, int]:
    """The Transfer Syntax UID from the file meta group, and where the dataset after it starts."""
    if data[128:132] != b"DICM":
        return None, 0
    pos, syntax = 132, None
    while pos + 8 <= len(data) and data[pos : pos + 2] == b"\x02\x00":
        element = struct.unpack_from("<H", data, pos + 2)[0]
        if data[pos + 4 : pos + 6] in _LONG_VRS:
            length, header = (struct.unpack_from("<I", data, pos + 8)[0] if pos + 12 <= len(data) else 0), 12
        else:
            length, header = struct.unpack_from("<H", data, pos + 6)[0], 8
        if element == 0x0010:
            syntax = data[pos + header : pos + header + length].rstrip(b"\x00 ").decode("ascii", "replace")
        pos += header + length
    return syntax, pos


def _inflate(body: bytes, limits: DecodeLimits) -> bytes:
    cap = limits.max_inflated_bytes
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        inflated = inflater.decompress(body, cap + 1)
    except zlib.error:
        raise CorruptImage("The deflated DICOM dataset is corrupt; export it again from the PACS.") from None
    if len(inflated) > cap or inflater.unconsumed_tail:
        raise PayloadTooLarge(
            f"The deflated DICOM inflates to more than {cap / 2**20:.0f} MiB, {limits.inflated_limit}; "
            "export it uncompressed or with an image codec."
        )
    return inflated


# --- header checks ---------------------------------------------------------------------------
def _number(ds: pydicom.Dataset, keyword: str, default: float, whole: bool = False) -> float:
    value = _first(ds.get(keyword))
    if value is None or value == "":
        return default
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        number = math.nan
    if not math.isfinite(number) or (whole and not number.is_integer()):
        raise InvalidImage(
            f"{keyword} in the DICOM header is not {'a whole number' if whole else 'a number'}; export the image again."
        )
    return int(number) if whole else number


def _integer(ds: pydicom.Dataset, keyword: str, default: int) -> int:
    return int(_number(ds, keyword, default, whole=True))  # whole: already an int


def _first(value):
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return value[0] if len(value) else None
    return value


def _check_header(ds: pydicom.Dataset, limits: DecodeLimits) -> tuple[int, FrameHeader | None]:
    """Validate the pixel description before decoding; returns samples per pixel (1 or 3) and the
    compressed frame's own header (None for native pixel data and RLE)."""
    keyword = next((k for k in _PIXEL_KEYWORDS if k in ds), None)
    if keyword is None:
        raise NoPixelData("The DICOM object has no pixel data (is it a report rather than an image?).")
    frames = _integer(ds, "NumberOfFrames", 1)
    if frames > 1:
        raise MultiFrameImage(f"The DICOM holds {frames} frames; send one projection radiograph per request.")
    if frames < 1:
        raise InvalidImage("NumberOfFrames in the DICOM header is below 1; export the image again.")
    rows, cols = _integer(ds, "Rows", 0), _integer(ds, "Columns", 0)
    if rows <= 0 or cols <= 0:
        raise CorruptImage("The DICOM header lacks Rows/Columns; export the image again.")
    limits.check_pixels(cols, rows)
    samples = _integer(ds, "SamplesPerPixel", 1)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if samples not in (1, 3) or photometric not in _PHOTOMETRIC or (samples == 1) != photometric.startswith("MONO"):
        raise InvalidImage(
            f"A DICOM with {samples} samples per pixel as {photometric or 'no photometric interpretation'} "
            "is not a radiograph this service reads; send a MONOCHROME1/2 image."
        )
    allocated, stored = _integer(ds, "BitsAllocated", 0), _integer(ds, "BitsStored", 0)
    allowed = (32, 64) if keyword != "PixelData" else (1, 8, 16, 32)
    if allocated not in allowed or (keyword == "PixelData" and not 1 <= stored <= allocated):
        raise InvalidImage(
            f"The DICOM declares {stored} of {allocated} bits per sample, which no radiograph has; "
            "export the image again."
        )
    if _integer(ds, "PixelRepresentation", 0) not in (0, 1):
        raise InvalidImage("PixelRepresentation in the DICOM header must be 0 or 1; export the image again.")
    syntax = UID(ds.file_meta.TransferSyntaxUID)
    if syntax.is_compressed and keyword == "PixelData":
        return samples, _check_frame(ds, syntax, rows, cols, samples, allocated)
    else:
        expected = (rows * cols * samples * allocated + 7) // 8
        if len(ds[keyword].value or b"") < expected:
            raise CorruptImage("The DICOM pixel data is shorter than Rows × Columns says; the file is truncated.")
    return samples, None


def _check_frame(
    ds: pydicom.Dataset, syntax: UID, rows: int, cols: int, samples: int, allocated: int
) -> FrameHeader | None:
    """An encapsulated frame must declare, in its own header, the geometry the DICOM header declares."""
    if syntax in JPEGTransferSyntaxes or syntax in JPEGLSTransferSyntaxes:
        read_header = jpeg_header
    elif syntax in JPEG2000TransferSyntaxes:
        read_header = j2k_header
    else:
        return None  # RLE: the decoder writes Rows × Columns and nothing else
    header = read_header(_frame_start(ds.PixelData))
    if (header.width, header.height) != (cols, rows) or header.components != samples:
        raise InvalidImage(
            f"The compressed frame is {header.width}x{header.height} with {header.components} component(s) but the "
            f"DICOM header says {cols}x{rows} with {samples}; export the image again."
        )
    # A JPEG decoder writes 8-bit samples up to 8 bits of precision, else 16-bit ones.
    fits = allocated == (8 if header.bits <= 8 else 16) if read_header is jpeg_header else header.bits <= allocated
    if not 1 <= header.bits <= 16 or not fits:
        raise InvalidImage(
            f"The compressed frame has {header.bits}-bit samples in a {allocated}-bit DICOM; export the image again."
        )
    return header


def _frame_start(encapsulated: bytes) -> bytes:
    """The first HEADER_WINDOW bytes of the first frame, from as few fragments as hold them (no copy
    of the whole frame)."""
    stream = io.BytesIO(encapsulated)
    start = bytearray()
    try:
        parse_basic_offsets(stream)
        for fragment in generate_fragments(stream):
            start += fragment[: HEADER_WINDOW - len(start)]
            if len(start) >= HEADER_WINDOW:
                break
    except _DECODER_FAILURES:
        raise CorruptImage("The DICOM's encapsulated pixel data is damaged; export the image again.") from None
    return bytes(start)


# --- pixels ----------------------------------------------------------------------------------
def _reduced_pixels(ds: pydicom.Dataset, header: FrameHeader, size: DecodeSize) -> np.ndarray | None:
    """A JPEG 2000 or 8-bit JPEG frame (its header already checked) decoded at the resolution the
    caller needs (imaging.reduced); None where that does not apply, and the frame is decoded in full.

    Only where the header fixes the display mapping (a VOI LUT or window): without one the display
    image is stretched between the pixel extremes, and a coarser decode smooths the extremes away
    (measured: up to 1.3e-2 in probability on NIH images as lossless JPEG 2000, against at most 5.4e-4
    with a window; BENCHMARKS.md)."""
    if not ds.get("VOILUTSequence") and (ds.get("WindowCenter") is None or ds.get("WindowWidth") is None):
        return None
    if _integer(ds, "PixelRepresentation", 0) != 0:
        return None
    syntax = UID(ds.file_meta.TransferSyntaxUID)
    if syntax in JPEG2000TransferSyntaxes and (level := j2k_level(header, size)):

        def decode(frame: bytes) -> np.ndarray | None:
            return decode_j2k(frame, header, level)
    elif (
        syntax == JPEGBaseline8Bit
        and header.components == 1
        and header.bits == 8
        and jpeg_scale(header.width, header.height, size) > 1
    ):

        def decode(frame: bytes) -> np.ndarray | None:
            return decode_jpeg(frame, size)
    else:
        return None  # decoding in full costs no more here, so the frame is not even copied
    try:
        frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    except _DECODER_FAILURES:
        return None
    return decode(frame)


def _pixel_array(ds: pydicom.Dataset) -> np.ndarray:
    syntax = UID(ds.file_meta.TransferSyntaxUID)
    try:
        return ds.pixel_array
    except NotImplementedError:
        raise UnsupportedTransferSyntax(
            f"No installed codec decodes DICOM transfer syntax {syntax.name} ({syntax}); "
            "re-export it uncompressed or as JPEG 2000 / JPEG lossless."
        ) from None
    except BaseException as exc:
        # Rust codecs (pylibjpeg-rle) panic with pyo3's PanicException, which is not an Exception.
        if not (isinstance(exc, _DECODER_FAILURES) or type(exc).__name__ == "PanicException"):
            raise
        if not syntax.is_compressed:
            raise CorruptImage("The DICOM pixel data does not match its header; export the image again.") from None
        bits = _integer(ds, "BitsStored", 0) or "?"
        raise UnsupportedTransferSyntax(
            f"No installed codec could decode this {bits}-bit {syntax.name} pixel data; "
            "re-export it uncompressed or as JPEG 2000 / JPEG lossless."
        ) from None


def _lut(item: pydicom.Dataset, name: str) -> Transform:
    """A LUT sequence item → value → table[clip(value - first mapped, 0, entries - 1)]."""
    try:
        entries, first, bits = (int(v) for v in item.LUTDescriptor)
        raw = item.LUTData
    except (AttributeError, TypeError, ValueError):
        raise InvalidImage(f"The DICOM's {name} LUT is incomplete; export the image again.") from None
    entries = entries or 65536
    if not 1 <= bits <= 16:
        raise InvalidImage(
            f"The DICOM's {name} LUT declares {bits}-bit entries (1 to 16 are defined); export the image again."
        )
    table = np.frombuffer(raw, "<u2") if isinstance(raw, bytes) else np.atleast_1d(np.asarray(raw))
    if table.size < entries or not np.issubdtype(table.dtype, np.number):
        raise InvalidImage(
            f"The DICOM's {name} LUT holds {table.size} entries but its descriptor declares "
            f"{entries}; export the image again."
        )
    table = table[:entries].astype(np.float64)
    return lambda x: table[np.clip(x - first, 0, entries - 1).astype(np.intp)]


def _window(ds: pydicom.Dataset) -> Transform | None:
    """The first VOI window, scaled to 0..1 (the min-max step makes the output range irrelevant)."""
    if ds.get("WindowCenter") is None or ds.get("WindowWidth") is None:
        return None
    center, width = _number(ds, "WindowCenter", 0.0), _number(ds, "WindowWidth", 0.0)
    function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    if (
        function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID")
        or width < (1 if function == "LINEAR" else 0)
        or (function != "LINEAR" and width == 0)
    ):
        raise InvalidImage(
            f"The DICOM's window ({function}, width {width:g}) is not a valid VOI window; export the image again."
        )
    if function == "LINEAR_EXACT":
        return lambda x: np.clip((x - center) / width + 0.5, 0.0, 1.0)
    if function == "SIGMOID":

        def sigmoid(x: np.ndarray) -> np.ndarray:
            with np.errstate(over="ignore"):
                return 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))

        return sigmoid
    if width == 1:
        return lambda x: (x > center - 0.5).astype(np.float64)
    return lambda x: np.clip((x - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


def _display_transform(ds: pydicom.Dataset) -> Transform | None:
    steps: list[Transform] = []
    if ds.get("ModalityLUTSequence"):
        steps.append(_lut(ds.ModalityLUTSequence[0], "Modality"))
    else:
        slope, intercept = _number(ds, "RescaleSlope", 1.0), _number(ds, "RescaleIntercept", 0.0)
        if (slope, intercept) != (1.0, 0.0):
            steps.append(lambda x: x * slope + intercept)
    voi = _lut(ds.VOILUTSequence[0], "VOI") if ds.get("VOILUTSequence") else _window(ds)
    if voi is not None:
        steps.append(voi)
    if not steps:
        return None

    def transform(x: np.ndarray) -> np.ndarray:
        for step in steps:
            x = step(x)
        return x

    return transform


def _inverted(ds: pydicom.Dataset) -> bool:
    # DX/CR objects with MONOCHROME1 carry Presentation LUT Shape INVERSE for the same inversion,
    # so either one means "invert once".
    return (
        str(ds.get("PhotometricInterpretation", "")).strip().upper() == "MONOCHROME1"
        or str(ds.get("PresentationLUTShape", "")).strip().upper() == "INVERSE"
    )
