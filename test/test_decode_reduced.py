"""Decoding at the resolution the model needs (chexnet.imaging.reduced): where it applies, what it
reports, how far it moves probabilities from a full decode, and that it falls back rather than fails."""

import copy
import io

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.uid import JPEG2000, JPEG2000Lossless

from chexnet.errors import ChexnetError
from chexnet.imaging import DecodeSize, decode_image
from chexnet.imaging.codestream import FrameHeader
from chexnet.imaging.reduced import j2k_level
from dicom_factory import make_dicom

SIZE = DecodeSize(224, 512)
DELTA = 1e-3  # the largest probability difference from a full decode that reduced decoding may cause


def _probabilities(predictor, image) -> np.ndarray:
    m = predictor.bundle.manifest
    from chexnet.imaging import preprocess

    return predictor.engine.infer(preprocess(image.pixels, m.input_size, m.mean, m.std)[None]).probabilities[0]


def _as_j2k(path, syntax, **kwargs) -> bytes:
    ds = pydicom.dcmread(path)
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        ds.decompress()
    ds = copy.deepcopy(ds)
    ds.compress(syntax, **kwargs)
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


def test_real_j2k_cr_decodes_at_a_coarser_level_within_the_bound(dicom_dir, onnx_predictor):
    data = (dicom_dir / "RG1_J2KR.dcm").read_bytes()
    full, reduced = decode_image(data), decode_image(data, size=SIZE)
    assert full.pixels.shape == (1955, 1841) and reduced.pixels.shape == (978, 921)  # level 1 (see below)
    assert (reduced.width, reduced.height) == (1841, 1955)  # the source's size is what is reported
    delta = np.abs(_probabilities(onnx_predictor, full) - _probabilities(onnx_predictor, reduced)).max()
    assert delta <= DELTA


@pytest.mark.parametrize("name", ["RG1_UNCR.dcm", "RG3_RLE.dcm"])
@pytest.mark.parametrize("syntax", [JPEG2000Lossless, JPEG2000])
def test_windowed_radiographs_as_j2k_stay_within_the_bound(dicom_dir, onnx_predictor, name, syntax):
    data = _as_j2k(dicom_dir / name, syntax, **({"j2k_cr": [20]} if syntax == JPEG2000 else {}))
    full, reduced = decode_image(data), decode_image(data, size=SIZE)
    assert reduced.pixels.shape[0] * 2 - full.pixels.shape[0] in (0, 1)  # one level coarser
    assert np.abs(_probabilities(onnx_predictor, full) - _probabilities(onnx_predictor, reduced)).max() <= DELTA


def test_without_a_window_every_pixel_is_decoded(nih_sample, tmp_path):
    """Min-max display follows the pixel extremes, which a coarser level smooths: full decode."""
    path = tmp_path / "nih.dcm"
    path.write_bytes(make_dicom(decode_image(nih_sample[0].read_bytes()).pixels))
    data = _as_j2k(path, JPEG2000Lossless)
    reduced = decode_image(data, size=SIZE)
    assert reduced.pixels.shape == (1024, 1024) and reduced.source_size is None
    np.testing.assert_array_equal(reduced.pixels, decode_image(data).pixels)


def test_jpeg_uploads_use_dct_scaling_within_the_bound(nih_sample, onnx_predictor):
    for path in nih_sample[:4]:
        buffer = io.BytesIO()
        Image.open(path).convert("L").save(buffer, "JPEG", quality=90)
        full, reduced = decode_image(buffer.getvalue()), decode_image(buffer.getvalue(), size=SIZE)
        assert reduced.pixels.shape == (512, 512) and (reduced.width, reduced.height) == (1024, 1024)
        assert np.abs(_probabilities(onnx_predictor, full) - _probabilities(onnx_predictor, reduced)).max() <= DELTA


def test_exif_rotation_reports_the_rotated_source_size():
    pixels = np.tile(np.linspace(0, 255, 2000, dtype=np.uint8), (1200, 1))  # 2000 wide, 1200 high
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° on display
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", exif=exif)
    image = decode_image(buffer.getvalue(), size=SIZE)
    assert image.pixels.shape == (1000, 600) and (image.width, image.height) == (1200, 2000)


@pytest.mark.parametrize(
    "width,height,expected",
    [
        (1840, 1952, 2),  # 460 x 488 still has a short side ≥ 224; its long side 488 < 512 stops at 2
        (1841, 1955, 1),  # level 2 would give Pillow 460 wide and openjpeg 461: never asked for
        (4096, 4096, 3),  # 512 x 512
        (600, 400, 0),  # level 1 would be 200 high
    ],
)
def test_the_coarsest_level_that_fits(width, height, expected):
    assert j2k_level(FrameHeader(width, height, 1, 12, levels=5), DecodeSize(224, 480)) == expected


@pytest.mark.parametrize("damage", ["zeros", "truncated"])
def test_damaged_j2k_ends_as_a_full_decode_would(dicom_dir, damage):
    """A codestream Pillow cannot decode falls back to the full decoder, whose answer (an image, or
    a typed 4xx error) is the one given."""
    data = bytearray((dicom_dir / "RG1_J2KR.dcm").read_bytes())
    start = data.find(b"\xff\x4f\xff\x51")
    if damage == "zeros":
        data[start + 400 : start + 40_000] = b"\x00" * 39_600  # the header kept, code blocks ruined
    else:
        data[start + 400 : -2] = b"\xff" * (len(data) - start - 402)  # no valid packet after the header

    def outcome(**kwargs):
        try:
            return decode_image(bytes(data), **kwargs).pixels.shape[0] > 0
        except ChexnetError as exc:
            return type(exc)

    assert outcome(size=SIZE) == outcome()


def test_the_service_reports_source_size_and_predicts_the_j2k_like_the_uncompressed(dicom_dir, onnx_predictor):
    j2k = onnx_predictor.predict((dicom_dir / "RG1_J2KR.dcm").read_bytes)
    plain = onnx_predictor.predict((dicom_dir / "RG1_UNCR.dcm").read_bytes)
    assert j2k.image == plain.image == {"format": "dicom", "width": 1841, "height": 1955}
    assert max(abs(a.probability - b.probability) for a, b in zip(j2k.findings, plain.findings, strict=True)) <= DELTA
