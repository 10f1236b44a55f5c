"""At most N decodes at once (CHEXNET_DECODE_CONCURRENCY): decoding memory is bounded by N times the
worst single decode, however many requests arrive. A request that cannot get a slot within the wait
gets 503 ``overloaded`` rather than queueing without bound."""

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from chexnet.errors import Overloaded


def default_concurrency(cores: int) -> int:
    """One decode per core (decoding is CPU-bound), at most four: a 36 MP 16-bit decode peaks near 200 MB."""
    return max(1, min(4, cores))


class DecodeGate:
    def __init__(self, concurrency: int, wait_s: float):
        self.concurrency = concurrency
        self.wait_s = wait_s
        self._slots = threading.BoundedSemaphore(concurrency)

    @contextmanager
    def slot(self) -> Iterator[None]:
        if not self._slots.acquire(timeout=self.wait_s):
            raise Overloaded("The server is decoding other images; retry in a few seconds.")
        try:
            yield
        finally:
            self._slots.release()
