"""Engines against the references: torchvision pipeline, each other, and the autograd Grad-CAM."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from chexnet.engines import create_engine
from chexnet.engines.pytorch import load_model
from chexnet.errors import EngineUnavailable
from chexnet.heatmap import normalise
from chexnet.imaging import decode_image, preprocess
from dicom_factory import make_dicom
from image_helpers import png_bytes


def reference_tensor(path, manifest) -> torch.Tensor:
    """The torchvision pipeline the product must reproduce (DESIGN.md "Preprocessing reference")."""
    pipeline = transforms.Compose(
        [
            transforms.Resize((manifest.input_size, manifest.input_size)),
            transforms.ToTensor(),
            transforms.Normalize(manifest.mean, manifest.std),
        ]
    )
    return pipeline(Image.open(path).convert("RGB"))


def our_tensor(data: bytes, manifest) -> np.ndarray:
    return preprocess(decode_image(data).pixels, manifest.input_size, manifest.mean, manifest.std)


def batch(paths, manifest) -> np.ndarray:
    return np.stack([our_tensor(p.read_bytes(), manifest) for p in paths])


def test_preprocess_matches_torchvision_reference(nih_sample, demo_bundle):
    m = demo_bundle.manifest
    for path in nih_sample:  # includes both RGBA files
        np.testing.assert_allclose(our_tensor(path.read_bytes(), m), reference_tensor(path, m).numpy(), atol=1e-6)


def test_probabilities_match_reference_model(nih_sample, demo_bundle, onnx_engine, torch_engine):
    model = load_model(demo_bundle)
    reference = torch.stack([reference_tensor(p, demo_bundle.manifest) for p in nih_sample])
    with torch.inference_mode():
        expected = torch.sigmoid(model(reference)[0]).numpy()
    x = batch(nih_sample, demo_bundle.manifest)
    np.testing.assert_allclose(onnx_engine.infer(x).probabilities, expected, atol=1e-4)
    np.testing.assert_allclose(torch_engine.infer(x).probabilities, expected, atol=1e-4)


def test_engines_agree_on_probabilities_and_cams(nih_sample, dicom_dir, demo_bundle, onnx_engine, torch_engine):
    paths = nih_sample + [dicom_dir / "RG1_UNCR.dcm", dicom_dir / "RSNA_pneumonia_16d7f894_CR_SC_jpegbaseline.dcm"]
    x = batch(paths, demo_bundle.manifest)
    a, b = onnx_engine.infer(x), torch_engine.infer(x)
    assert a.probabilities.shape == (len(paths), 10) and a.cams.shape == (len(paths), 10, 7, 7)
    np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-4)
    for cam_a, cam_b in zip(a.cams.reshape(-1, 7, 7), b.cams.reshape(-1, 7, 7), strict=True):
        np.testing.assert_allclose(normalise(cam_a), normalise(cam_b), atol=1e-4)


def gradcam_oracle(model, x: torch.Tensor, c: int) -> np.ndarray:
    """DESIGN.md's oracle: autograd Grad-CAM at the post-ReLU feature map."""
    r = torch.relu(model.features(x)).detach().requires_grad_()
    model.classifier(r.mean((2, 3)))[0, c].backward()
    alpha = r.grad.mean((2, 3), keepdim=True)
    return torch.relu((alpha * r).sum(1))[0].detach().numpy()


def test_cam_equals_autograd_gradcam(nih_sample, demo_bundle, onnx_engine):
    model = load_model(demo_bundle)
    x = batch(nih_sample[:2], demo_bundle.manifest)
    cams = onnx_engine.infer(x).cams
    for i in range(2):
        for c in range(10):
            oracle = gradcam_oracle(model, torch.from_numpy(x[i : i + 1]), c)
            np.testing.assert_allclose(normalise(cams[i, c]), normalise(oracle), atol=1e-4)


