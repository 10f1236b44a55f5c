"""The peer the service's single-client latency is held against (issue 26): a minimal FastAPI + ONNX Runtime
server for the same bundle's model.onnx, with no licence check, no audit log, no heatmaps, no decode bounds.

POST /api/v1/predict takes the radiograph in the multipart field 'image' (as the service does) and answers
the probabilities as JSON; GET /api/v1/ready answers 200 once the model is loaded. Decoding and preprocessing
are the textbook ones (Pillow: grayscale, bilinear resize to the model's input, ImageNet normalisation).
bench/request_cost.py starts it as it starts the service: one process, on 127.0.0.1, with the service's
layout for this machine (threads per engine call, request threads), loaded by the same client.

    python bench/peer_fastapi.py --bundle models/cxr10 --port 18081 --engine-threads 1 --http-threads 8

FastAPI and uvicorn are bench-only dependencies (pyproject's bench extra): no image carries them.
"""

import argparse
import json
import sys
from contextlib import asynccontextmanager
from pathlib import Path

import anyio.to_thread
import numpy as np
import onnxruntime as ort
import uvicorn
from fastapi import FastAPI, UploadFile
from PIL import Image


def create_app(bundle: Path, engine_threads: int, http_threads: int) -> FastAPI:
    manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    size = manifest["input_size"]
    mean = np.asarray(manifest["mean"], np.float32).reshape(3, 1, 1)
    std = np.asarray(manifest["std"], np.float32).reshape(3, 1, 1)
    codes = [label["code"] for label in manifest["labels"]]
    options = ort.SessionOptions()
    options.intra_op_num_threads = engine_threads
    session = ort.InferenceSession(str(bundle / "model.onnx"), options, providers=["CPUExecutionProvider"])
    session.run(["logits"], {"input": np.zeros((1, 3, size, size), np.float32)})  # warm-up, as the service

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        # sync endpoints run on anyio's thread pool: as many threads as waitress has in the service
        anyio.to_thread.current_default_thread_limiter().total_tokens = http_threads
        yield

    app = FastAPI(lifespan=lifespan, openapi_url=None, docs_url=None, redoc_url=None)

    @app.get("/api/v1/ready")
    def ready() -> dict:
        return {"status": "ready"}

    @app.post("/api/v1/predict")
    def predict(image: UploadFile) -> dict:
        gray = Image.open(image.file).convert("L").resize((size, size), Image.Resampling.BILINEAR)
        x = (np.asarray(gray, np.float32) / 255.0 - mean) / std  # [3, S, S], the channel replicated
        (logits,) = session.run(["logits"], {"input": x[None].astype(np.float32)})
        probabilities = 1.0 / (1.0 + np.exp(-logits[0].astype(np.float64)))
        return {
            "findings": [
                {"code": c, "probability": round(float(p), 6)} for c, p in zip(codes, probabilities, strict=True)
            ]
        }

    return app


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18081)
    parser.add_argument("--engine-threads", type=int, required=True, help="ONNX Runtime threads per call")
    parser.add_argument("--http-threads", type=int, required=True, help="threads serving requests")
    args = parser.parse_args()
    app = create_app(args.bundle, args.engine_threads, args.http_threads)
    uvicorn.run(app, host=args.host, port=args.port, workers=1, access_log=False, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
