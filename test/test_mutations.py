"""Property-based: real files from ../shared/data, mutated (header fields, lengths, truncation,
bytes, transfer syntax), sent to the service. Every answer is a 200 or a JSON 4xx with a code, never
a 5xx; decoding stays within the one-request memory budget."""

import io
import tempfile
from pathlib import Path

import gdcm
import pydicom
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydicom import config
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

from chexnet.errors import ServiceError
from chexnet.imaging import decode_image
from dicom_tools import transcode
from memory_helpers import SINGLE_REQUEST_BUDGET_MIB, peak_mib_above_now
from sample_data import SHARED_DATA as SHARED

BASES = {  # small enough to decode many times; every codec family and the PNG path
    "jpeg": SHARED / "dicom" / "RSNA_pneumonia_16d7f894_CR_SC_jpegbaseline.dcm",
    "rle": SHARED / "dicom" / "RG3_RLE.dcm",
    "png": SHARED / "nih" / "00000075_000.png",
    "lossless": SHARED / "dicom" / "RG3_RLE.dcm",  # re-encoded as JPEG Lossless SV1 (GDCM's path)
}
FIELDS = [
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "NumberOfFrames",
    "RescaleSlope",
    "RescaleIntercept",
    "WindowCenter",
    "WindowWidth",
    "VOILUTFunction",
    "PresentationLUTShape",
    "PlanarConfiguration",
]
VALUES = st.one_of(
    st.integers(0, 65535),
    st.sampled_from(
        [
            "",
            "abc",
            "-1",
            "0",
            "1e999",
            "nan",
            "3.5",
            "MONOCHROME1",
            "RGB",
            "PALETTE COLOR",
            "SIGMOID",
            "INVERSE",
            "1\\2",
        ]
    ),
)
SYNTAXES = [
    ImplicitVRLittleEndian,
    ExplicitVRBigEndian,
    DeflatedExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEG2000Lossless,
    RLELossless,
    "1.2.3.4.5",
]
_CACHE: dict[str, bytes] = {}


def base(name: str) -> bytes:
    if name not in _CACHE:
        if name == "lossless":
            with tempfile.TemporaryDirectory() as tmp:
                _CACHE[name] = transcode(
                    BASES[name], Path(tmp) / "sv1.dcm", gdcm.TransferSyntax.JPEGLosslessProcess14_1
                )
        else:
            _CACHE[name] = BASES[name].read_bytes()
    return _CACHE[name]


def _set_field(data: bytes, keyword: str, value) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(data), force=True)
    vr = pydicom.datadict.dictionary_VR(keyword)
    if vr == "US" and not isinstance(value, int):
        value = 1
    if vr != "US":
        value = str(value)
    with config.disable_value_validation():
        setattr(ds, keyword, value)
        buf = io.BytesIO()
        ds.save_as(buf)
    return buf.getvalue()


@st.composite
def mutated(draw) -> bytes:
    name = draw(st.sampled_from(sorted(BASES)))
    data = base(name)
    kind = draw(st.sampled_from(["field", "truncate", "bytes", "syntax"] if name != "png" else ["truncate", "bytes"]))
    if kind == "field":
        try:
            return _set_field(data, draw(st.sampled_from(FIELDS)), draw(VALUES))
        except Exception:  # pydicom refuses to write that value at all: not a file anyone can send
            assume(False)
    if kind == "truncate":
        return data[: draw(st.integers(0, len(data) - 1))]
    if kind == "syntax":
        ds = pydicom.dcmread(io.BytesIO(data))
        ds.file_meta.TransferSyntaxUID = draw(st.sampled_from(SYNTAXES))
        buf = io.BytesIO()
        try:
            ds.save_as(buf)  # the pixel data keeps its old encoding: a lie about the syntax
        except Exception:
            assume(False)
        return buf.getvalue()
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 16))):
        # Mostly the header, where the damage matters; sometimes anywhere.
        limit = draw(st.sampled_from([min(len(out), 2048), len(out)]))
        out[draw(st.integers(0, limit - 1))] = draw(st.integers(0, 255))
    return bytes(out)


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(data=mutated())
def test_a_mutated_file_decodes_or_is_a_typed_4xx_within_the_memory_budget(data):
    peak, result = peak_mib_above_now(lambda: decode_image(data))
    if isinstance(result, ServiceError):
        assert 400 <= result.status < 500, (result.code, result.message)
    assert peak <= SINGLE_REQUEST_BUDGET_MIB


@pytest.fixture(scope="module")
def client(app):
    return app.test_client()


@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(data=mutated())
def test_the_api_answers_a_mutated_file_with_200_or_a_json_4xx(client, env, data):
    response = client.post("/api/v1/predict?heatmaps=none", data=data, headers=env.auth())
    assert response.status_code == 200 or 400 <= response.status_code < 500, response.get_data(as_text=True)
    if response.status_code != 200:
        error = response.get_json()["error"]
        assert error["code"] in ("invalid_image", "unsupported_media_type", "payload_too_large"), error
