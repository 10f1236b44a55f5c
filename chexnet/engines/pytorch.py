"""PyTorch engine (the GPU image; also runs on CPU): runs weights.pt on cpu or cuda.

On CUDA the model runs channels-last (and, opted in, under fp16 autocast); CAMs are computed on the device so only
[B, C, h, w] maps (not the 1024-channel feature map) cross to the host.
"""

import logging

import numpy as np
import torch

from chexnet.bundle import Bundle
from chexnet.bundle.manifest import WEIGHTS_PT
from chexnet.engines.base import Engine, EngineOutput
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

    def __init__(self, bundle: Bundle, device: str = "auto", precision: str = "fp32", threads: int | None = None,
                 concurrency: int = 1):
        """threads, concurrency: unused; PyTorch sizes its own pool, and one module serves concurrent calls."""
        self.torch_device = resolve_device(device)
        self.device = self.torch_device.type
        if precision == "fp16" and self.device != "cuda":
            raise EngineUnavailable("fp16 precision needs a CUDA device; use fp32 on the CPU.")
        self.precision = precision
        self.fp16 = precision == "fp16"
        model = load_model(bundle).to(self.torch_device)
        if self.device == "cuda":
            model = model.to(memory_format=torch.channels_last)
            log.info("torch engine on %s", torch.cuda.get_device_name(self.torch_device))
        self.model = model
        self.weight = model.classifier.weight.detach()

    @torch.inference_mode()
    def infer(self, batch: np.ndarray) -> EngineOutput:
        x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.torch_device)
        if self.device == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.float16, enabled=self.fp16):
            logits, features = self.model(x)
        logits, features = logits.float(), features.float()
        h, w = features.shape[2:]
        cams = torch.relu(torch.einsum("ck,bkhw->bchw", self.weight, features)) / (h * w)
        return EngineOutput(
            torch.sigmoid(logits).float().cpu().numpy(), cams.float().cpu().numpy()
        )
