"""The bundle contract (DESIGN.md "Model bundle"): the manifest schema and verified loading."""

import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from chexnet.errors import BundleError
from chexnet.labels import Label

MANIFEST = "manifest.json"
WEIGHTS_PT = "weights.pt"
MODEL_ONNX = "model.onnx"
MODEL_INT8 = "model-int8.xml"  # OpenVINO IR of the NNCF-quantized graph, with its weights in model-int8.bin
CALIBRATION_INPUTS = "calibration.npz"  # the calibration images as the model sees them, for start-up checks
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BUILD_VARIANTS = ("bf16", "int8")  # OpenVINO graphs, measured against fp32 when the bundle is built
STARTUP_VARIANTS = ("fp16",)  # hardware-dependent: measured by the service on its own device at start-up
VARIANT_PRECISIONS = BUILD_VARIANTS + STARTUP_VARIANTS  # what 'bundle build --precision' accepts
DEFAULT_MAX_DELTA = 0.01  # the largest probability difference from fp32 a variant may have unless told
DEMO_NOTICE = "Demo model with untrained weights: its output is not a diagnosis."


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FileEntry(_Strict):
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int = Field(ge=0)


class Preprocessing(_Strict):
    """How the training images were prepared; the decoder and preprocess follow it exactly."""

    display: Literal["grayscale-8bit"] = "grayscale-8bit"
    channels: Literal["replicate-rgb"] = "replicate-rgb"
    resize: Literal["pil-bilinear-antialias"] = "pil-bilinear-antialias"
    scale: Literal["divide-255"] = "divide-255"


class Variant(_Strict):
    """A reduced-precision variant, measured against fp32 on calibration images when the bundle was
    built (chexnet.bundle.variants); the service serves only variants recorded here."""

    engine: Literal["openvino"] = "openvino"
    graph: str  # the file the engine compiles (model.onnx for bf16, model-int8.xml for int8)
    max_delta: float = Field(ge=0)  # max |p_variant - p_fp32| over the calibration images and classes
    max_delta_bound: float = Field(gt=0)  # the bound the build held it to
    flips: int = Field(ge=0)  # threshold decisions that differ from fp32
    decisions: int = Field(ge=1)  # images x classes compared
    images: int = Field(ge=1)
    cpu: str  # the CPU the build measured on


class StartupVariant(_Strict):
    """A precision whose error depends on the hardware it runs on (fp16 autocast: the site's GPU and its
    kernels), so the bundle carries what to measure it on instead of a measurement: the calibration images as
    the model sees them (``inputs``: uint8 [N, S, S], each the display image resized to the input size) and
    the bound. The service measures it against fp32 on its own device at start-up and serves it only within
    the bound (chexnet.engines.startup_check)."""

    engine: Literal["torch"] = "torch"
    inputs: str = CALIBRATION_INPUTS
    images: int = Field(ge=1)
    max_delta_bound: float = Field(gt=0)


class Manifest(_Strict):
    schema_version: Literal[1] = 1
    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    version: str = Field(min_length=1, max_length=64)
    arch: Literal["densenet121"] = "densenet121"
    input_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    preprocessing: Preprocessing = Preprocessing()
    labels: list[Label] = Field(min_length=1)
    files: dict[str, FileEntry]
    demo: bool
    created: str
    description: str = ""
    # Literal[<tuple>]: pydantic validates the keys against the tuple's items; mypy reads the keys as Any.
    variants: dict[Literal[BUILD_VARIANTS], Variant] = {}  # type: ignore[valid-type]
    startup_variants: dict[Literal[STARTUP_VARIANTS], StartupVariant] = {}  # type: ignore[valid-type]

    @field_validator("input_size")
    @classmethod
    def _size(cls, v: int) -> int:
        if v % 32 or not 224 <= v <= 1024:
            raise ValueError("input_size must be a multiple of 32 between 224 and 1024 (224 or 512 usual)")
        return v

    @field_validator("std")
    @classmethod
    def _std(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if min(v) <= 0:
            raise ValueError("every std value must be positive")
        return v

    @model_validator(mode="after")
    def _unique_codes(self) -> "Manifest":
        codes = [label.code for label in self.labels]
        duplicates = sorted({c for c in codes if codes.count(c) > 1})
        if duplicates:
            raise ValueError(f"label codes must be unique; repeated: {', '.join(duplicates)}")
        return self

    @model_validator(mode="after")
    def _variant_files(self) -> "Manifest":
        for precision, variant in self.variants.items():
            needed = [variant.graph] + (
                [variant.graph.removesuffix(".xml") + ".bin"] if variant.graph.endswith(".xml") else []
            )
            missing = [name for name in needed if name not in self.files]
            if missing:
                raise ValueError(f"the {precision} variant's {', '.join(missing)} must be listed in files")
        for precision, startup in self.startup_variants.items():
            if startup.inputs not in self.files:
                raise ValueError(f"the {precision} variant's {startup.inputs} must be listed in files")
        return self

    @property
    def codes(self) -> list[str]:
        return [label.code for label in self.labels]


class Bundle:
    """A loaded, verified bundle directory."""

    def __init__(self, path: Path, manifest: Manifest):
        self.path = path
        self.manifest = manifest

    @property
    def id(self) -> str:
        return self.manifest.id

    def file(self, name: str) -> Path:
        if name not in self.manifest.files:
            raise BundleError(f"Bundle {self.id} at {self.path} has no {name}; rebuild it with 'bundle build'.")
        return self.path / name

    def check_width(self, width: int, source: str) -> None:
        """Refuse a model whose classifier width differs from the manifest's label count."""
        if width != len(self.manifest.labels):
            raise BundleError(
                f"Bundle {self.id}: {source} has {width} outputs but manifest.json lists "
                f"{len(self.manifest.labels)} labels; the bundle is inconsistent."
            )


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_bundle(path: str | Path) -> Bundle:
    """Read and validate manifest.json and verify the sha256 of every listed file."""
    path = Path(path)
    manifest_path = path / MANIFEST
    try:
        raw = json.loads(manifest_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"No {MANIFEST} in {path}; is this a model bundle directory?") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{manifest_path} is not readable JSON ({exc}).") from None
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "manifest"
        raise BundleError(f"{manifest_path}: field '{where}' is invalid: {first['msg']}.") from None
    for name, entry in manifest.files.items():
        file_path = path / name
        if not file_path.is_file():
            raise BundleError(f"Bundle {manifest.id}: {name} is listed in the manifest but missing from {path}.")
        if sha256_file(file_path) != entry.sha256:
            raise BundleError(
                f"Bundle {manifest.id}: {name} does not match its sha256 in manifest.json; "
                "the file is corrupt or was replaced, copy the bundle again."
            )
    return Bundle(path, manifest)
