"""What one request costs, stage by stage, in core-milliseconds, and how close the service comes to the
machine's limit (issue 26).

For each engine (ONNX Runtime fp32; OpenVINO bf16 and int8 where this CPU and the bundle have them), input
(PNG, JPEG, DICOM) and heatmaps (none, top) it runs the real service (`python -m chexnet serve`, as
bench/http_load.py starts it) under a closed loop of --clients clients, twice:
- a profiled window: py-spy samples the server's Python threads (`py-spy record --format raw --threads
  --nonblocking`); each sample is folded into the stage of its innermost frame that names one (STAGE_FRAMES),
  and each thread's CPU time (/proc/PID/task/TID/schedstat) is split between stages by its samples. Threads
  without Python frames are the engine's own pools (OpenVINO's, BLAS's): they count as the forward pass.
- a measured window without the profiler: requests/s and latencies, the server's CPU time (all its threads)
  and the load client's (this process: it shares the cores), and the service's own stage timers
  (chexnet_stage_cpu_seconds: the CPU time of the thread that ran parse, decode, preprocess, heatmap, the
  response body and the audit record; the engine's threads from /proc).

The machine's limit is cores × 1000 / core-ms per request, where a request's core-ms are everything this
benchmark spends on it (server and client, which share the cores); measured requests/s as a share of that
limit says how much of the machine is left idle. Then the issue's targets, each with its measured value and
PASS or MISS: bf16 ≥ 1.8x ONNX Runtime fp32 at 4 clients with heatmaps=top, every engine ≥ 80 % of its own
limit, bf16 p99 ≤ 500 ms at 16 clients, and the service's single-client p50 no slower than a minimal FastAPI
+ ONNX Runtime peer (bench/peer_fastapi.py) started the same way and loaded by the same client.

    python bench/request_cost.py --models-dir models --samples ../shared/data --write BENCHMARKS.md
    python bench/request_cost.py --quick        # PNG with heatmaps=top only, shorter windows

py-spy needs ptrace on the server (root, or kernel.yama.ptrace_scope 0).
"""

import argparse
import datetime as dt
import io
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import requests
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent))
from chexnet.cpu import available_cores  # noqa: E402
from chexnet.service import Settings  # noqa: E402
from common import engine_unavailable, machine, write_section  # noqa: E402
from http_load import run_clients, serving, wait_ready  # noqa: E402

STAGES = (
    "receive/parse",
    "decode",
    "preprocess",
    "forward",
    "CAM",
    "overlay",
    "JSON/base64",
    "audit",
    "HTTP",
    "other",
)
# (stage, part of the file's path, function or None): a sample belongs to the stage of its innermost frame
# that matches an entry, the first matching entry deciding; a sample with none is HTTP (waitress, Flask).
STAGE_FRAMES = (
    ("audit", "chexnet/service/audit.py", None),
    ("CAM", "chexnet/engines/base.py", "cams_from_features"),
    ("CAM", "chexnet/heatmap.py", "normalise"),
    ("forward", "chexnet/engines/", None),
    ("forward", "chexnet/batching.py", None),
    ("forward", "chexnet/predictor.py", "batch_forward"),
    ("overlay", "chexnet/heatmap.py", None),
    ("preprocess", "chexnet/imaging/preprocess.py", None),
    ("preprocess", "chexnet/predictor.py", "prepare"),  # the upload's sha256 (the service times it there)
    ("decode", "chexnet/imaging/", None),
    ("JSON/base64", "chexnet/api/responses.py", None),
    ("JSON/base64", "flask/json/", None),
    ("receive/parse", "werkzeug/formparser.py", None),
    ("receive/parse", "werkzeug/sansio/multipart.py", None),
    ("receive/parse", "chexnet/api/routes.py", "_upload"),
    ("receive/parse", "chexnet/api/routes.py", "_option"),
    ("receive/parse", "waitress/parser.py", None),
    ("receive/parse", "waitress/receiver.py", None),
    ("receive/parse", "waitress/channel.py", "received"),
    ("other", "licensing/", None),  # the licence token's check
    ("other", "chexnet/service/", None),  # metrics, monitoring roll-up, audit messages
    ("other", "prometheus_client/", None),
    ("other", "/logging/", None),
)
NATIVE = "forward"  # the stage of threads that run no Python: the engine's thread pools
# py-spy counts a thread as running while the kernel has it runnable (state R), also while it waits for a core.
# Threads are mostly preempted, and woken, at system calls: the service's CPU clock (Stopwatch) and a
# condition's wait or notify. Samples stopped there are waits, not work: left out of the split (WAITING).
WAITING = "waiting for a core"
WAIT_FRAMES = (
    ("chexnet/predictor.py", "Stopwatch"),
    ("/threading.py", "Condition.wait"),
    ("/threading.py", "Condition.notify"),
)
# The service's own timers (chexnet_stage_cpu_seconds) by the stage they measure.
TIMER_STAGES = {
    "parse": "receive/parse",
    "decode": "decode",
    "preprocess": "preprocess",
    "heatmap": "overlay",
    "response": "JSON/base64",
    "audit": "audit",
}
_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")
_THREAD = re.compile(r"^thread \((?P<tid>\d+|0x[0-9a-fA-F]+)\)(?::\s*(?P<name>.*))?$")


