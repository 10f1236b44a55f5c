"""Decoding: type sniffing, raster and DICOM display pipeline, limits and typed errors."""

import io

import numpy as np
import pytest
from PIL import Image

from chexnet.errors import (
    CorruptImage,
    MultiFrameImage,
    NoPixelData,
    PayloadTooLarge,
    UnsupportedMediaType,
    UnsupportedTransferSyntax,
)
from chexnet.imaging import DecodeLimits, decode_image
from chexnet.imaging.display import to_display_u8
from dicom_factory import make_dicom
from hostile_files import png_bomb
from image_helpers import png_bytes
from sample_data import RGBA_PNGS

GRADIENT = np.tile(np.arange(256, dtype=np.uint8), (64, 1))  # spans 0..255


@pytest.mark.parametrize("data", [b"", b"hello, this is text", b"%PDF-1.7 not an image" * 10])
def test_non_images_are_unsupported_media(data):
    with pytest.raises(UnsupportedMediaType) as err:
        decode_image(data)
    assert err.value.status == 415 and err.value.message.endswith(".")


def test_8bit_png_is_used_as_is():
    decoded = decode_image(png_bytes(GRADIENT))
    assert decoded.format == "png" and (decoded.width, decoded.height) == (256, 64)
    np.testing.assert_array_equal(decoded.pixels, GRADIENT)


def test_gray_pngs_decode_to_pillows_pixels(nih_dir):
    """8-bit grayscale PNGs go through OpenCV's decoder (chexnet.imaging.raster): the same pixels as the
    Pillow decode they replace, so the same probabilities, on every sample radiograph."""
    gray = [p for p in sorted(nih_dir.glob("*.png")) if p.name not in RGBA_PNGS]
    for path in gray:
        expected = np.asarray(Image.open(path))
        assert expected.dtype == np.uint8 and expected.ndim == 2
        decoded = decode_image(path.read_bytes())
        assert (decoded.width, decoded.height, decoded.bits, decoded.source_size) == (1024, 1024, 8, None)
        np.testing.assert_array_equal(decoded.pixels, expected)


@pytest.mark.parametrize("bits", [1, 2, 4])
def test_low_depth_and_transparent_gray_pngs_as_pillow_reads_them(bits):
    """Depths below 8 are widened as Pillow widens them; a grey with a transparent value stays grey."""
    image = Image.fromarray(GRADIENT).convert("L").quantize(2**bits).convert("L")
    for transparency in (None, 0):
        buf = io.BytesIO()
        image.save(buf, format="PNG", bits=bits, **({} if transparency is None else {"transparency": transparency}))
        reference = Image.open(io.BytesIO(buf.getvalue()))
        expected = np.asarray(reference.convert("L") if reference.mode != "L" else reference)
        np.testing.assert_array_equal(decode_image(buf.getvalue()).pixels, expected)


def test_gray_png_with_exif_orientation_is_turned():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° on display
    buf = io.BytesIO()
    Image.fromarray(GRADIENT).save(buf, format="PNG", exif=exif)
    np.testing.assert_array_equal(decode_image(buf.getvalue()).pixels, np.rot90(GRADIENT, -1))


def test_16bit_png_is_scaled_min_max():
    wide = GRADIENT.astype(np.uint16) * 200 + 1000
    buf = io.BytesIO()
    Image.fromarray(wide).save(buf, format="PNG")
    decoded = decode_image(buf.getvalue())
    assert decoded.bits == 16
    np.testing.assert_array_equal(decoded.pixels, GRADIENT)


def test_rgba_png_drops_alpha(nih_dir):
    for name in RGBA_PNGS:
        data = (nih_dir / name).read_bytes()
        assert Image.open(io.BytesIO(data)).mode == "RGBA"
        expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))[..., 0]
        np.testing.assert_array_equal(decode_image(data).pixels, expected)


def test_jpeg_decodes():
    buf = io.BytesIO()
    Image.fromarray(GRADIENT).save(buf, format="JPEG", quality=95)
    decoded = decode_image(buf.getvalue())
    assert decoded.format == "jpeg"
    assert np.abs(decoded.pixels.astype(int) - GRADIENT).max() <= 8


