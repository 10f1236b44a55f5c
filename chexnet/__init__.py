"""CheXNet on-premise: chest X-ray findings and one-pass Grad-CAM heatmaps.

Importing it (or any module in it) changes nothing outside it; :func:`configure` sets up the libraries it
drives (:mod:`chexnet.runtime`), and every entry point calls it before reading DICOM."""

from chexnet.runtime import configure

__version__ = "0.1.0"
__all__ = ["configure"]
