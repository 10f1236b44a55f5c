"""How the service divides the cores it is given (chexnet.cpu, Settings.layout)."""

import os

import pytest

from chexnet.cpu import available_cores, engine_layout, lone_threads
from chexnet.service import Settings


@pytest.mark.parametrize(
    "cores,layout", [(1, (1, 1)), (2, (2, 1)), (4, (2, 2)), (8, (2, 4)), (16, (4, 4)), (64, (16, 4))]
)
def test_engine_layout_uses_every_core(cores, layout):
    assert engine_layout(cores) == layout
    workers, threads = layout
    assert workers * threads == cores


@pytest.mark.parametrize("cores,lone", [(1, 0), (2, 2), (3, 3), (4, 4), (8, 0), (16, 0)])
def test_a_lone_request_gets_the_idle_workers_cores_up_to_a_workers_most(cores, lone):
    assert lone_threads(*engine_layout(cores)) == lone


def test_a_cgroup_cpu_quota_caps_the_cores(tmp_path):
    affinity = len(os.sched_getaffinity(0))
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("max 100000\n")
    assert available_cores(cpu_max) == affinity
    cpu_max.write_text("50000 100000\n")  # half a CPU (compose cpus: 0.5) still gets one
    assert available_cores(cpu_max) == 1
    assert available_cores(tmp_path / "absent") == affinity


def test_settings_derive_the_layout_unless_told(tmp_path):
    env = {"CHEXNET_LICENSE_KEYS": "k.pem", "CHEXNET_MODELS_DIR": str(tmp_path)}
    derived = Settings.from_env(env).layout
    assert (derived.engine_workers, derived.engine_threads) == engine_layout(derived.cores)
    assert derived.http_threads >= 2 * derived.engine_workers + derived.decode_concurrency
    told = Settings.from_env(
        {**env, "CHEXNET_ENGINE_WORKERS": "3", "CHEXNET_THREADS": "5", "CHEXNET_DECODE_CONCURRENCY": "2"}
    ).layout
    assert (told.engine_workers, told.engine_threads, told.http_threads, told.decode_concurrency) == (
        3,
        max(1, told.cores // 3),
        5,
        2,
    )


@pytest.mark.parametrize("engine,lone", [("onnxruntime", 2), ("openvino", 0), ("torch", 0)])
def test_only_an_engine_that_runs_lone_calls_is_given_lone_threads(tmp_path, engine, lone):
    env = {"CHEXNET_LICENSE_KEYS": "k.pem", "CHEXNET_MODELS_DIR": str(tmp_path), "CHEXNET_ENGINE": engine}
    layout = Settings.from_env({**env, "CHEXNET_ENGINE_WORKERS": "2", "CHEXNET_ENGINE_THREADS": "1"}).layout
    assert layout.lone_threads == lone  # the start-up line does not promise what the engine will not do
