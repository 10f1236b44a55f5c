"""bench/request_cost.py's pure parts (issue 26): py-spy's raw stacks folded into the request's stages, each
thread's CPU time split by its samples, the machine's limit, and the service's stage timers read from two
scrapes of /metrics. The measuring itself (a server under load, py-spy attached) runs in make bench only."""

import sys
from pathlib import Path

import pytest
from prometheus_client import generate_latest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import request_cost  # noqa: E402
from chexnet.service.observability import Metrics  # noqa: E402
from request_cost import NATIVE, WAITING, apportion, fold, limit, stage_of, stage_timers  # noqa: E402

SITE = "/srv/.venv/lib/python3.11/site-packages"
APP = "/srv/app"
REQUEST = [  # a waitress thread serving POST /api/v1/predict, down to the route
    "Thread._bootstrap (/usr/lib/python3.11/threading.py:1002)",
    f"ThreadedTaskDispatcher.handler_thread ({SITE}/waitress/task.py:83)",
    f"WSGITask.execute ({SITE}/waitress/task.py:435)",
    f"Flask.wsgi_app ({SITE}/flask/app.py:1511)",
    f"token_required.<locals>.wrapper ({APP}/licensing/flask_auth.py:54)",
    f"predict ({APP}/chexnet/api/routes.py:142)",
]
PREDICT = REQUEST + [
    f"Service.predict ({APP}/chexnet/service/service.py:273)",
    f"Predictor.predict ({APP}/chexnet/predictor.py:222)",
]
BATCHER = [
    "Thread._bootstrap (/usr/lib/python3.11/threading.py:1002)",
    f"MicroBatcher._run ({APP}/chexnet/batching.py:104)",
    f"batch_forward.<locals>.forward ({APP}/chexnet/predictor.py:170)",
]


@pytest.mark.parametrize(
    "frames, stage",
    [
        (
            PREDICT
            + [
                f"Predictor.prepare ({APP}/chexnet/predictor.py:240)",
                f"decode_image ({APP}/chexnet/imaging/decode.py:60)",
                f"ImageFile.load ({SITE}/PIL/ImageFile.py:425)",
            ],
            "decode",
        ),
        (PREDICT + [f"Predictor.prepare ({APP}/chexnet/predictor.py:243)"], "preprocess"),  # the upload's sha256
        (
            BATCHER
            + [
                f"OnnxRuntimeEngine.infer ({APP}/chexnet/engines/onnx_runtime.py:38)",
                f"Session.run ({SITE}/onnxruntime/capi/onnxruntime_inference_collection.py:395)",
            ],
            "forward",
        ),
        (
            BATCHER
            + [
                f"OnnxRuntimeEngine.infer ({APP}/chexnet/engines/onnx_runtime.py:39)",
                f"cams_from_features ({APP}/chexnet/engines/base.py:46)",
                f"einsum ({SITE}/numpy/_core/einsumfunc.py:1400)",
            ],
            "CAM",
        ),
        (
            PREDICT + [f"Predictor.report ({APP}/chexnet/predictor.py:263)", f"render ({APP}/chexnet/heatmap.py:51)"],
            "overlay",
        ),
        (
            PREDICT
            + [
                f"Service._audit ({APP}/chexnet/service/service.py:343)",
                f"AuditLog.write ({APP}/chexnet/service/audit.py:37)",
                "dumps (/usr/lib/python3.11/json/__init__.py:238)",  # the audit's own JSON is the audit's
            ],
            "audit",
        ),
        (
            REQUEST
            + [
                f"jsonify ({SITE}/flask/json/__init__.py:170)",
                f"DefaultJSONProvider.dumps ({SITE}/flask/json/provider.py:179)",
                "JSONEncoder.iterencode (/usr/lib/python3.11/json/encoder.py:258)",
            ],
            "JSON/base64",
        ),
        (REQUEST + [f"_b64 ({APP}/chexnet/api/responses.py:10)"], "JSON/base64"),
        (
            REQUEST
            + [
                f"_option ({APP}/chexnet/api/routes.py:80)",
                f"Request.form ({SITE}/werkzeug/wrappers/request.py:450)",
                f"MultipartDecoder._parse_data ({SITE}/werkzeug/sansio/multipart.py:256)",
            ],
            "receive/parse",
        ),
        (REQUEST[:2] + [f"HTTPChannel.received ({SITE}/waitress/channel.py:200)"], "receive/parse"),
        (REQUEST[:5] + [f"TokenVerifier.verify ({APP}/licensing/tokens.py:90)"], "other"),
        (REQUEST[:3] + [f"dispatcher.send ({SITE}/waitress/wasyncore.py:392)"], "HTTP"),
        (PREDICT + [f"Stopwatch.cpu_ms ({APP}/chexnet/predictor.py:52)"], WAITING),
        (BATCHER[:2] + ["Condition.wait (/usr/lib/python3.11/threading.py:331)"], WAITING),
        ([], "HTTP"),
    ],
)
def test_a_sample_belongs_to_its_innermost_stage_frame(frames, stage):
    assert stage_of(frames) == stage


