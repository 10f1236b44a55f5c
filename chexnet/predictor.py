"""The one prediction path shared by the CLI, the REST API and the DICOM node:

    predictor.predict(read, options, caller) → Prediction

prepare (read → decode → preprocess, inside a decode slot, so decoding memory is bounded) → forward (the
step given at construction: a direct engine call, or the service's micro-batcher) → report (findings and
heatmaps) → observers (the service's metrics and audit log). Formatting for a transport lives with the
transport.
"""

import hashlib
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field

import numpy as np
import pydicom

from chexnet import heatmap
from chexnet.bundle import Bundle
from chexnet.bundle.manifest import DEMO_NOTICE
from chexnet.eligibility import warnings_for
from chexnet.engines import Engine, EngineOutput
from chexnet.errors import InvalidOption
from chexnet.imaging import DecodedImage, DecodeLimits, DecodeSize, decode_image, preprocess
from chexnet.imaging.gate import DecodeGate
from chexnet.labels import Label
from chexnet.options import HEATMAP_MODES, PredictOptions
from chexnet.triage import Priority, Triage


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000.0, 2)


class Stopwatch:
    """One stage's wall time and the CPU time of the thread that runs it, in milliseconds, from when it was
    made. Under load a stage's wall time also counts the waits for a core or the GIL, which cost nothing; the
    CPU time is what the stage itself costs (bench/request_cost.py adds these up per request)."""

    __slots__ = ("_wall", "_cpu")

    def __init__(self) -> None:
        self._wall = time.perf_counter()
        self._cpu = time.thread_time()

    def wall_ms(self) -> float:
        return _ms(self._wall)

    def cpu_ms(self) -> float:
        return round((time.thread_time() - self._cpu) * 1000.0, 3)


@dataclass(frozen=True)
class Caller:
    """Who asked (for the audit log): the request id and the licence token's subject and customer."""

    request_id: str | None = None
    sub: str | None = None
    customer: str | None = None


@dataclass
class PreparedImage:
    image: DecodedImage
    tensor: np.ndarray
    sha256: str
    timing_ms: dict = field(default_factory=dict)
    cpu_ms: dict = field(default_factory=dict)  # the serving thread's CPU milliseconds per stage (Stopwatch)


@dataclass(frozen=True)
class Forwarded:
    """One image's row of an engine call."""

    probabilities: np.ndarray  # [C]
    cams: np.ndarray  # [C, h, w]
    inference_ms: float


@dataclass(frozen=True)
class ModelInfo:
    """Which model answered, on what: the identity every result carries (REST, DICOM, audit)."""

    id: str
    version: str
    demo: bool
    engine: str
    device: str
    precision: str
    thresholds: str = "bundle"  # which thresholds decide: the bundle's, or site@<hash12> (chexnet.site_thresholds)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Finding:
    """One label's result: the label (code, names, threshold), its probability and whether it is positive."""

    label: Label
    probability: float
    positive: bool

    @property
    def code(self) -> str:
        return self.label.code

    def as_dict(self) -> dict:
        return {
            "code": self.label.code,
            "name": self.label.name.en,
            "name_zh": self.label.name.zh,
            "probability": self.probability,
            "threshold": self.label.threshold,
            "positive": self.positive,
        }


@dataclass(frozen=True)
class Heatmap:
    """The class activation map of one finding, rendered for a transport."""

    label: Label
    rendered: heatmap.RenderedHeatmap
    cam: np.ndarray  # h×w float32 in [0, 1] (heatmap.normalise) over the whole model input: DICOM Parametric Maps


@dataclass
class Prediction:
    model: ModelInfo
    image: dict
    findings: list[Finding]
    heatmaps: list[Heatmap]
    timing_ms: dict
    input_sha256: str
    warnings: list[str]  # chexnet.eligibility codes
    source: pydicom.Dataset | None = None  # a DICOM input's identifying header: for DICOM results only
    priority: Priority = Priority()  # the study-level triage priority (chexnet.triage), computed in report()
    cpu_ms: dict = field(default_factory=dict)  # the serving thread's CPU milliseconds per stage: metrics only

    def summary(self) -> dict:
        """Everything but the heatmap bytes and the source header, as JSON-ready data (each transport
        adds those its own way)."""
        body = {
            "model": self.model.as_dict(),
            "image": self.image,
            "findings": [f.as_dict() for f in self.findings],
            "warnings": self.warnings,
            "priority": self.priority.as_dict(),
            "timing_ms": self.timing_ms,
        }
        if self.model.demo:
            body["notice"] = DEMO_NOTICE
        return body


Observer = Callable[[Prediction, Caller], None]


ForwardOne = Callable[[np.ndarray], Forwarded]


def batch_forward(engine: Engine) -> Callable[[Sequence[np.ndarray], bool], tuple[EngineOutput, float]]:
    """One engine call for a whole batch of preprocessed images: returns (EngineOutput, milliseconds). lone:
    no other prediction is in the service (Engine.infer)."""

    def forward(tensors: Sequence[np.ndarray], lone: bool = False):
        start = time.perf_counter()
        output = engine.infer(np.stack(tensors).astype(np.float32, copy=False), lone)
        return output, _ms(start)

    return forward