# --- pure parts (test/test_request_cost.py) ------------------------------------------------------
def stage_of(frames: list[str]) -> str:
    """The stage of one sampled stack, frames from the thread's root to the running function."""
    leaf = _FRAME.match(frames[-1]) if frames else None
    if leaf and any(part in leaf["file"] and _named(leaf["function"], f) for part, f in WAIT_FRAMES):
        return WAITING
    for frame in reversed(frames):
        match = _FRAME.match(frame)
        if not match:
            continue
        function, file = match["function"], match["file"]
        for stage, part, wanted in STAGE_FRAMES:
            if part in file and (wanted is None or _named(function, wanted)):
                return stage
    return "HTTP"


def _named(function: str, wanted: str) -> bool:
    """py-spy names a function by its qualified name: Predictor.prepare, batch_forward.<locals>.forward."""
    return function == wanted or wanted in function.split(".")


def fold(raw: str) -> tuple[dict[int, Counter], dict[int, str]]:
    """py-spy's raw output (recorded with --threads) → samples per stage for each thread id, and the threads'
    names."""
    samples: dict[int, Counter] = {}
    names: dict[int, str] = {}
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        head, *frames = stack.split(";")
        thread = _THREAD.match(head)
        if thread is None:
            continue
        tid = int(thread["tid"], 0)
        names[tid] = thread["name"] or ""
        samples.setdefault(tid, Counter())[stage_of(frames)] += int(count)
    return samples, names


def apportion(cpu_ms: dict[int, float], samples: dict[int, Counter]) -> dict[str, float]:
    """Each thread's CPU milliseconds split between stages as its working samples are (WAITING ones left out);
    a thread that py-spy never saw run Python counts as NATIVE, one seen only waiting as other."""
    stages: Counter = Counter()
    for tid, ms in cpu_ms.items():
        seen = samples.get(tid)
        if not seen:
            stages[NATIVE] += ms
            continue
        working = {stage: n for stage, n in seen.items() if stage != WAITING} or {"other": 1}
        total = sum(working.values())
        for stage, n in working.items():
            stages[stage] += ms * n / total
    return dict(stages)


def limit(cores: int, core_ms: float) -> float:
    """Requests/s the machine can serve at core_ms core-milliseconds per request."""
    return cores * 1000.0 / core_ms


def stage_timers(before: str, after: str, model: str) -> dict[str, tuple[float, int]]:
    """chexnet_stage_cpu_seconds between two scrapes of /metrics: stage → (CPU milliseconds, observations)."""

    def sums(text: str) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for family in text_string_to_metric_families(text):
            if family.name != "chexnet_stage_cpu_seconds":
                continue
            for sample in family.samples:
                if sample.labels.get("model") == model and sample.name.endswith(("_sum", "_count")):
                    out.setdefault(sample.labels["stage"], {})[sample.name.rsplit("_", 1)[1]] = sample.value
        return out

    start, end = sums(before), sums(after)
    return {
        stage: (
            (v.get("sum", 0.0) - start.get(stage, {}).get("sum", 0.0)) * 1000.0,
            int(v.get("count", 0) - start.get(stage, {}).get("count", 0)),
        )
        for stage, v in end.items()
    }