def test_fold_counts_samples_per_thread_and_stage():
    decode = ";".join(PREDICT + [f"decode_image ({APP}/chexnet/imaging/decode.py:60)"])
    forward = ";".join(BATCHER + [f"OnnxRuntimeEngine.infer ({APP}/chexnet/engines/onnx_runtime.py:38)"])
    raw = "\n".join(
        [
            f"thread (101): waitress-0;{decode} 7",
            f"thread (101): waitress-0;{decode} 2",
            f"thread (0x66): batcher-cxr10-0;{forward} 30",
            f"thread (101): waitress-0;{';'.join(PREDICT)};Stopwatch.cpu_ms ({APP}/chexnet/predictor.py:52) 4",
            "not a py-spy line",
            "",
        ]
    )
    samples, names = fold(raw)
    assert samples == {101: {"decode": 9, WAITING: 4}, 102: {"forward": 30}}
    assert names == {101: "waitress-0", 102: "batcher-cxr10-0"}


def test_apportion_splits_each_threads_cpu_by_its_working_samples():
    samples = {1: {"decode": 3, "forward": 1, WAITING: 4}, 3: {WAITING: 2}}
    stages = apportion({1: 100.0, 2: 40.0, 3: 5.0}, samples)
    assert stages == pytest.approx({"decode": 75.0, "forward": 25.0 + 40.0, "other": 5.0})
    assert NATIVE == "forward"  # thread 2 ran no Python: the engine's own pool


def test_limit_is_cores_over_core_ms():
    assert limit(2, 100.0) == pytest.approx(20.0)
    assert limit(16, 40.0) == pytest.approx(400.0)


def test_stage_timers_are_the_cpu_seconds_between_two_scrapes():
    metrics = Metrics()
    metrics.observe_stage("cxr10", "decode", 20.0, 12.0)
    metrics.observe_stage("cxr25", "decode", 20.0, 99.0)  # another model: not counted
    before = generate_latest(metrics.registry).decode()
    for cpu in (10.0, 14.0):
        metrics.observe_stage("cxr10", "decode", 30.0, cpu)
    metrics.observe_stage("cxr10", "audit", 5.0, 0.5)
    metrics.observe_stage("cxr10", "inference", 80.0)  # wall only: no CPU timer
    timers = stage_timers(before, generate_latest(metrics.registry).decode(), "cxr10")
    assert timers.keys() == {"decode", "audit"}
    assert timers["decode"][0] == pytest.approx(24.0) and timers["decode"][1] == 2
    assert timers["audit"][0] == pytest.approx(0.5) and timers["audit"][1] == 1


def test_every_stage_timer_is_a_stage_of_the_table():
    assert set(request_cost.TIMER_STAGES.values()) <= set(request_cost.STAGES)
    assert {stage for stage, _, _ in request_cost.STAGE_FRAMES} <= set(request_cost.STAGES)