def test_truncated_png_is_corrupt(nih_sample):
    data = nih_sample[0].read_bytes()
    with pytest.raises(CorruptImage) as err:
        decode_image(data[: len(data) // 2])
    assert err.value.status == 400


def test_png_bomb_refused_from_header():
    with pytest.raises(PayloadTooLarge) as err:
        decode_image(png_bomb())
    assert err.value.status == 413 and "limit" in err.value.message


def test_png_over_our_limit_but_under_pillows_refused_from_header():
    with pytest.raises(PayloadTooLarge) as err:
        decode_image(png_bomb(8000, 8000))
    assert "8000x8000" in err.value.message


def test_byte_limit():
    with pytest.raises(PayloadTooLarge):
        decode_image(png_bytes(GRADIENT), DecodeLimits(max_bytes=100))


def test_every_shared_dicom_decodes_or_gives_a_typed_error(dicom_dir):
    outcomes = {}
    for path in sorted(dicom_dir.glob("*.dcm")):
        try:
            decoded = decode_image(path.read_bytes())
            assert decoded.pixels.dtype == np.uint8 and decoded.pixels.max() == 255
            outcomes[path.name] = "ok"
        except UnsupportedTransferSyntax as exc:
            assert exc.status == 415
            outcomes[path.name] = "unsupported"
    assert outcomes == {
        "RG1_J2KR.dcm": "ok",
        "RG1_UNCR.dcm": "ok",
        "RG3_RLE.dcm": "ok",
        "RSNA_pneumonia_16d7f894_CR_SC_jpegbaseline.dcm": "ok",
        "RG3_JPLY.dcm": "ok",
    }


def test_j2k_lossless_equals_uncompressed(dicom_dir):
    plain = decode_image((dicom_dir / "RG1_UNCR.dcm").read_bytes())
    j2k = decode_image((dicom_dir / "RG1_J2KR.dcm").read_bytes())
    assert plain.pixels.shape == (1955, 1841)
    np.testing.assert_array_equal(plain.pixels, j2k.pixels)


def test_monochrome1_is_inverted(dicom_dir):
    """RG1 is MONOCHROME1: air (the area outside the body) must come out dark after inversion."""
    pixels = decode_image((dicom_dir / "RG1_UNCR.dcm").read_bytes()).pixels
    corner = pixels[:100, :100].mean()
    centre = pixels[900:1100, 800:1000].mean()
    assert corner < centre


def test_synthetic_monochrome1_equals_inverted_monochrome2():
    mono2 = decode_image(make_dicom(GRADIENT)).pixels
    mono1 = decode_image(make_dicom(255 - GRADIENT, photometric="MONOCHROME1")).pixels
    np.testing.assert_array_equal(mono2, GRADIENT)
    np.testing.assert_array_equal(mono1, GRADIENT)


def test_presentation_lut_inverse():
    pixels = decode_image(make_dicom(255 - GRADIENT, PresentationLUTShape="INVERSE")).pixels
    np.testing.assert_array_equal(pixels, GRADIENT)


def test_rescale_and_window_are_applied():
    raw = GRADIENT.astype(np.uint16) * 16  # 0..4080, 12-bit
    windowed = decode_image(
        make_dicom(
            raw, BitsStored=12, RescaleSlope=1, RescaleIntercept=-1024, WindowCenter=1024 - 1024, WindowWidth=2048
        )
    ).pixels
    # The window [-1024, 1024) in rescaled units covers raw 0..2047: everything above saturates.
    assert windowed[0, 128:].min() == 255
    assert windowed[0, 0] == 0
    assert np.all(np.diff(windowed[0, :128].astype(int)) >= 0)


def test_acr_nema_without_preamble_decodes():
    data = make_dicom(GRADIENT, preamble=False)
    assert data[128:132] != b"DICM"
    np.testing.assert_array_equal(decode_image(data).pixels, GRADIENT)


def test_multiframe_is_refused():
    with pytest.raises(MultiFrameImage) as err:
        decode_image(make_dicom(GRADIENT, frames=3))
    assert "3 frames" in err.value.message


def test_dicom_without_pixels_is_refused():
    with pytest.raises(NoPixelData):
        decode_image(make_dicom(GRADIENT, with_pixels=False))


def test_dicom_pixel_limit_from_header():
    with pytest.raises(PayloadTooLarge):
        decode_image(make_dicom(GRADIENT), DecodeLimits(max_pixels=1000))


def test_truncated_dicom_is_an_error(dicom_dir):
    data = (dicom_dir / "RG1_UNCR.dcm").read_bytes()
    with pytest.raises((CorruptImage, UnsupportedTransferSyntax)):
        decode_image(data[: len(data) // 3])


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.uint16, np.int16])
def test_integer_samples_through_a_table_give_the_block_path_bytes(dtype):
    """8- and 16-bit samples are mapped through a per-value table (chexnet.imaging.display): the same
    display image as the float path, with and without a LUT-like transform that is not monotonic."""
    info = np.iinfo(dtype)
    samples = np.random.default_rng(0).integers(info.min, info.max, (300, 200), endpoint=True).astype(dtype)
    for transform in (None, lambda x: np.cos(x / 5.0), lambda x: (x > 3).astype(np.float64)):
        for invert in (False, True):
            np.testing.assert_array_equal(
                to_display_u8(samples, transform, invert), to_display_u8(samples.astype(np.float32), transform, invert)
            )
    assert not to_display_u8(np.full((4, 4), 7, dtype)).any()  # a constant image is all zeros
