"""Micro-batching, deterministically: a fake forward pass that waits for the test."""

import threading

import numpy as np
import pytest

from chexnet.batching import InFlight, MicroBatcher
from chexnet.engines.base import EngineOutput
from chexnet.errors import Overloaded


class GatedPredictor:
    """forward() records each batch and blocks until released; row i's probability is its input value."""

    def __init__(self):
        self.gate = threading.Event()
        self.batches: list[int] = []
        self.lone: list[bool] = []
        self.entered = threading.Event()

    def forward(self, tensors, lone=False):
        self.batches.append(len(tensors))
        self.lone.append(lone)
        self.entered.set()
        self.gate.wait(10)
        values = np.array([[float(t.flat[0])] for t in tensors], dtype=np.float32)
        return EngineOutput(values, np.zeros((len(tensors), 1, 7, 7), np.float32)), 1.0


def tensor(value: float) -> np.ndarray:
    return np.full((3, 4, 4), value, np.float32)


def test_queued_requests_share_one_forward_pass_and_get_their_own_rows():
    predictor = GatedPredictor()
    batcher = MicroBatcher(predictor.forward, "fake", max_batch=4, max_wait_ms=1, queue_size=16)
    first = batcher.submit(tensor(0))
    assert predictor.entered.wait(5)  # the worker holds item 0 in a forward pass
    waiting = [batcher.submit(tensor(v)) for v in range(1, 7)]
    predictor.gate.set()
    results = [f.result(10) for f in [first, *waiting]]
    assert [float(r.probabilities[0]) for r in results] == [0, 1, 2, 3, 4, 5, 6]
    assert predictor.batches == [1, 4, 2]
    assert [r.batch_size for r in results] == [1, 4, 4, 4, 4, 2, 2]


def test_full_queue_is_refused_not_grown():
    predictor = GatedPredictor()
    batcher = MicroBatcher(predictor.forward, "fake", max_batch=1, max_wait_ms=0, queue_size=2)
    running = batcher.submit(tensor(0))
    assert predictor.entered.wait(5)
    queued = [batcher.submit(tensor(1)), batcher.submit(tensor(2))]
    with pytest.raises(Overloaded) as err:
        batcher.submit(tensor(3))
    assert err.value.status == 503 and err.value.retry_after_s > 0
    predictor.gate.set()
    assert [float(f.result(10).probabilities[0]) for f in [running, *queued]] == [0, 1, 2]


def test_engine_failure_reaches_every_waiting_request_and_the_worker_survives():
    class Failing(GatedPredictor):
        def forward(self, tensors, lone=False):
            if float(tensors[0].flat[0]) < 0:
                raise RuntimeError("engine exploded")
            return super().forward(tensors, lone)

    predictor = Failing()
    predictor.gate.set()
    batcher = MicroBatcher(predictor.forward, "fake", max_batch=2, max_wait_ms=1, queue_size=4)
    with pytest.raises(RuntimeError, match="exploded"):
        batcher.submit(tensor(-1)).result(10)
    assert float(batcher.submit(tensor(5)).result(10).probabilities[0]) == 5


def test_a_request_that_waits_past_its_timeout_is_overloaded_and_dropped():
    predictor = GatedPredictor()
    batcher = MicroBatcher(predictor.forward, "fake", max_batch=1, max_wait_ms=0, queue_size=4)
    running = batcher.submit(tensor(0))
    assert predictor.entered.wait(5)
    with pytest.raises(Overloaded, match="waited too long"):
        batcher.run(tensor(1), timeout_s=0.05)
    predictor.gate.set()
    assert float(running.result(10).probabilities[0]) == 0
    assert float(batcher.run(tensor(2), timeout_s=10).probabilities[0]) == 2
    assert predictor.batches == [1, 1]  # the timed-out request never reached the engine


def test_a_call_is_lone_only_for_the_one_prediction_in_the_service():
    predictor = GatedPredictor()
    predictor.gate.set()
    in_flight = InFlight()
    batcher = MicroBatcher(predictor.forward, "fake", max_batch=1, max_wait_ms=0, queue_size=4, in_flight=in_flight)
    with in_flight.held():
        batcher.run(tensor(1), timeout_s=10)  # the only prediction: lone
        with in_flight.held():  # another request is decoding, or waiting for a decode slot
            batcher.run(tensor(2), timeout_s=10)
        batcher.run(tensor(3), timeout_s=10)  # it has been answered
    assert predictor.lone == [True, False, True]
    MicroBatcher(predictor.forward, "uncounted", 1, 0, 4).run(tensor(4), timeout_s=10)  # no InFlight: never lone
    assert predictor.lone[-1] is False


def test_in_flight_counts_a_prediction_that_failed_as_gone():
    in_flight = InFlight()
    with pytest.raises(ValueError), in_flight.held():
        assert in_flight.alone()
        with in_flight.held():
            assert not in_flight.alone()
            raise ValueError("bad upload")
    with in_flight.held():
        assert in_flight.alone()
