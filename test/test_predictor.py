"""The prediction stages and heatmap overlays, as a caller of the CLI or API sees them."""

import base64
import io

import numpy as np
import pytest
from PIL import Image

from chexnet.api.responses import prediction_body
from chexnet.errors import InvalidOption
from chexnet.heatmap import background, normalise, overlay_size, render
from chexnet.options import PredictOptions


def predict(predictor, path, heatmaps=None, heatmap_format=None) -> dict:
    options = PredictOptions.parse(heatmaps=heatmaps, heatmap_format=heatmap_format)
    return prediction_body(predictor.predict(path.read_bytes, options), "test")


def test_prediction_shape(onnx_predictor, nih_sample):
    body = predict(onnx_predictor, nih_sample[0], "all", "png")
    assert body["model"] == {
        "id": "cxr10",
        "version": "0.0.0-demo",
        "demo": True,
        "engine": "onnxruntime",
        "device": "cpu",
        "precision": "fp32",
        "thresholds": "bundle",
    }
    assert body["image"] == {"format": "png", "width": 1024, "height": 1024}
    assert "not a diagnosis" in body["notice"]
    assert [f["code"] for f in body["findings"]] == onnx_predictor.bundle.manifest.codes
    for f in body["findings"]:
        assert 0 <= f["probability"] <= 1 and f["positive"] == (f["probability"] >= f["threshold"])
    assert len(body["heatmaps"]) == 10
    for h in body["heatmaps"]:
        image = Image.open(io.BytesIO(base64.b64decode(h["data"])))
        assert image.format == "PNG" and image.size == (h["width"], h["height"]) == (512, 512)
    assert set(body["timing_ms"]) == {"decode", "preprocess", "inference", "heatmap", "total"}


def test_heatmap_selection(onnx_predictor, nih_sample):
    top = predict(onnx_predictor, nih_sample[1], "top")
    best = max(top["findings"], key=lambda f: f["probability"])
    assert [h["code"] for h in top["heatmaps"]] == [best["code"]]
    assert predict(onnx_predictor, nih_sample[1], "none")["heatmaps"] == []
    picked = predict(onnx_predictor, nih_sample[1], " mass, fracture")
    assert [h["code"] for h in picked["heatmaps"]] == ["mass", "fracture"]
    positive = predict(onnx_predictor, nih_sample[1], "positive")
    assert [h["code"] for h in positive["heatmaps"]] == [f["code"] for f in positive["findings"] if f["positive"]]


@pytest.mark.parametrize("spec", [",", "mass,,fracture", "mass,"])
def test_malformed_heatmap_spec_is_refused_when_parsed(spec):
    with pytest.raises(InvalidOption) as err:
        PredictOptions.parse(heatmaps=spec)
    assert err.value.status == 422 and "heatmaps" in err.value.message


@pytest.mark.parametrize("spec", ["bogus", "mass,bogus"])
def test_unknown_label_code_is_refused_before_reading_the_image(onnx_predictor, spec):
    def never_read():
        raise AssertionError("the image was read before the options were checked")

    with pytest.raises(InvalidOption, match="bogus") as err:
        onnx_predictor.predict(never_read, PredictOptions.parse(heatmaps=spec))
    assert err.value.status == 422


def test_overlay_keeps_aspect_and_bounds_long_side():
    pixels = np.zeros((1955, 1841), np.uint8)
    heat = render(background(pixels), np.random.default_rng(0).random((7, 7)), "jpeg")
    assert (heat.width, heat.height) == overlay_size(1841, 1955) and heat.height == 512
    assert Image.open(io.BytesIO(heat.data)).format == "JPEG"
    assert overlay_size(300, 200) == (300, 200)  # never upscaled


def test_overlay_hot_where_cam_is_high():
    cam = np.zeros((7, 7), np.float32)
    cam[0, 6] = 1.0  # top right
    heat = render(background(np.full((512, 512), 128, np.uint8)), cam, "png")
    rgb = np.asarray(Image.open(io.BytesIO(heat.data)).convert("RGB")).astype(int)
    top_right, bottom_left = rgb[20:60, 460:500].mean((0, 1)), rgb[460:500, 20:60].mean((0, 1))
    assert top_right[0] > bottom_left[0] + 40  # red where the evidence is
    assert bottom_left[2] > bottom_left[0]  # blue (cold) elsewhere


def test_every_heatmap_of_a_request_is_drawn_on_one_background(onnx_predictor, nih_sample):
    """The radiograph is shrunk once per request; each overlay is still that background blended with its
    own map, and the RGB that DICOM results store is the overlay's channels swapped."""
    prediction = onnx_predictor.predict(nih_sample[0].read_bytes, PredictOptions.parse(heatmaps="all"))
    assert len(prediction.heatmaps) == len(onnx_predictor.bundle.manifest.labels)
    base = background(np.asarray(Image.open(nih_sample[0]).convert("L")))
    for h in prediction.heatmaps:
        assert (h.rendered.width, h.rendered.height) == (512, 512)
        np.testing.assert_array_equal(h.rendered.rgb, h.rendered.bgr[:, :, ::-1])
        blended = render(base, h.cam, None).bgr.astype(int)
        assert np.abs(blended - h.rendered.bgr.astype(int)).max() <= 1  # cam normalised twice: rounding only


def test_normalise_flat_map_is_zero():
    assert not normalise(np.zeros((7, 7))).any()
    out = normalise(np.array([[1.0, 3.0]]))
    assert out.min() == 0 and out.max() == 1


def test_bad_heatmap_format():
    with pytest.raises(InvalidOption, match="heatmap_format"):
        PredictOptions.parse(heatmaps="top", heatmap_format="gif")