def test_batched_equals_single(nih_sample, demo_bundle, onnx_engine):
    x = batch(nih_sample, demo_bundle.manifest)
    whole = onnx_engine.infer(x).probabilities
    single = np.concatenate([onnx_engine.infer(x[i : i + 1]).probabilities for i in range(len(x))])
    np.testing.assert_allclose(whole, single, atol=1e-5)


def test_a_lone_call_runs_on_its_own_threads_with_the_same_answers(nih_sample, demo_bundle):
    engine = create_engine(demo_bundle, "onnxruntime", "cpu", threads=1, concurrency=2, lone_threads=2)
    assert engine.lone_session is not engine.session
    lone_options = engine.lone_session.get_session_options()
    assert lone_options.intra_op_num_threads == 2 and engine.session.get_session_options().intra_op_num_threads == 1
    assert lone_options.get_session_config_entry("session.intra_op.allow_spinning") == "0"  # its pool sleeps
    for image in batch(nih_sample, demo_bundle.manifest):
        alone, shared = engine.infer(image[None], lone=True), engine.infer(image[None])
        np.testing.assert_allclose(alone.probabilities, shared.probabilities, atol=1e-6)
        np.testing.assert_allclose(alone.cams, shared.cams, atol=1e-6)
    plain = create_engine(demo_bundle, "onnxruntime", "cpu", threads=2)
    assert plain.lone_session is plain.session  # no lone_threads: one session, no second copy of the model
    same = create_engine(demo_bundle, "onnxruntime", "cpu", threads=2, lone_threads=2)
    assert same.lone_session is same.session  # no more threads than every call has: no second copy either


def test_dicom_of_png_pixels_predicts_like_the_png(nih_sample, demo_bundle, onnx_engine):
    pixels = decode_image(nih_sample[0].read_bytes()).pixels
    assert pixels.min() == 0 and pixels.max() == 255, "the oracle needs a PNG spanning 0..255"
    m = demo_bundle.manifest
    inputs = [png_bytes(pixels), make_dicom(pixels), make_dicom(255 - pixels, photometric="MONOCHROME1")]
    probs = onnx_engine.infer(np.stack([our_tensor(d, m) for d in inputs])).probabilities
    np.testing.assert_allclose(probs[1], probs[0], atol=1e-6)
    np.testing.assert_allclose(probs[2], probs[0], atol=1e-6)


def test_concurrent_calls_each_get_their_own_result(nih_sample, demo_bundle, onnx_engine, torch_engine):
    x = batch(nih_sample, demo_bundle.manifest)
    for engine in (onnx_engine, torch_engine):
        expected = [engine.infer(x[i : i + 1]).probabilities[0] for i in range(len(x))]
        order = list(range(len(x))) * 3
        with ThreadPoolExecutor(max_workers=6) as pool:
            got = list(pool.map(lambda i, engine=engine: engine.infer(x[i : i + 1]).probabilities[0], order))
        for i, probs in zip(order, got, strict=True):
            np.testing.assert_allclose(probs, expected[i], atol=1e-5)


def test_cuda_request_without_cuda_fails_loudly(demo_bundle):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the refusal only applies without it")
    with pytest.raises(EngineUnavailable, match="CUDA"):
        create_engine(demo_bundle, "torch", "cuda")
    with pytest.raises(EngineUnavailable, match="CPU only"):
        create_engine(demo_bundle, "onnxruntime", "cuda")


def test_auto_device_falls_back_to_cpu(demo_bundle):
    engine = create_engine(demo_bundle, "torch", "auto")
    assert engine.device == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.gpu
def test_cuda_engine_matches_cpu(nih_sample, demo_bundle, onnx_engine):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    x = batch(nih_sample, demo_bundle.manifest)
    cuda = create_engine(demo_bundle, "torch", "cuda")
    np.testing.assert_allclose(cuda.infer(x).probabilities, onnx_engine.infer(x).probabilities, atol=1e-3)
