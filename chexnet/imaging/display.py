"""Sample values → the 8-bit display image (min-max to 0..255), a block of rows at a time.

A transform (the DICOM Modality and VOI LUTs) is applied in float64 to one block at a time, twice:
once to find the range, once to write bytes. No whole-image floating-point array is ever made, so a
36-megapixel 16-bit frame needs its own 72 MB plus the 36 MB result, not gigabytes of float64.

Samples of 8 or 16 bits, what radiographs hold, take a shorter way to the same bytes: the transform and
the scaling are computed once per sample value present (at most 65,536 values) into a table, and each
pixel is then looked up: about 2.5x less CPU for a 3.6-megapixel CR (75 -> 30 ms here; BENCHMARKS.md "Request
path per stage"), with the same float64 arithmetic per value, so the same display image.
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
    if flat.dtype.kind in "ui" and flat.dtype.itemsize <= 2 and flat.size:
        return _through_table(flat, transform, invert).reshape(values.shape)
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


def _through_table(flat: np.ndarray, transform: Transform | None, invert: bool) -> np.ndarray:
    """to_display_u8 for 8- and 16-bit integer samples: one table entry per value between the extremes,
    the range taken over the values present (a LUT need not be monotonic), blocks of offsets into it."""
    first, last = int(flat.min()), int(flat.max())
    present = np.ones(last - first + 1, dtype=bool)  # without a transform the extremes are first and last
    if transform:
        present[:] = False
        for _, offsets in _offsets(flat, first):
            present |= np.bincount(offsets, minlength=present.shape[0]) > 0
    levels = np.arange(first, last + 1, dtype=np.float64)
    mapped = (transform(levels) if transform else levels)[present]
    lo, hi = float(mapped.min()), float(mapped.max())
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise InvalidImage("The image holds values that are not finite numbers; export it again.")
    table = np.zeros(present.shape, dtype=np.uint8)
    if hi > lo:
        mapped -= lo
        mapped *= 255.0 / (hi - lo)
        table[present] = np.clip(np.rint(mapped), 0, 255)
    if invert:
        np.subtract(255, table, out=table)
    out = np.empty(flat.shape, dtype=np.uint8)
    for start, offsets in _offsets(flat, first):
        np.take(table, offsets, out=out[start : start + offsets.shape[0]])
    return out


def _offsets(flat: np.ndarray, first: int):
    """Each block's samples less the smallest, as indices into a table: unsigned samples keep their type
    (none is below the smallest), signed ones are widened to 4 bytes first."""
    for start in range(0, flat.shape[0], BLOCK):
        block = flat[start : start + BLOCK]
        yield start, (block - block.dtype.type(first)) if block.dtype.kind == "u" else block.astype(np.int32) - first
