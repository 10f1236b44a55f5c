"""Precisions measured where they run (DESIGN.md "CPU engines and precision"): fp16 autocast depends on the
GPU and its kernels, so a bundle carries calibration inputs and a bound for it instead of a measurement
(``startup_variants`` in the manifest, written by ``bundle build --precision fp16 --calibration DIR``).
The engine measures fp16 against fp32 on those inputs on its own device when it is made (at the service's
start-up) and refuses to exist beyond the bound, so fp16 is never served unmeasured. The service reports
the measurement in /models; a refusal is a /ready reason.
"""

from dataclasses import asdict, dataclass

import numpy as np

from chexnet.bundle import Bundle
from chexnet.bundle.calibration import agreement, load_inputs
from chexnet.engines.base import Engine
from chexnet.errors import EngineUnavailable

_BATCH = 8


@dataclass(frozen=True)
class Measurement:
    """A precision measured against fp32 on this device at start-up."""

    precision: str
    max_delta: float  # max |p - p_fp32| over the calibration images and classes
    max_delta_bound: float  # the bundle's bound
    flips: int  # threshold decisions that differ from fp32
    decisions: int  # images x classes compared
    images: int
    device: str  # what it was measured on, e.g. "NVIDIA H200"

    def as_dict(self) -> dict:
        return {**asdict(self), "measured": "start-up"}


def measure_at_start(bundle: Bundle, engine: Engine, reference: Engine, device_name: str) -> Measurement:
    """engine (the reduced precision) against reference (fp32, same device) on the bundle's calibration
    inputs for engine.precision; an EngineUnavailable naming the cause if it has none or is beyond the bound."""
    precision = engine.precision
    spec = bundle.manifest.startup_variants.get(precision)
    if spec is None:
        raise EngineUnavailable(
            f"Bundle {bundle.id} carries no calibration images for {precision}, so {precision} cannot be measured "
            f"on this {device_name}; rebuild it with 'bundle build --precision {precision} --calibration DIR', "
            "or set CHEXNET_PRECISION=fp32."
        )
    x = load_inputs(bundle, spec.inputs, spec.images)
    served = _probabilities(engine, x)
    delta, flips = agreement(_probabilities(reference, x), served, bundle.manifest.labels)
    if not delta <= spec.max_delta_bound:
        raise EngineUnavailable(
            f"{precision} on this {device_name} moves bundle {bundle.id}'s probabilities by up to {delta:.4f} on "
            f"its {len(x)} calibration images (limit {spec.max_delta_bound}), so it is not served; "
            "set CHEXNET_PRECISION=fp32."
        )
    return Measurement(precision, delta, spec.max_delta_bound, flips, int(served.size), len(x), device_name)


def _probabilities(engine: Engine, x: np.ndarray) -> np.ndarray:
    return np.concatenate([engine.infer(x[i : i + _BATCH]).probabilities for i in range(0, len(x), _BATCH)])
