"""DESIGN.md "Resource bounds": hostile files get a typed 4xx before any large allocation, memory
stays bounded while decoding, every transfer syntax that decoded before still decodes (with
permissively licensed codecs), and at most CHEXNET_DECODE_CONCURRENCY decodes run at once."""

import io
import threading

import gdcm
import imagecodecs
import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.uid import DeflatedExplicitVRLittleEndian, JPEGExtended12Bit

import hostile_files
from chexnet.errors import InvalidImage, Overloaded, PayloadTooLarge, ServiceError
from chexnet.imaging import DecodeLimits, decode_image
from chexnet.imaging.display import to_display_u8
from chexnet.imaging.gate import DecodeGate
from dicom_factory import make_dicom
from dicom_tools import transcode
from memory_helpers import SINGLE_REQUEST_BUDGET_MIB, peak_mib_above_now


@pytest.mark.parametrize("name", sorted(hostile_files.malformed_headers()))
def test_malformed_header_is_a_typed_4xx(name):
    data = hostile_files.malformed_headers()[name]
    with pytest.raises(ServiceError) as err:
        decode_image(data)
    assert 400 <= err.value.status < 500 and err.value.code in ("invalid_image", "unsupported_media_type")
    assert err.value.message.endswith(".") and "Traceback" not in err.value.message


@pytest.mark.parametrize(
    "name, make, expected",
    [
        ("deflated, 509 KiB inflating to 512 MiB", lambda: hostile_files.deflate_bomb(512), PayloadTooLarge),
        ("deflated, 5 million tiny elements", lambda: hostile_files.element_bomb(), InvalidImage),
        ("deflated, a VOI LUT sequence of a million items", lambda: hostile_files.sequence_bomb(), InvalidImage),
        (
            "deflated, a million elements inside one sequence item",
            lambda: hostile_files.nested_element_bomb(),
            InvalidImage,
        ),
        (
            "JPEG 2000 codestream 20000x20000 in a 48x48 header",
            lambda: hostile_files.codestream_bomb("j2k"),
            InvalidImage,
        ),
        ("JPEG codestream 20000x20000 in a 48x48 header", lambda: hostile_files.codestream_bomb("jpeg"), InvalidImage),
        ("36 MP 16-bit PNG", lambda: hostile_files.png16(6000, 6000), None),
    ],
)
def test_hostile_sizes_are_refused_or_decoded_within_the_memory_budget(name, make, expected):
    data = make()
    peak, result = peak_mib_above_now(lambda: decode_image(data))
    if expected is None:
        assert result.pixels.shape == (6000, 6000), result
    else:
        assert isinstance(result, expected), result
    assert peak <= SINGLE_REQUEST_BUDGET_MIB, f"{name}: resident set peaked {peak:.0f} MiB above the start"


def test_a_deflated_dicom_within_the_limit_decodes_like_the_uncompressed_one(dicom_dir):
    ds = pydicom.dcmread(dicom_dir / "RG1_UNCR.dcm")
    buf = io.BytesIO()
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(buf)
    plain = decode_image((dicom_dir / "RG1_UNCR.dcm").read_bytes())
    np.testing.assert_array_equal(decode_image(buf.getvalue()).pixels, plain.pixels)
    with pytest.raises(PayloadTooLarge, match="inflates to more than"):
        decode_image(buf.getvalue(), DecodeLimits(max_pixels=1_000_000))


_TS = gdcm.TransferSyntax


@pytest.mark.parametrize(
    "syntax, max_error",
    [
        (_TS.JPEGLosslessProcess14, 0),
        (_TS.JPEGLosslessProcess14_1, 0),
        (_TS.JPEGLSLossless, 0),
        (_TS.JPEGLSNearLossless, 1),
        (_TS.JPEG2000Lossless, 0),
        (_TS.JPEG2000, 0),
        (_TS.RLELossless, 0),
    ],
    ids=["jpeg-lossless-p14", "jpeg-lossless-sv1", "jpeg-ls", "jpeg-ls-near", "j2k-lossless", "j2k", "rle"],
)
def test_every_transfer_syntax_decodes_like_the_uncompressed_image(syntax, max_error, dicom_dir, tmp_path):
    source = dicom_dir / "RG1_UNCR.dcm"
    encoded = transcode(source, tmp_path / "out.dcm", syntax, lossy_error=2 if max_error else 0)
    assert (
        pydicom.dcmread(io.BytesIO(encoded)).file_meta.TransferSyntaxUID
        != pydicom.dcmread(source).file_meta.TransferSyntaxUID
    )
    got = decode_image(encoded).pixels.astype(int)
    assert np.abs(got - decode_image(source.read_bytes()).pixels).max() <= max_error


