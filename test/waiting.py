"""Waiting for something a test caused to happen (a restart, a delivery): poll, with a deadline."""

import time


def wait_until(predicate, seconds: float, what: str):
    """predicate's first truthy value; AssertionError naming ``what`` after ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.5)
    raise AssertionError(f"timed out after {seconds:.0f} s waiting for {what}")
