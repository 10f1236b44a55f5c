"""How many cores and how much memory this process is given, and how the service divides the cores
when not told.

Measured on 2 cores (BENCHMARKS.md): two single-threaded engine workers serve 27.5 requests/s where
one worker with two threads serves 19.3, since a DenseNet forward pass at 224 px scales poorly across
threads. On larger machines each worker gets up to 4 threads (latency for a lone request) and there
are as many workers as that leaves room for (throughput); that part is reasoned, not measured here.

A request that is alone in the service leaves the other workers' cores idle, so its engine call may take
them (lone_threads): on 2 cores ONNX Runtime's forward pass takes 34 ms on two threads against 55 on one
(BENCHMARKS.md, issue 26's targets), while two calls at once still run one thread each.
"""

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
# compose mem_limit / docker run --memory, as the container sees it: cgroup v2, then v1.
CGROUP_MEMORY_LIMITS = (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"))
MAX_THREADS_PER_WORKER = 4


@dataclass(frozen=True)
class MemoryLimit:
    bytes: int
    source: str  # where the number comes from, for the start-up sentence


def available_cores(cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """The CPUs this process may run on, capped by a cgroup v2 CPU quota (compose ``cpus:``,
    ``docker run --cpus``), which the affinity mask does not show."""
    cores = len(os.sched_getaffinity(0))
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cores


def available_memory(limit_files: Sequence[Path] = CGROUP_MEMORY_LIMITS) -> MemoryLimit:
    """The memory this process may use: the first cgroup limit file that can be read, where it sets a
    limit below the machine's physical memory ("max" in v2, a huge number in v1, mean none), else the
    physical memory."""
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in limit_files:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < physical:
            return MemoryLimit(int(text), f"the cgroup memory limit in {path}")
        break
    return MemoryLimit(physical, "the machine's physical memory")


def engine_layout(cores: int) -> tuple[int, int]:
    """(engine workers, threads per worker) for this many cores."""
    threads = 1 if cores <= 2 else min(MAX_THREADS_PER_WORKER, cores // 2)
    return max(1, cores // threads), threads


def lone_threads(workers: int, threads: int) -> int:
    """Threads for an engine call made while no other prediction is in the service: every worker's cores, up
    to MAX_THREADS_PER_WORKER; 0 where that is no more than a worker has (nothing to gain)."""
    lone = min(workers * threads, MAX_THREADS_PER_WORKER)
    return lone if lone > threads else 0
