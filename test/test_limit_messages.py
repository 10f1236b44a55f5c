"""Every 413 says which limit the upload hit and the setting that governs it (DESIGN.md "Resource
bounds"), so whoever runs the service knows what to raise and whoever sends the file what to shrink."""

import io

import numpy as np
import pytest
from PIL import Image

import hostile_files
from api_helpers import assert_error, make_env, predict, ready_app
from dicom_factory import make_dicom
from image_helpers import png_bytes


@pytest.fixture(scope="module")
def small(tmp_path_factory, demo_bundle):
    """A service with a 1 MiB upload limit and a 1 megapixel limit."""
    env = make_env(
        tmp_path_factory.mktemp("limits"), demo_bundle.path, CHEXNET_MAX_UPLOAD_MB="1", CHEXNET_MAX_PIXELS="1000000"
    )
    return env, ready_app(env).test_client()


def _noise_png(side: int) -> bytes:
    return png_bytes(np.random.default_rng(0).integers(0, 255, (side, side), dtype=np.uint8))


def _png_header_only(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (width, height)).save(buf, "PNG")
    return buf.getvalue()


CASES = {
    "request body over the upload limit (werkzeug)": (
        lambda: b"\x89PNG\r\n\x1a\n" + bytes(5 * 2**19),
        ("upload limit of 1 MiB", "(CHEXNET_MAX_UPLOAD_MB)"),
    ),
    "file over the upload limit": (lambda: _noise_png(1250), ("the upload limit is 1 MiB", "(CHEXNET_MAX_UPLOAD_MB)")),
    "PNG over the pixel limit": (
        lambda: _png_header_only(1100, 1000),
        ("1100x1000", "the pixel limit is 1,000,000 pixels", "(CHEXNET_MAX_PIXELS)"),
    ),
    "PNG decompression bomb": (hostile_files.png_bomb, ("the pixel limit is 1,000,000 pixels", "(CHEXNET_MAX_PIXELS)")),
    "DICOM over the pixel limit": (
        lambda: make_dicom(np.zeros((1001, 1000), np.uint8)),
        ("1000x1001", "the pixel limit is 1,000,000 pixels", "(CHEXNET_MAX_PIXELS)"),
    ),
    "deflated DICOM over the inflated-size limit": (
        lambda: hostile_files.deflate_bomb(8),
        ("inflates to more than 3 MiB", "the inflated-size limit", "1,000,000 pixels", "CHEXNET_MAX_PIXELS"),
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_413_names_its_limit_and_setting(small, name):
    env, client = small
    make, fragments = CASES[name]
    data = make()
    raw = client.post("/api/v1/predict", data=data, headers={**env.auth(), "Content-Type": "application/octet-stream"})
    responses = [raw] + ([] if len(data) > 2 * 2**20 else [predict(client, env, data)])  # and as a form upload
    for response in responses:
        message = assert_error(response, 413, "payload_too_large")["error"]["message"]
        for fragment in fragments:
            assert fragment in message, message
