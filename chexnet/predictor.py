"""The inference stages, each timed and testable on its own:
prepare (decode → preprocess) → forward (one batched engine call) → report (findings + heatmaps).

The CLI calls them in sequence; the API's micro-batcher calls ``forward`` on requests it groups.
"""

import base64
import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from chexnet import heatmap
from chexnet.bundle import Bundle
from chexnet.bundle.manifest import DEMO_NOTICE
from chexnet.engines import Engine
from chexnet.errors import InvalidOption
from chexnet.imaging import DecodedImage, DecodeLimits, decode_image, preprocess

HEATMAP_MODES = ("none", "top", "positive", "all")


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000.0, 2)


@dataclass
class PreparedImage:
    image: DecodedImage
    tensor: np.ndarray
    sha256: str
    timing_ms: dict = field(default_factory=dict)


@dataclass
class Prediction:
    model: dict
    image: dict
    findings: list[dict]
    heatmaps: list[tuple[str, heatmap.RenderedHeatmap]]
    timing_ms: dict
    input_sha256: str

    def as_dict(self) -> dict:
        """The REST API's response body (DESIGN.md), heatmaps embedded as base64."""
        body = {"model": self.model, "image": self.image, "findings": self.findings}
        body["heatmaps"] = [
            {"code": code, "mime": h.mime, "width": h.width, "height": h.height,
             "data": base64.b64encode(h.data).decode("ascii")}
            for code, h in self.heatmaps
        ]
        body["timing_ms"] = self.timing_ms
        if self.model["demo"]:
            body["notice"] = DEMO_NOTICE
        return body


def parse_heatmap_spec(spec: str | None, codes: Sequence[str]) -> str | list[str]:
    """Validate ``heatmaps`` = none|top|positive|all|code1,code2 against a model's label codes."""
    spec = (spec or "top").strip()
    if spec in HEATMAP_MODES:
        return spec
    wanted = [c.strip() for c in spec.split(",") if c.strip()]
    unknown = [c for c in wanted if c not in codes]
    if not wanted or unknown:
        raise InvalidOption(
            f"heatmaps must be one of {', '.join(HEATMAP_MODES)} or label codes of this model; "
            f"unknown: {', '.join(unknown) or spec!r}."
        )
    return wanted


class Predictor:
    """One bundle on one engine. Holds no per-request state; safe to share between threads."""

    def __init__(self, bundle: Bundle, engine: Engine, limits: DecodeLimits = DecodeLimits()):
        self.bundle = bundle
        self.engine = engine
        self.limits = limits
        m = bundle.manifest
        self.model_info = {"id": m.id, "version": m.version, "demo": m.demo,
                           "engine": engine.name, "device": engine.device}

    def warmup(self) -> None:
        self.engine.warmup(self.bundle.manifest.input_size)

    def prepare(self, data: bytes) -> PreparedImage:
        start = time.perf_counter()
        image = decode_image(data, self.limits)
        decode_ms = _ms(start)
        start = time.perf_counter()
        m = self.bundle.manifest
        tensor = preprocess(image.pixels, m.input_size, m.mean, m.std)
        return PreparedImage(image, tensor, hashlib.sha256(data).hexdigest(),
                             {"decode": decode_ms, "preprocess": _ms(start)})

    def forward(self, tensors: Sequence[np.ndarray]):
        """One engine call for the whole batch; returns (EngineOutput, milliseconds)."""
        start = time.perf_counter()
        output = self.engine.infer(np.stack(tensors).astype(np.float32, copy=False))
        return output, _ms(start)

    def report(self, prepared: PreparedImage, probabilities: np.ndarray, cams: np.ndarray,
               inference_ms: float, heatmaps: str | list[str] = "top",
               heatmap_format: str = "jpeg") -> Prediction:
        labels = self.bundle.manifest.labels
        findings = [
            {"code": label.code, "name": label.name.en, "name_zh": label.name.zh,
             "probability": round(float(p), 6), "threshold": label.threshold,
             "positive": bool(p >= label.threshold)}
            for label, p in zip(labels, probabilities)
        ]
        start = time.perf_counter()
        rendered = [
            (labels[i].code, heatmap.render(prepared.image.pixels, cams[i], heatmap_format))
            for i in self._heatmap_indices(heatmaps, probabilities)
        ]
        timing = dict(prepared.timing_ms, inference=inference_ms, heatmap=_ms(start))
        timing["total"] = round(sum(timing.values()), 2)
        image = {"format": prepared.image.format, "width": prepared.image.width,
                 "height": prepared.image.height}
        return Prediction(self.model_info, image, findings, rendered, timing, prepared.sha256)

    def predict(self, data: bytes, heatmaps: str = "top", heatmap_format: str = "jpeg") -> Prediction:
        """All stages for one image (the CLI and tests; the API batches ``forward`` instead)."""
        spec = parse_heatmap_spec(heatmaps, self.bundle.manifest.codes)
        prepared = self.prepare(data)
        output, inference_ms = self.forward([prepared.tensor])
        return self.report(prepared, output.probabilities[0], output.cams[0], inference_ms,
                           spec, heatmap_format)

    def _heatmap_indices(self, spec: str | list[str], probabilities: np.ndarray) -> list[int]:
        labels = self.bundle.manifest.labels
        if spec == "none":
            return []
        if spec == "top":
            return [int(np.argmax(probabilities))]
        if spec == "positive":
            return [i for i, label in enumerate(labels) if probabilities[i] >= label.threshold]
        if spec == "all":
            return list(range(len(labels)))
        codes = self.bundle.manifest.codes
        return [codes.index(code) for code in spec]
