"""Failed sign-ins counted per user name and per client address over a sliding window. Over either
limit, sign-in is refused (even with the right password) until the oldest failure leaves the window."""

import threading
import time
from collections import OrderedDict, deque

MAX_KEYS = 10_000  # bounded memory whatever names and addresses an attacker sends


class SignInThrottle:
    def __init__(self, per_user: int = 5, per_address: int = 20, window_s: float = 900.0):
        self.limits = {"user": per_user, "address": per_address}
        self.window_s = window_s
        self._failures: OrderedDict[tuple[str, str], deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def retry_after(self, user: str, address: str) -> int:
        """Seconds until a sign-in for this user from this address may be tried; 0 when it may now."""
        now = time.monotonic()
        wait = 0.0
        with self._lock:
            for kind, value in (("user", user), ("address", address)):
                times = self._recent((kind, value), now)
                if len(times) >= self.limits[kind]:
                    wait = max(wait, times[0] + self.window_s - now)
        return int(wait) + 1 if wait > 0 else 0

    def failed(self, user: str, address: str) -> None:
        now = time.monotonic()
        with self._lock:
            for key in (("user", user), ("address", address)):
                self._failures.setdefault(key, deque()).append(now)
                self._failures.move_to_end(key)
            while len(self._failures) > MAX_KEYS:
                self._failures.popitem(last=False)

    def succeeded(self, user: str) -> None:
        with self._lock:
            self._failures.pop(("user", user), None)

    def _recent(self, key: tuple[str, str], now: float) -> deque[float]:
        times = self._failures.get(key, deque())
        while times and times[0] <= now - self.window_s:
            times.popleft()
        return times
