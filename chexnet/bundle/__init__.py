"""Model bundles: a directory with manifest.json, weights.pt (PyTorch) and model.onnx (ONNX Runtime)."""

from chexnet.bundle.manifest import Bundle, Label, Manifest, load_bundle

__all__ = ["Bundle", "Label", "Manifest", "load_bundle"]
