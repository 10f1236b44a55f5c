"""How many cores this process is given, and how the service divides them when not told.

Measured on 2 cores (BENCHMARKS.md): two single-threaded engine workers serve 27.5 requests/s where
one worker with two threads serves 19.3, since a DenseNet forward pass at 224 px scales poorly across
threads. On larger machines each worker gets up to 4 threads (latency for a lone request) and there
are as many workers as that leaves room for (throughput); that part is reasoned, not measured here.
"""

import math
import os
from pathlib import Path

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
MAX_THREADS_PER_WORKER = 4


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


def engine_layout(cores: int) -> tuple[int, int]:
    """(engine workers, threads per worker) for this many cores."""
    threads = 1 if cores <= 2 else min(MAX_THREADS_PER_WORKER, cores // 2)
    return max(1, cores // threads), threads
