"""Sample values → the 8-bit display image (min-max to 0..255), a block of rows at a time.

A transform (the DICOM Modality and VOI LUTs) is applied in float64 to one block at a time, twice:
once to find the range, once to write bytes. No whole-image floating-point array is ever made, so a
36-megapixel 16-bit frame needs its own 72 MB plus the 36 MB result, not gigabytes of float64.
"""

from collections.abc import Callable

import numpy as np

from chexnet.errors import InvalidImage

BLOCK = 1 << 20  # samples per block: 8 MB of float64 at a time
Transform = Callable[[np.ndarray], np.ndarray]


def _blocks(flat: np.ndarray, transform: Transform | None):
    for start in range(0, flat.shape[0], BLOCK):
        values = flat[start : start + BLOCK].astype(np.float64)
        yield start, (transform(values) if transform else values)


def to_display_u8(values: np.ndarray, transform: Transform | None = None, invert: bool = False) -> np.ndarray:
    """H×W samples (any numeric dtype) → uint8 H×W; a constant image becomes all zeros."""
    flat = np.ascontiguousarray(values).reshape(-1)
    lo, hi = np.inf, -np.inf
    for _, block in _blocks(flat, transform):
        lo, hi = min(lo, float(block.min())), max(hi, float(block.max()))
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise InvalidImage("The image holds values that are not finite numbers; export it again.")
    out = np.zeros(flat.shape, dtype=np.uint8)
    if hi > lo:
        scale = 255.0 / (hi - lo)
        for start, block in _blocks(flat, transform):
            block -= lo
            block *= scale
            out[start : start + block.shape[0]] = np.clip(np.rint(block), 0, 255)
    if invert:
        np.subtract(255, out, out=out)
    return out.reshape(values.shape)
