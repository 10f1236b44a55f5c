"""Render a CAM as a colour overlay on the radiograph (JPEG or PNG, long side bounded)."""

from dataclasses import dataclass

import cv2
import numpy as np

FORMATS = {"jpeg": (".jpg", "image/jpeg"), "png": (".png", "image/png")}
DEFAULT_LONG_SIDE = 512
OVERLAY_ALPHA = 0.4
JPEG_QUALITY = 90


@dataclass(frozen=True)
class RenderedHeatmap:
    rgb: np.ndarray  # uint8 H×W×3, the overlay itself (DICOM results store it as it is)
    data: bytes  # the overlay encoded as ``mime``; empty when no format was asked for
    mime: str
    width: int
    height: int


def normalise(cam: np.ndarray) -> np.ndarray:
    """Min-max to [0, 1]; a map without any positive evidence stays all zeros."""
    lo, hi = float(cam.min()), float(cam.max())
    if hi - lo <= 1e-12:
        return np.zeros_like(cam, dtype=np.float32)
    return ((cam - lo) / (hi - lo)).astype(np.float32)


def overlay_size(width: int, height: int, long_side: int = DEFAULT_LONG_SIDE) -> tuple[int, int]:
    scale = min(1.0, long_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def render(
    pixels: np.ndarray, cam: np.ndarray, fmt: str | None = "jpeg", long_side: int = DEFAULT_LONG_SIDE
) -> RenderedHeatmap:
    """pixels: uint8 H×W radiograph; cam: h×w map over the whole (squashed) model input; fmt: a key of
    FORMATS (checked where the options are parsed, chexnet.options), or None for the pixels only."""
    width, height = overlay_size(pixels.shape[1], pixels.shape[0], long_side)
    base = cv2.resize(pixels, (width, height), interpolation=cv2.INTER_AREA)
    heat = cv2.resize(normalise(cam), (width, height), interpolation=cv2.INTER_LINEAR)
    colour = cv2.applyColorMap(np.rint(heat * 255).astype(np.uint8), cv2.COLORMAP_JET)
    blended = cv2.addWeighted(cv2.cvtColor(base, cv2.COLOR_GRAY2BGR), 1 - OVERLAY_ALPHA, colour, OVERLAY_ALPHA, 0)
    rgb = cv2.cvtColor(blended, cv2.COLOR_BGR2RGB)
    if fmt is None:
        return RenderedHeatmap(rgb, b"", "", width, height)
    ext, mime = FORMATS[fmt]
    params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY] if fmt == "jpeg" else []
    ok, encoded = cv2.imencode(ext, blended, params)
    if not ok:
        raise RuntimeError(f"OpenCV could not encode a {fmt} overlay")
    return RenderedHeatmap(rgb, encoded.tobytes(), mime, width, height)