# --- measuring -------------------------------------------------------------------------------------
def thread_cpu(pid: int) -> dict[int, float]:
    """Milliseconds on a CPU of each of the process's threads, from the scheduler's own count."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out[int(task.name)] = int((task / "schedstat").read_text().split()[0]) / 1e6
        except (OSError, ValueError, IndexError):
            pass  # the thread ended
    return out


def delta(before: dict[int, float], after: dict[int, float]) -> dict[int, float]:
    return {tid: ms - before.get(tid, 0.0) for tid, ms in after.items()}


@dataclass
class Run:
    """One closed-loop window: its answers and what it cost."""

    clients: int
    ok: int
    errors: dict
    rps: float
    p50: float
    p99: float
    server_ms: float = 0.0  # core-ms per request, all the server's threads
    client_ms: float = 0.0  # core-ms per request, this process (the load client)
    threads_ms: dict[int, float] = field(default_factory=dict)  # each server thread's CPU, whole window


def load(url: str, token: str, query: str, uploads, clients: int, seconds: float, pid: int) -> Run:
    cpu_before, client_before = thread_cpu(pid), time.process_time()
    r = run_clients(url, token, query, uploads, clients, seconds)
    threads = delta(cpu_before, thread_cpu(pid))
    n = max(r["ok"], 1)
    return Run(
        clients,
        r["ok"],
        r["errors"],
        r["rps"],
        r["p50"] if r["ok"] else float("nan"),
        r["p99"] if r["ok"] else float("nan"),
        sum(threads.values()) / n,
        (time.process_time() - client_before) * 1000.0 / n,
        threads,
    )


@dataclass
class Cell:
    engine: str
    input: str
    heatmaps: str
    run: Run
    profile: dict[str, float]  # stage → core-ms per request (py-spy, profiled window)
    profiler_ms: float  # py-spy's own core-ms per request in the profiled window
    timers: dict[str, float]  # stage → CPU ms per request (the service's timers; forward: engine threads)


def profiled(url, token, query, uploads, clients, seconds, pid, scratch: Path) -> tuple[Run, Counter, dict, float]:
    """A window under py-spy: the run, samples per stage for each thread, thread names, py-spy's CPU ms."""
    out = scratch / "spy.txt"
    spy_cpu = _children_cpu_ms()
    spy = subprocess.Popen(
        [Path(sys.executable).parent / "py-spy", "record", "--format", "raw", "--threads", "--nonblocking"]
        + ["--full-filenames", "--rate", "100", "--output", str(out), "--pid", str(pid)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    time.sleep(1.0)  # attached
    run = load(url, token, query, uploads, clients, seconds, pid)
    spy.send_signal(signal.SIGINT)
    _, err = spy.communicate(timeout=60)
    if not out.exists():
        raise SystemExit(f"py-spy wrote nothing (it needs ptrace on the server: run as root): {err.decode()[-300:]}")
    samples, names = fold(out.read_text())
    return run, samples, names, _children_cpu_ms() - spy_cpu


def _children_cpu_ms() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (usage.ru_utime + usage.ru_stime) * 1000.0


def measure_cell(engine, kind, heatmaps, url, token, uploads, model, args, pid, scratch) -> Cell:
    query = f"heatmaps={heatmaps}&heatmap_format=jpeg&model={model}"
    run_clients(url, token, query, uploads, args.clients, 1.0)  # warm-up for this input
    prun, samples, names, spy_ms = profiled(
        url, token, query, uploads, args.clients, args.profile_seconds, pid, scratch
    )
    n = max(prun.ok, 1)
    profile = {stage: ms / n for stage, ms in apportion(prun.threads_ms, samples).items()}
    metrics_before = requests.get(f"{url}/metrics", timeout=10).text
    run = load(url, token, query, uploads, args.clients, args.seconds, pid)
    timers_raw = stage_timers(metrics_before, requests.get(f"{url}/metrics", timeout=10).text, model)
    n = max(run.ok, 1)
    timers = {TIMER_STAGES[s]: ms / n for s, (ms, _) in timers_raw.items() if s in TIMER_STAGES}
    # the forward pass runs on the engine's threads: the batcher's Python threads and threads without Python
    python_threads = {tid for tid, name in names.items() if not name.startswith("batcher-")}
    timers["forward"] = sum(ms for tid, ms in run.threads_ms.items() if tid not in python_threads) / n
    return Cell(engine, kind, heatmaps, run, profile, spy_ms / max(prun.ok, 1), timers)


# --- inputs ----------------------------------------------------------------------------------------
def inputs(samples: Path, dicom: list[str]) -> dict[str, list[tuple[str, bytes]]]:
    pngs = sorted((samples / "nih").glob("*.png"))[:16]
    if not pngs:
        raise SystemExit(f"no PNG in {samples / 'nih'} (--samples: the folder holding nih/ and dicom/)")
    png = [(p.name, p.read_bytes()) for p in pngs]
    jpeg = []
    for name, data in png:  # what a hospital's export would send: the same radiographs as 8-bit JPEG, quality 90
        buffer = io.BytesIO()
        Image.open(io.BytesIO(data)).convert("L").save(buffer, "JPEG", quality=90)
        jpeg.append((name.replace(".png", ".jpg"), buffer.getvalue()))
    return {"PNG": png, "JPEG": jpeg, "DICOM": [(name, (samples / "dicom" / name).read_bytes()) for name in dicom]}


# --- the run ---------------------------------------------------------------------------------------
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    parser.add_argument("--model", default="cxr10")
    parser.add_argument("--samples", type=Path, default=Path("../shared/data"), help="holds nih/ and dicom/")
    parser.add_argument("--dicom", default="RG1_UNCR.dcm", help="comma list of files in SAMPLES/dicom")
    parser.add_argument("--engines", default="onnxruntime:fp32,openvino:bf16,openvino:int8")
    parser.add_argument("--inputs", default="PNG,JPEG,DICOM")
    parser.add_argument("--heatmaps", default="none,top")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10, help="each measured window")
    parser.add_argument("--profile-seconds", type=float, default=5, help="each profiled window")
    parser.add_argument("--quick", action="store_true", help="PNG with heatmaps=top only, 3 s windows")
    parser.add_argument("--port", type=int, default=18380)
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    if args.quick:
        args.inputs, args.heatmaps, args.seconds, args.profile_seconds = "PNG", "top", 3, 3
    uploads = inputs(args.samples, args.dicom.split(","))
    cores = available_cores()
    began = time.monotonic()
    cells: list[Cell] = []
    loads: dict[tuple[str, int], Run] = {}  # (engine, clients) → PNG, heatmaps=top
    skipped: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for engine, precision in (pair.split(":") for pair in args.engines.split(",")):
            name = f"{engine} {precision}"
            why = engine_unavailable(engine, precision, args.models_dir, args.model)
            if why:
                skipped[name] = why
                print(f"# {name}: not measured, {why}", flush=True)
                continue
            extra = {"CHEXNET_ENGINE": engine, "CHEXNET_PRECISION": precision, "CHEXNET_MODELS": args.model}
            with serving(args.models_dir, args.port, extra, args.model) as (url, token, server):
                run_clients(url, token, f"model={args.model}", uploads["PNG"], 2, 2)  # warm-up
                for kind in args.inputs.split(","):
                    for heatmaps in args.heatmaps.split(","):
                        cell = measure_cell(
                            name, kind, heatmaps, url, token, uploads[kind], args.model, args, server.pid, Path(scratch)
                        )
                        cells.append(cell)
                        print(cost_row(cell, cores), flush=True)
                query = f"heatmaps=top&heatmap_format=jpeg&model={args.model}"
                for clients in (1, 16):
                    run = load(url, token, query, uploads["PNG"], clients, args.seconds, server.pid)
                    loads[(name, clients)] = run
                    print(f"# {name}, {clients} client(s): {run.rps:.1f}/s, p50 {run.p50:.0f}, p99 {run.p99:.0f} ms")
        peer = peer_run(args, uploads["PNG"])
        print(f"# FastAPI + ONNX Runtime peer, 1 client: {peer.rps:.1f}/s, p50 {peer.p50:.0f} ms", flush=True)
    minutes = (time.monotonic() - began) / 60
    body = report(args, cores, cells, loads, peer, skipped, minutes)
    print(body)
    if args.write:
        write_section(args.write, "request-cost", body)
    return 0


def peer_run(args, uploads) -> Run:
    """bench/peer_fastapi.py started as the service is (one process, this machine's layout), one client."""
    layout = Settings.from_env(
        {"CHEXNET_LICENSE_KEYS": "unused", "CHEXNET_MODELS_DIR": str(args.models_dir), "CHEXNET_MODELS": args.model}
    ).layout
    port = args.port + 1
    command = [sys.executable, str(Path(__file__).with_name("peer_fastapi.py")), "--bundle"]
    command += [str(args.models_dir / args.model), "--port", str(port)]
    command += ["--engine-threads", str(layout.engine_threads), "--http-threads", str(layout.http_threads)]
    peer = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url)
        run_clients(url, "", "", uploads, 2, 2)  # warm-up
        return load(url, "", "", uploads, 1, args.seconds, peer.pid)
    finally:
        peer.terminate()
        peer.wait(30)


