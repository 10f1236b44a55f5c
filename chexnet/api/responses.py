"""REST response bodies built from a :class:`chexnet.predictor.Prediction` (heatmaps as base64)."""

import base64
import uuid

from chexnet.predictor import Prediction


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def prediction_body(prediction: Prediction, request_id: str) -> dict:
    """DESIGN.md "REST API": POST /predict."""
    body = {"request_id": request_id, **prediction.summary()}
    body["heatmaps"] = [
        {
            "code": h.label.code,
            "mime": h.rendered.mime,
            "width": h.rendered.width,
            "height": h.rendered.height,
            "data": _b64(h.rendered.data),
        }
        for h in prediction.heatmaps
    ]
    return body


def cxrnet_body(prediction: Prediction, categories: list[str], request_id: str) -> dict:
    """The source project's front-end contract: probabilities, one Grad-CAM JPEG, category names."""
    (overlay,) = prediction.heatmaps
    return {
        "answer": [f.probability for f in prediction.findings],
        "gradcam": _b64(overlay.rendered.data),
        "category": categories,
        "status": "OK",
        "demo": prediction.model.demo,
        "request_id": request_id,
    }


def multipart_related(parts: list[bytes], part_type: str = "application/dicom") -> tuple[bytes, str]:
    """A DICOMweb-style multipart/related body (RFC 2387, PS3.18 8.6.1.2) and its Content-Type."""
    boundary = uuid.uuid4().hex
    chunks = []
    for part in parts:
        chunks += [f"--{boundary}\r\nContent-Type: {part_type}\r\n\r\n".encode("ascii"), part, b"\r\n"]
    chunks.append(f"--{boundary}--\r\n".encode("ascii"))
    return b"".join(chunks), f'multipart/related; type="{part_type}"; boundary={boundary}'
