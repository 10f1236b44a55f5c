"""PyTorch engine (the GPU image; also runs on CPU): runs weights.pt on cpu or cuda.

On CUDA the model runs channels-last; CAMs are computed on the device so only [B, C, h, w] maps (not the
1024-channel feature map) cross to the host. fp16 (autocast) is opt-in and exists only once measured against
fp32 on this device on the bundle's calibration inputs, within the bundle's bound (chexnet.engines.startup_check).
It is meant for a GPU: with the device left to ``auto`` and no GPU visible it is refused; asked for on the CPU
explicitly (CHEXNET_DEVICE=cpu) it is measured and served there alike, slower than fp32 on most CPUs.
"""

import copy
import logging
import platform

import numpy as np
import torch

from chexnet.bundle import Bundle
from chexnet.bundle.manifest import WEIGHTS_PT
from chexnet.engines.base import Engine, EngineOutput
from chexnet.engines.startup_check import measure_at_start
from chexnet.errors import BundleError, EngineUnavailable
from chexnet.model import CheXNet

log = logging.getLogger(__name__)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise EngineUnavailable(
            "CUDA was requested but no CUDA device is visible (check the NVIDIA driver and that the "
            "container was started with GPU access), or set the device to 'cpu' or 'auto'."
        )
    if device not in ("cpu", "cuda"):
        raise EngineUnavailable(f"Unknown device '{device}'; use cpu, cuda or auto.")
    return torch.device(device)


def load_model(bundle: Bundle) -> CheXNet:
    try:
        state = torch.load(bundle.file(WEIGHTS_PT), map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        raise BundleError(f"Bundle {bundle.id}: {WEIGHTS_PT} cannot be read ({exc}).") from None
    width = state.get("classifier.weight", torch.empty(0, 0)).shape[0]
    bundle.check_width(width, WEIGHTS_PT)
    model = CheXNet(width)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise BundleError(f"Bundle {bundle.id}: {WEIGHTS_PT} is not a densenet121 state_dict ({exc}).") from None
    return model.eval()


class TorchEngine(Engine):
    name = "torch"

    def __init__(
        self,
        bundle: Bundle,
        device: str = "auto",
        precision: str = "fp32",
        threads: int | None = None,
        concurrency: int = 1,
        lone_threads: int = 0,
    ):
        """threads, concurrency, lone_threads: unused; PyTorch sizes its own pool, and one module serves
        concurrent calls."""
        self.torch_device = resolve_device(device)
        self.device = self.torch_device.type
        if precision == "fp16" and device == "auto" and self.device != "cuda":
            raise EngineUnavailable(
                "CHEXNET_PRECISION=fp16 needs a CUDA device and none is visible (check the NVIDIA driver and that "
                "the container was started with GPU access); set CHEXNET_PRECISION=fp32, or CHEXNET_DEVICE=cpu to "
                "measure and run fp16 on the CPU."
            )
        self.precision = precision
        self.fp16 = precision == "fp16"
        model = load_model(bundle).to(self.torch_device)
        if self.device == "cuda":
            # fp32 means IEEE fp32: cuDNN's default on Ampere and later GPUs is TF32 convolutions (a 10-bit
            # mantissa), unmeasured against the 1e-4 the engines must agree within (bench/gpu_check.py
            # measures both). Process-wide flags; the engine is the process's only user of torch.
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
            model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch's stubs lack it
            self.device_name = torch.cuda.get_device_name(self.torch_device)
            log.info("torch engine on %s", self.device_name)
        else:
            self.device_name = _cpu_name()
        self.model = model
        self.weight = model.classifier.weight.detach()
        if self.fp16:
            self.measurement = measure_at_start(bundle, self, self.reference(), self.device_name)
            log.info("fp16 measured against fp32 on %s: %s", self.device_name, self.measurement.as_dict())

    def reference(self) -> "TorchEngine":
        """This engine in fp32: the same module on the same device, what fp16 is measured against."""
        twin = copy.copy(self)
        twin.precision, twin.fp16, twin.measurement = "fp32", False, None
        return twin

    @torch.inference_mode()
    def infer(self, batch: np.ndarray, lone: bool = False) -> EngineOutput:
        x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.torch_device)
        if self.device == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device, dtype=torch.float16, enabled=self.fp16):
            logits, features = self.model(x)
        logits, features = logits.float(), features.float()
        h, w = features.shape[2:]
        cams = torch.relu(torch.einsum("ck,bkhw->bchw", self.weight, features)) / (h * w)
        return EngineOutput(torch.sigmoid(logits).float().cpu().numpy(), cams.float().cpu().numpy())


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "CPU"