# --- the report ------------------------------------------------------------------------------------
def _errors(run: Run) -> str:
    return ", ".join(f"{k}: {v}" for k, v in run.errors.items()) or "0"


def cost_row(cell: Cell, cores: int) -> str:
    run = cell.run
    core_ms = run.server_ms + run.client_ms
    stages = " | ".join(f"{cell.profile.get(s, 0.0):.1f}" for s in STAGES)
    return (
        f"| {cell.engine} | {cell.input} | {cell.heatmaps} | {stages} | **{run.server_ms:.1f}** | {run.client_ms:.1f} | "
        f"{limit(cores, run.server_ms):.1f} | {limit(cores, core_ms):.1f} | {run.rps:.1f} | "
        f"{run.rps / limit(cores, core_ms):.0%} | {run.p50:.0f} | {run.p99:.0f} | {_errors(run)} |"
    )


def timer_row(cell: Cell) -> str:
    timed = [cell.timers.get(s, 0.0) for s in ("receive/parse", "decode", "preprocess", "forward", "overlay")]
    timed += [cell.timers.get(s, 0.0) for s in ("JSON/base64", "audit")]
    rest = cell.run.server_ms - sum(timed)
    return (
        f"| {cell.engine} | {cell.input} | {cell.heatmaps} | "
        + " | ".join(f"{v:.1f}" for v in timed)
        + f" | {rest:.1f} | {cell.run.server_ms:.1f} | {cell.profiler_ms:.1f} |"
    )


