"""Micro-batching: concurrent requests for one model share forward passes.

Requests put their preprocessed tensor on a bounded queue and wait on a Future. Each worker (one
or more per model, sharing the queue and the engine) takes the first waiting item, gathers more for
up to ``max_wait_ms`` (at most ``max_batch``), runs one engine call and hands each request its own row.
A full queue refuses at once (:class:`Overloaded`, 503 with Retry-After) instead of growing without
bound, and so does a request that waited longer than its timeout. A call for one image made while that
image's request is the only prediction in the service (:class:`InFlight`) is a lone call: the engine may give
it the cores the other workers would use (chexnet.cpu.lone_threads).
"""

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from chexnet.engines import EngineOutput
from chexnet.errors import Overloaded
from chexnet.predictor import Forwarded

log = logging.getLogger(__name__)
BatchForward = Callable[[Sequence[np.ndarray], bool], tuple[EngineOutput, float]]


class InFlight:
    """How many predictions the service holds now, from their start to their answer (waiting for a decode
    slot, decoding, queued, in an engine call, reporting), across its models."""

    def __init__(self) -> None:
        self._count = 0
        self._lock = threading.Lock()

    @contextmanager
    def held(self) -> Iterator[None]:
        with self._lock:
            self._count += 1
        try:
            yield
        finally:
            with self._lock:
                self._count -= 1

    def alone(self) -> bool:
        """At most one prediction is in the service: the one asking."""
        return self._count <= 1


@dataclass(frozen=True)
class RowResult(Forwarded):
    batch_size: int = 1


class MicroBatcher:
    def __init__(
        self,
        forward: BatchForward,
        name: str,
        max_batch: int,
        max_wait_ms: float,
        queue_size: int,
        metrics=None,
        workers: int = 1,
        in_flight: InFlight | None = None,
    ):
        self.forward = forward
        self.name = name
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self.queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self.metrics = metrics
        self.in_flight = in_flight
        self._gathering = threading.Lock()
        for n in range(workers):
            threading.Thread(target=self._run, name=f"batcher-{name}-{n}", daemon=True).start()

    def run(self, tensor: np.ndarray, timeout_s: float) -> RowResult:
        """The predictor's forward step: queue one image, wait for its row."""
        future = self.submit(tensor)
        try:
            return future.result(timeout=timeout_s)
        except FutureTimeout:
            future.cancel()
            raise Overloaded("The image waited too long for the engine; retry in a few seconds.") from None

    def submit(self, tensor: np.ndarray) -> Future:
        future: Future = Future()
        try:
            self.queue.put_nowait((tensor, future))
        except queue.Full:
            raise Overloaded("The server is busy with other images; retry in a few seconds.") from None
        if self.metrics:
            self.metrics.queue_depth.labels(self.name).set(self.queue.qsize())
        return future

    def _gather(self) -> list:
        # Workers gather one at a time, so a batch is never split between two of them.
        with self._gathering:
            return self._collect()

    def _collect(self) -> list:
        items = [self.queue.get()]
        deadline = time.monotonic() + self.max_wait_s
        while len(items) < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                items.append(self.queue.get(timeout=remaining) if remaining > 0 else self.queue.get_nowait())
            except queue.Empty:
                break
        return items

    def _run(self) -> None:
        while True:
            items = self._gather()
            items = [(t, f) for t, f in items if f.set_running_or_notify_cancel()]
            if not items:
                continue
            lone = len(items) == 1 and self.in_flight is not None and self.in_flight.alone()
            try:
                output, ms = self.forward([t for t, _ in items], lone)
            except Exception as exc:  # the engine failed: every waiting request gets the error
                log.exception("inference failed for a batch of %d", len(items))
                for _, future in items:
                    future.set_exception(exc)
                continue
            if self.metrics:
                self.metrics.batch_size.labels(self.name).observe(len(items))
                self.metrics.queue_depth.labels(self.name).set(self.queue.qsize())
            for row, (_, future) in enumerate(items):
                future.set_result(RowResult(output.probabilities[row], output.cams[row], ms, len(items)))