def direct_forward(engine: Engine) -> ForwardOne:
    """Each image's forward step as its own engine call (the CLI; the service batches instead)."""
    forward = batch_forward(engine)

    def forward_one(tensor: np.ndarray) -> Forwarded:
        output, ms = forward([tensor], False)  # the CLI's engine already has every core
        return Forwarded(output.probabilities[0], output.cams[0], ms)

    return forward_one


class Predictor:
    """One bundle on one engine, its forward step and its observers, all given at construction. Holds no
    per-request state; safe to share between threads."""

    def __init__(
        self,
        bundle: Bundle,
        engine: Engine,
        limits: DecodeLimits = DecodeLimits(),
        gate: DecodeGate | None = None,
        forward_one: ForwardOne | None = None,
        observers: Sequence[Observer] = (),
        thresholds: str = "bundle",
        triage: Triage = Triage(),
    ):
        self.bundle = bundle
        self.engine = engine
        self.limits = limits
        self.gate = gate
        self.forward_one = forward_one or direct_forward(engine)
        self.observers = tuple(observers)
        self.triage = triage  # the priority rules that apply to this model
        m = bundle.manifest
        # Decode no larger than the model input and the heatmap overlay need (imaging.reduced).
        self.decode_size = DecodeSize(m.input_size, heatmap.DEFAULT_LONG_SIDE)
        self.model_info = ModelInfo(m.id, m.version, m.demo, engine.name, engine.device, engine.precision, thresholds)

    def predict(
        self, read: Callable[[], bytes], options: PredictOptions = PredictOptions(), caller: Caller = Caller()
    ) -> Prediction:
        """read: returns the file's bytes; it runs inside a decode slot, so waiting uploads stay unread."""
        selected = self.heatmap_selector(options.heatmaps)
        if options.output == "fhir":  # a FHIR report carries no heatmaps: none are rendered
            selected = self.heatmap_selector("none")
        with self.gate.slot() if self.gate else nullcontext():
            prepared = self.prepare(read())
        if options.output == "dicom" and prepared.image.source is None:
            raise InvalidOption(
                f"output=dicom needs a DICOM input and this file is {prepared.image.format.upper()}; "
                "send the DICOM from the PACS, or ask for JSON."
            )
        row = self.forward_one(prepared.tensor)
        heatmap_format = None if options.output == "dicom" else options.heatmap_format
        prediction = self.report(prepared, row, selected, heatmap_format)
        for observe in self.observers:
            observe(prediction, caller)
        return prediction

    def prepare(self, data: bytes) -> PreparedImage:
        clock = Stopwatch()
        image = decode_image(data, self.limits, self.decode_size)
        timing, cpu = {"decode": clock.wall_ms()}, {"decode": clock.cpu_ms()}
        clock = Stopwatch()
        m = self.bundle.manifest
        tensor = preprocess(image.pixels, m.input_size, m.mean, m.std)
        sha256 = hashlib.sha256(data).hexdigest()
        timing["preprocess"], cpu["preprocess"] = clock.wall_ms(), clock.cpu_ms()
        return PreparedImage(image, tensor, sha256, timing, cpu)

    def report(
        self,
        prepared: PreparedImage,
        row: Forwarded,
        selected: Callable[[np.ndarray], list[int]],
        heatmap_format: str | None,
    ) -> Prediction:
        labels = self.bundle.manifest.labels
        findings = [
            Finding(label, round(float(p), 6), bool(p >= label.threshold))
            for label, p in zip(labels, row.probabilities, strict=True)
        ]
        clock = Stopwatch()
        rendered: list[Heatmap] = []
        if chosen := selected(row.probabilities):
            base = heatmap.background(prepared.image.pixels)  # shrunk once, shared by every heatmap
            rendered = [
                Heatmap(labels[i], heatmap.render(base, row.cams[i], heatmap_format), heatmap.normalise(row.cams[i]))
                for i in chosen
            ]
        timing = dict(prepared.timing_ms, inference=row.inference_ms, heatmap=clock.wall_ms())
        cpu = dict(prepared.cpu_ms, heatmap=clock.cpu_ms())
        timing["total"] = round(sum(timing.values()), 2)
        image = {"format": prepared.image.format, "width": prepared.image.width, "height": prepared.image.height}
        source = prepared.image.source
        priority = self.triage.evaluate({f.code: f.probability for f in findings}, self.model_info.demo)
        return Prediction(
            self.model_info,
            image,
            findings,
            rendered,
            timing,
            prepared.sha256,
            warnings_for(source),
            source,
            priority,
            cpu_ms=cpu,
        )

    def heatmap_selector(self, spec: str | tuple[str, ...]) -> Callable[[np.ndarray], list[int]]:
        """Check the heatmap choice against this model before any work; returns the selector."""
        labels, codes = self.bundle.manifest.labels, self.bundle.manifest.codes
        if spec == "none":
            return lambda p: []
        if spec == "top":
            return lambda p: [int(np.argmax(p))]
        if spec == "positive":
            return lambda p: [i for i, label in enumerate(labels) if p[i] >= label.threshold]
        if spec == "all":
            return lambda p: list(range(len(labels)))
        unknown = [c for c in spec if c not in codes]
        if unknown:
            raise InvalidOption(
                f"heatmaps must be one of {', '.join(HEATMAP_MODES)} or label codes of model {self.bundle.id}; "
                f"unknown: {', '.join(unknown)}."
            )
        indices = [codes.index(code) for code in spec]
        return lambda p: indices
