"""CheXNet on-premise: chest X-ray findings and one-pass Grad-CAM heatmaps."""

__version__ = "0.1.0"
