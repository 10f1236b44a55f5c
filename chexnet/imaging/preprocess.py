"""The model input, bit-for-bit the torchvision reference: RGB replication → Resize((S, S))
bilinear (PIL, antialiased) → ToTensor → Normalize(mean, std).

The three replicated channels are identical, so the resize runs once on the grayscale image;
Pillow's 8-bit resampler treats each channel alike, giving the same bytes as resizing the RGB image.
"""

from collections.abc import Sequence

import numpy as np
from PIL import Image


def preprocess(pixels: np.ndarray, size: int, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 H×W display image → float32 3×S×S normalised tensor (as a NumPy array)."""
    resized = Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8)).resize(
        (size, size), Image.Resampling.BILINEAR
    )
    x = np.asarray(resized, dtype=np.float32) / np.float32(255.0)
    mean_ = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
    std_ = np.asarray(std, dtype=np.float32).reshape(3, 1, 1)
    return (x[None, :, :] - mean_) / std_