def test_12_bit_jpeg_extended_decodes(dicom_dir):
    """12-bit JPEG Extended: no codec but the GPL one decoded it before; imagecodecs does now."""
    ds = pydicom.dcmread(dicom_dir / "RG1_UNCR.dcm")
    twelve = (ds.pixel_array >> 3).astype(np.uint16)
    ds.PixelData = encapsulate([imagecodecs.jpeg8_encode(twelve, level=95, bitspersample=12)])
    ds["PixelData"].VR = "OB"
    ds.BitsStored, ds.HighBit = 12, 11
    ds.file_meta.TransferSyntaxUID = JPEGExtended12Bit
    buf = io.BytesIO()
    ds.save_as(buf)
    reference = to_display_u8(twelve, invert=True)  # RG1 is MONOCHROME1
    assert np.abs(decode_image(buf.getvalue()).pixels.astype(int) - reference).mean() < 1.0
    jply = decode_image((dicom_dir / "RG3_JPLY.dcm").read_bytes()).pixels.astype(int)
    rle = decode_image((dicom_dir / "RG3_RLE.dcm").read_bytes()).pixels  # the same radiograph, lossless
    assert np.abs(jply - rle).mean() < 1.0


@pytest.mark.parametrize(
    "elements",
    [
        {"RescaleSlope": "0.5", "RescaleIntercept": "-100"},
        {"WindowCenter": "1500", "WindowWidth": "1000"},
        {"WindowCenter": "1500", "WindowWidth": "1"},
        {"WindowCenter": "1500", "WindowWidth": "1000", "VOILUTFunction": "LINEAR_EXACT"},
        {"WindowCenter": "1500", "WindowWidth": "1000", "VOILUTFunction": "SIGMOID"},
        {"RescaleSlope": "2", "RescaleIntercept": "0", "WindowCenter": "3000", "WindowWidth": "2000"},
    ],
    ids=["rescale", "window", "window-width-1", "linear-exact", "sigmoid", "rescale-then-window"],
)
def test_block_wise_display_pipeline_equals_pydicoms_whole_image_float64(elements):
    pixels = np.random.default_rng(1).integers(0, 4096, (300, 200)).astype(np.uint16)
    ds = pydicom.dcmread(io.BytesIO(make_dicom(pixels, BitsStored=12, **elements)))
    reference = to_display_u8(apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds, index=0))
    np.testing.assert_array_equal(decode_image(make_dicom(pixels, BitsStored=12, **elements)).pixels, reference)


def test_lut_sequences_match_pydicom(dicom_dir):
    pixels = np.random.default_rng(2).integers(0, 1024, (64, 64)).astype(np.uint16)
    table = np.sqrt(np.arange(1024) * 60).astype(np.uint16)  # a gamma-like VOI LUT
    voi = pydicom.Dataset()
    voi.LUTDescriptor, voi.LUTData = [1024, 0, 16], table.tobytes()
    voi["LUTData"].VR = "OW"
    data = make_dicom(pixels, BitsStored=10, VOILUTSequence=[voi])
    ds = pydicom.dcmread(io.BytesIO(data))
    np.testing.assert_array_equal(decode_image(data).pixels, to_display_u8(apply_voi_lut(ds.pixel_array, ds)))


def test_decode_gate_admits_n_at_once_and_refuses_after_the_wait():
    gate = DecodeGate(concurrency=2, wait_s=0.05)
    inside, release = threading.Barrier(3), threading.Event()

    def hold():
        with gate.slot():
            inside.wait(5)
            release.wait(5)

    holders = [threading.Thread(target=hold) for _ in range(2)]
    for t in holders:
        t.start()
    inside.wait(5)  # both slots are taken
    with pytest.raises(Overloaded) as err:
        with gate.slot():
            pass
    assert err.value.status == 503 and err.value.headers == {"Retry-After": "2"}
    release.set()
    for t in holders:
        t.join(5)
    with gate.slot():  # free again
        pass


def test_pydicom_warnings_reach_the_log_without_element_values(caplog):
    data = hostile_files.malformed_headers()["frames_not_a_number"]
    with caplog.at_level("WARNING", logger="pydicom"), pytest.raises(InvalidImage):
        decode_image(data)
    logged = [r.getMessage() for r in caplog.records if r.name.startswith("pydicom")]
    assert logged and all("abc" not in message for message in logged), logged
