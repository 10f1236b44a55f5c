"""The one-request memory budget, and how a test measures a decode against it."""

import re
from pathlib import Path

from chexnet.errors import ServiceError

SINGLE_REQUEST_BUDGET_MIB = 300  # the bound for one request above idle


def _status_mib(key: str) -> float:
    return int(re.search(rf"{key}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) / 1024


def peak_mib_above_now(work) -> tuple[float, object]:
    """Run work(); return how far the resident set peaked above where it started (Linux VmHWM)."""
    Path("/proc/self/clear_refs").write_text("5")  # resets the peak to the current resident set
    start = _status_mib("VmRSS")
    try:
        result = work()
    except ServiceError as exc:
        result = exc
    return _status_mib("VmHWM") - start, result
