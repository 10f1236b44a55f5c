"""The torch engine on its device, for bench/gpu_check.py: correctness against ONNX Runtime on the CPU (the fp32
reference), reduced-precision deltas, and the bare forward pass's images/s per batch size and mode."""

import time

import numpy as np
import torch

from chexnet.bundle import Bundle
from chexnet.engines import create_engine
from chexnet.engines.pytorch import load_model
from chexnet.errors import ChexnetError
from chexnet.heatmap import normalise

_BATCH = 8


def _outputs(engine, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    outs = [engine.infer(x[i : i + _BATCH]) for i in range(0, len(x), _BATCH)]
    return np.concatenate([o.probabilities for o in outs]), np.concatenate([o.cams for o in outs])


def _cam_delta(a: np.ndarray, b: np.ndarray) -> float:
    return max(
        float(np.abs(normalise(p) - normalise(q)).max()) for i in range(len(a)) for p, q in zip(a[i], b[i], strict=True)
    )


@torch.inference_mode()
def _autocast_probabilities(engine, x: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    out = []
    for i in range(0, len(x), _BATCH):
        batch = torch.from_numpy(x[i : i + _BATCH]).to(engine.torch_device)
        if engine.device == "cuda":
            batch = batch.contiguous(memory_format=torch.channels_last)
        with torch.autocast(engine.device, dtype=dtype):
            logits, _ = engine.model(batch)
        out.append(torch.sigmoid(logits.float()).cpu().numpy())
    return np.concatenate(out)


def correctness(bundle: Bundle, x: np.ndarray, device: str) -> tuple[dict, object]:
    """The served fp32 engine (TF32 off) against ONNX Runtime fp32 on the CPU, probabilities and CAMs; TF32 (cuDNN's
    default) and bf16 autocast against it; fp16 as the service measures it at start-up (the bundle's calibration
    images are the same sample images). Returns (results, the fp32 engine)."""
    reference_p, reference_cams = _outputs(create_engine(bundle, "onnxruntime"), x)
    engine = create_engine(bundle, "torch", device)
    p, cams = _outputs(engine, x)
    result = {
        "images": len(x),
        "device": engine.device_name,
        "fp32_max_dp": float(np.abs(p - reference_p).max()),
        "fp32_max_dcam": _cam_delta(cams, reference_cams),
        "bound": 1e-4,
    }
    result["fp32_ok"] = result["fp32_max_dp"] <= 1e-4 and result["fp32_max_dcam"] <= 1e-4
    if engine.device == "cuda":
        torch.backends.cudnn.allow_tf32 = True
        try:
            result["tf32_max_dp"] = float(np.abs(_outputs(engine, x)[0] - reference_p).max())
        finally:
            torch.backends.cudnn.allow_tf32 = False
    result["bf16_autocast_max_dp"] = float(np.abs(_autocast_probabilities(engine, x, torch.bfloat16) - p).max())
    try:  # measures itself on the bundle's calibration images, or refuses with the sentence /ready would give
        measured = create_engine(bundle, "torch", device, "fp16").measurement
        result["fp16_startup_check"] = measured.as_dict()
        result["fp16_autocast_max_dp"] = measured.max_delta
    except ChexnetError as exc:
        result["fp16_startup_check"] = {"refused": exc.message}
    return result, engine


def _rate(step, sync, min_s: float) -> float:
    """Seconds per call: warm-up calls, then calls until min_s has passed (min_s 0: one of each, for --dry)."""
    least = 2 if min_s else 1
    for _ in range(least):
        step()
    sync()
    calls, start = 0, time.perf_counter()
    while True:
        step()
        calls += 1
        sync()
        elapsed = time.perf_counter() - start
        if calls >= least and elapsed >= min_s:
            return elapsed / calls


def forward_rows(bundle: Bundle, engine, batches: tuple[int, ...], min_s: float, deadline: float) -> list[dict]:
    """images/s of the bare forward (logits and feature map on the device) per batch size: eager NCHW, channels_last,
    a CUDA graph of channels_last, fp16 autocast; and the engine's whole call as served (host to device, CAMs,
    device to host)."""
    device = engine.torch_device
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    eager = load_model(bundle).to(device)
    rows = []
    for batch in batches:
        for mode in (
            "eager NCHW fp32",
            "channels_last fp32",
            "CUDA graph, channels_last fp32",
            "channels_last fp16 autocast",
            "engine.infer fp32 (host↔device, CAMs)",
        ):
            row = {"mode": mode, "batch": batch}
            rows.append(row)
            if time.monotonic() > deadline:
                row["skipped"] = "time budget"
                continue
            if not cuda and ("CUDA" in mode or "fp16" in mode):
                row["skipped"] = "needs CUDA"
                continue
            try:
                seconds = _measure(mode, batch, eager, engine, device, sync, min_s)
            except torch.cuda.OutOfMemoryError:
                row["skipped"] = "out of GPU memory"
                torch.cuda.empty_cache()
                continue
            row.update({"ms_per_batch": round(seconds * 1000, 3), "images_per_s": round(batch / seconds, 1)})
    return rows


@torch.inference_mode()
def _measure(mode: str, batch: int, eager, engine, device, sync, min_s: float) -> float:
    x = torch.randn(batch, 3, 224, 224, device=device)
    if mode.startswith("engine.infer"):
        host = x.cpu().numpy()
        return _rate(lambda: engine.infer(host), sync, min_s)
    if mode == "eager NCHW fp32":
        return _rate(lambda: eager(x), sync, min_s)
    x = x.contiguous(memory_format=torch.channels_last)
    model = engine.model  # channels_last on CUDA (the engine's own module)
    if mode == "channels_last fp16 autocast":

        def step():
            with torch.autocast("cuda", dtype=torch.float16):
                model(x)

        return _rate(step, sync, min_s)
    if mode == "channels_last fp32":
        return _rate(lambda: model(x), sync, min_s)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            model(x)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        model(x)
    try:
        return _rate(graph.replay, sync, min_s)
    finally:
        del graph
