"""Calibration images: read once through the service's own decode and preprocessing, kept in the bundle
as the model sees them (for the precisions measured at start-up), and the one measure of how far a
reduced precision moves probabilities from fp32 (DESIGN.md "CPU engines and precision").

The kept inputs (``calibration.npz``) are the display images resized to the input size, uint8 [N, S, S]:
the model's tensor is exactly ``preprocess`` of each (a resize to its own size is a copy), at a twelfth of
the tensor's bytes. They hold pixels only, no DICOM header.
"""

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from chexnet.bundle.manifest import Bundle, Label
from chexnet.errors import BundleError, ChexnetError, UnsupportedMediaType
from chexnet.imaging import decode_image, preprocess

log = logging.getLogger(__name__)


def calibration_tensors(directory: Path, input_size: int, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Every PNG, JPEG and DICOM under directory as model inputs [N, 3, S, S]; other files are skipped."""
    if not directory.is_dir():
        raise BundleError(f"--calibration {directory} is not a directory of images.")
    tensors, skipped = [], 0
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        try:
            image = decode_image(path.read_bytes())
        except UnsupportedMediaType:
            skipped += 1
            continue
        except ChexnetError as exc:
            raise BundleError(
                f"Calibration image {path} cannot be read ({exc.message}); remove it or fix it."
            ) from None
        tensors.append(preprocess(image.pixels, input_size, mean, std))
    if not tensors:
        raise BundleError(f"--calibration {directory} holds no PNG, JPEG or DICOM image.")
    log.info("calibration: %d images from %s (%d other files skipped)", len(tensors), directory, skipped)
    return np.stack(tensors)


def save_inputs(path: Path, tensors: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> None:
    """Keep model inputs [N, 3, S, S] as the uint8 images they came from; checked to give them back exactly."""
    images = np.rint((tensors[:, 0] * np.float32(std[0]) + np.float32(mean[0])) * 255).clip(0, 255).astype(np.uint8)
    if not np.array_equal(_tensors(images, mean, std), tensors):
        raise BundleError("The calibration inputs do not survive being kept as 8-bit images; bundle not written.")
    np.savez_compressed(path, images=images)


def load_inputs(bundle: Bundle, name: str, images: int) -> np.ndarray:
    """The kept calibration inputs of a bundle as model inputs [N, 3, S, S], or a BundleError naming the fault."""
    m = bundle.manifest
    try:
        with np.load(bundle.file(name), allow_pickle=False) as archive:
            kept = archive["images"]
    except BundleError:
        raise
    except (OSError, KeyError, ValueError) as exc:
        raise BundleError(f"Bundle {bundle.id}: {name} is not a readable calibration set ({exc}).") from None
    if kept.dtype != np.uint8 or kept.shape != (images, m.input_size, m.input_size):
        raise BundleError(
            f"Bundle {bundle.id}: {name} holds {kept.dtype} {tuple(kept.shape)}, not the "
            f"{images} uint8 {m.input_size}x{m.input_size} images the manifest lists."
        )
    return _tensors(kept, m.mean, m.std)


def _tensors(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    size = images.shape[-1]
    return np.stack([preprocess(image, size, mean, std) for image in images])


def agreement(reference: np.ndarray, probabilities: np.ndarray, labels: Sequence[Label]) -> tuple[float, int]:
    """(largest |p - p_fp32| over every image and class, threshold decisions that differ from fp32)."""
    thresholds = np.asarray([label.threshold for label in labels], dtype=np.float64)
    delta = float(np.abs(np.asarray(probabilities, np.float64) - np.asarray(reference, np.float64)).max())
    flips = int(((probabilities >= thresholds) != (reference >= thresholds)).sum())
    return delta, flips