def _verdict(ok: bool | None) -> str:
    return "not measured" if ok is None else ("PASS" if ok else "**MISS**")


def targets(cells: list[Cell], loads: dict, peer: Run, skipped: dict[str, str], cores: int) -> list[str]:
    at = {c.engine: c for c in cells if c.input == "PNG" and c.heatmaps == "top"}
    ort, bf16 = at.get("onnxruntime fp32"), at.get("openvino bf16")
    rows = []
    if ort and bf16:
        ratio = bf16.run.rps / ort.run.rps
        rows.append(
            f"| OpenVINO bf16 ≥ 1.8x ONNX Runtime fp32 requests/s (4 clients, PNG, heatmaps=top) | {ratio:.2f}x "
            f"({bf16.run.rps:.1f} / {ort.run.rps:.1f}) | {_verdict(ratio >= 1.8)} |"
        )
    else:
        why = skipped.get("openvino bf16", "not in --engines")
        others = ", ".join(
            f"{e} {c.run.rps / ort.run.rps:.2f}x" for e, c in at.items() if ort and e != "onnxruntime fp32"
        )
        rows.append(
            f"| OpenVINO bf16 ≥ 1.8x ONNX Runtime fp32 requests/s (4 clients, PNG, heatmaps=top) | {why}"
            + (f" (for comparison: {others})" if others else "")
            + f" | {_verdict(None)} |"
        )
    for engine, cell in at.items():
        share = cell.run.rps / limit(cores, cell.run.server_ms + cell.run.client_ms)
        rows.append(
            f"| {engine}: service ≥ 80 % of its own limit (4 clients, PNG, heatmaps=top) | {share:.0%} "
            f"({cell.run.rps:.1f} of {limit(cores, cell.run.server_ms + cell.run.client_ms):.1f}/s) | "
            f"{_verdict(share >= 0.8)} |"
        )
    run16 = loads.get(("openvino bf16", 16))
    if run16:
        rows.append(
            f"| OpenVINO bf16 p99 ≤ 500 ms at 16 clients (PNG, heatmaps=top) | {run16.p99:.0f} ms | "
            f"{_verdict(run16.p99 <= 500)} |"
        )
    else:
        others = ", ".join(f"{e} {r.p99:.0f} ms" for (e, c), r in loads.items() if c == 16)
        rows.append(
            f"| OpenVINO bf16 p99 ≤ 500 ms at 16 clients (PNG, heatmaps=top) | "
            f"{skipped.get('openvino bf16', 'not in --engines')}"
            + (f" (for comparison: {others})" if others else "")
            + f" | {_verdict(None)} |"
        )
    single = loads.get(("onnxruntime fp32", 1))
    if single:
        rows.append(
            f"| single-client p50 of the service (ONNX Runtime fp32, PNG, heatmaps=top) ≤ the FastAPI + ONNX "
            f"Runtime peer's | {single.p50:.0f} ms against {peer.p50:.0f} ms | {_verdict(single.p50 <= peer.p50)} |"
        )
    return rows


