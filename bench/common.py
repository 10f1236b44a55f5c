"""Helpers shared by the benchmark scripts: machine description, timing, BENCHMARKS.md sections."""

import json
import os
import platform
import re
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path


def _cpuinfo() -> tuple[str, set[str]]:
    """The CPU's model name and flags."""
    model = "unknown CPU"
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model == "unknown CPU":
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return model, flags


def engine_unavailable(engine: str, precision: str, models_dir: Path, model: str) -> str | None:
    """Why the service cannot serve this engine and precision here (None: it can), so that a benchmark skips it
    with that sentence instead of waiting for a server that never becomes ready."""
    if precision == "fp32":
        return None
    variants = json.loads((models_dir / model / "manifest.json").read_text()).get("variants", {})
    if precision == "bf16" and not _cpuinfo()[1] & {"amx_bf16", "avx512_bf16"}:
        return (
            "this CPU has neither AMX nor AVX512-BF16, so OpenVINO refuses bf16 and the bundle carries no bf16 variant"
        )
    if precision not in variants:
        return f"bundle {model} carries no validated {precision} variant"
    return None


def machine() -> str:
    model, flags = _cpuinfo()
    isa = (
        ", ".join(f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16") if f in flags) or "baseline"
    )
    return f"{model}, {len(os.sched_getaffinity(0))} cores ({isa}), {platform.system()} {platform.machine()}, Python {platform.python_version()}"


def timed(fn, repeat: int, warmup: int = 2) -> list[float]:
    """Milliseconds of each of ``repeat`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1000.0)
    return out


def median(values: list[float]) -> float:
    return statistics.median(values)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100.0 * (len(ordered) - 1))))
    return ordered[index]


def write_section(path: Path, name: str, body: str) -> None:
    """Replace (or append) the block between <!-- bench:NAME --> markers in BENCHMARKS.md."""
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{start}\n{body.rstrip()}\n{end}"
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text, encoding="utf-8")


def concurrently(clients: int, client: Callable[[int], None]) -> float:
    """Run client(0) .. client(clients - 1) at once, each on its own thread; the wall seconds until all end."""
    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    began = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.monotonic() - began
