"""The engine interface: one batched forward pass → probabilities and CAMs for every class.

CAM (DESIGN.md "Heatmaps"): at the post-ReLU feature map F the Grad-CAM of class c equals
ReLU(Σ_k w_ck F_k) / (h·w), so every class's map comes from the same forward pass. Engines keep no
per-request state: an instance may be called from many threads at once.
"""

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from chexnet.engines.startup_check import Measurement


@dataclass(frozen=True)
class EngineOutput:
    probabilities: np.ndarray  # float32 [B, C]
    cams: np.ndarray  # float32 [B, C, h, w], non-negative, not normalised


class Engine(ABC):
    name: str
    device: str
    precision: str
    # a precision measured on this device when the engine was made (chexnet.engines.startup_check), else None
    measurement: "Measurement | None" = None

    @abstractmethod
    def infer(self, batch: np.ndarray, lone: bool = False) -> EngineOutput:
        """batch: float32 [B, 3, S, S] preprocessed images. lone: no other prediction is in the service, so
        an engine made with lone_threads may spread this call over them (the same answers)."""

    def warmup(self, input_size: int) -> None:
        self.infer(np.zeros((1, 3, input_size, input_size), dtype=np.float32))


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-logits.astype(np.float64)))).astype(np.float32)


def cams_from_features(weight: np.ndarray, features: np.ndarray) -> np.ndarray:
    """weight [C, K], features [B, K, h, w] → ReLU(w·F)/(h·w), [B, C, h, w]."""
    h, w = features.shape[2:]
    cams = np.einsum("ck,bkhw->bchw", weight, features, optimize=True)
    return np.maximum(cams, 0.0, out=cams) / np.float32(h * w)