def report(args, cores, cells, loads, peer, skipped, minutes) -> str:
    stage_heads = " | ".join(STAGES)
    loads_rows = [
        f"| {engine} | {clients} | {r.ok} | {_errors(r)} | {r.rps:.1f} | {r.p50:.0f} | {r.p99:.0f} | "
        f"{r.server_ms:.1f} | {r.client_ms:.1f} |"
        for (engine, clients), r in loads.items()
    ]
    loads_rows.append(
        f"| FastAPI + ONNX Runtime peer (bench/peer_fastapi.py) | 1 | {peer.ok} | {_errors(peer)} | {peer.rps:.1f} | "
        f"{peer.p50:.0f} | {peer.p99:.0f} | {peer.server_ms:.1f} | {peer.client_ms:.1f} |"
    )
    dicom = ", ".join(args.dicom.split(","))
    return "\n".join(
        [
            f"## Request cost model (`bench/request_cost.py`, {dt.date.today().isoformat()})",
            f"Machine: {machine()}. Server: `python -m chexnet serve` (waitress, the service's layout for these "
            f"{cores} cores, {args.model} demo bundle at 224 px, licence check, audit log fsynced per request); "
            f"client: Python threads in the benchmark's process on the same cores. Inputs: the NIH 1024² PNGs, the "
            f"same as 8-bit JPEG (quality 90), DICOM {dicom}; each request asks for all findings and the heatmaps "
            f"shown (JPEG). {args.clients} clients, closed loop; {args.profile_seconds:.0f} s profiled, then "
            f"{args.seconds:.0f} s measured per row; {minutes:.1f} min in all.",
            "",
            "Core-milliseconds per request by stage (py-spy samples of the server's Python threads, each thread's "
            "CPU time split by its samples; threads that run no Python, the engine's own pools, count as forward). "
            "Server and client: all their threads' CPU time per request in the measured window. Limit: cores × "
            "1000 / core-ms per request, for the server alone and for server + client (what this machine can do "
            "with the client on it); share: measured requests/s against the latter.",
            "",
            f"| engine | input | heatmaps | {stage_heads} | server core-ms | client core-ms | limit, server "
            "alone /s | limit /s | requests/s | share | p50 ms | p99 ms | errors |",
            "| --- " * (3 + len(STAGES) + 9) + "|",
            *(cost_row(c, cores) for c in cells),
            "",
            "The service's own timers in the same measured windows (CPU ms per request: chexnet_stage_cpu_seconds, "
            "the CPU time of the thread that ran each stage; forward: the engine's threads from /proc, the CAM "
            "included), what they leave untimed (waitress, Flask, the licence check, metrics) and py-spy's own cost "
            "in the profiled window:",
            "",
            "| engine | input | heatmaps | receive/parse | decode | preprocess | forward | overlay | JSON/base64 | "
            "audit | untimed | server core-ms | py-spy core-ms |",
            "| --- " * 13 + "|",
            *(timer_row(c) for c in cells),
            "",
            "Other loads (PNG, heatmaps=top; the peer answers probabilities only):",
            "",
            "| server | clients | requests | errors | requests/s | p50 ms | p99 ms | server core-ms | client core-ms |",
            "| --- " * 9 + "|",
            *loads_rows,
            "",
            "Targets (issue 26), all from this run:",
            "",
            "| target | measured | verdict |",
            "| --- | --- | --- |",
            *targets(cells, loads, peer, skipped, cores),
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
