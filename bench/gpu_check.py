"""The GPU image's engine proved on whatever GPU is lent, in one command (issue 22; BENCHMARKS.md "GPU").

    python bench/gpu_check.py --out DIR            # on a GPU machine: at most --budget-s (420) seconds
    python bench/gpu_check.py --dry --out DIR      # the same code paths on the CPU, two images (make test runs it)

Writes DIR/gpu_check.json and DIR/gpu_check.md (rewritten after every section, so a run cut short keeps what
it measured), each with these sections:
- environment: GPU, driver, CUDA, torch and its arch list, cuDNN, the CPU;
- correctness: the torch engine on the device in fp32 against ONNX Runtime on the CPU over every sample image,
  probabilities and CAMs after normalisation (both within 1e-4); TF32 and bf16 autocast against it; fp16 as the
  service measures it at start-up on the bundle's calibration images (the same sample images);
- forward: bare forward images/s at 224 px per batch size, eager NCHW, channels_last, a CUDA graph, fp16
  autocast, and the engine's whole call;
- service: ``python -m chexnet serve`` (torch engine) under a closed loop of 1 to 256 clients for max batch
  1, 16 and 64 (and fp16): requests/s, p50/p99, GPU utilisation, the service's share of the engine's own
  batched rate, and the bottleneck named;
- cpu_engines: ONNX Runtime and OpenVINO (fp32, and bf16 where the CPU has it) at the layout chexnet/cpu.py
  picks for the machine's cores and two others, at 16 and 64 clients.
A section that fails records its error and the rest still run; rows past the time budget are marked skipped.
"""

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import chexnet  # noqa: E402
from chexnet.bundle import load_bundle  # noqa: E402
from chexnet.bundle.build import write_demo_bundle  # noqa: E402
from chexnet.bundle.calibration import calibration_tensors  # noqa: E402
from chexnet.bundle.variants import VariantRequest  # noqa: E402
from chexnet.cpu import available_cores, engine_layout  # noqa: E402
from chexnet.imaging.gate import default_concurrency  # noqa: E402
from common import machine  # noqa: E402

SECTIONS = ("environment", "bundle", "correctness", "forward", "service", "cpu_engines")
SAMPLES = (ROOT / ".gpu-samples", ROOT.parent / "shared" / "data" / "nih")  # the first that exists


class Plan:
    """What a run measures: the full matrix on a GPU, a small one on the CPU with --dry."""

    def __init__(self, dry: bool):
        self.dry = dry
        self.device = "cpu" if dry else "cuda"
        self.batches = (1, 2) if dry else (1, 8, 16, 32, 64, 128, 256)
        self.forward_min_s = 0.0 if dry else 0.8  # --dry: one warm-up and one timed call a row
        self.start_s = 10 if dry else 25  # what a server's start may take, kept free of the budget before one
        self.max_batches = (2,) if dry else (1, 16, 64)
        self.clients = (1, 2) if dry else (1, 16, 64, 256)
        self.fp16_clients = () if dry else (64, 256)  # fp16 on the CPU costs seconds an image: GPU only
        self.cpu_clients = (2,) if dry else (16, 64)
        self.cpu_layouts = 1 if dry else 3
        self.cpu_engines = ("onnxruntime",) if dry else ("onnxruntime", "openvino")
        self.images = 2 if dry else 0  # 0: every sample image
        self.calibration = 1 if dry else 0  # images the bundle keeps for fp16 (fp16 on a CPU: seconds an image)


class Check:
    def __init__(self, out: Path, plan: Plan, budget_s: float, seconds: float):
        self.out, self.plan, self.seconds = out, plan, seconds
        self.deadline = time.monotonic() + budget_s
        self.results: dict = {"date": dt.date.today().isoformat(), "dry": plan.dry, "budget_s": budget_s}
        out.mkdir(parents=True, exist_ok=True)

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def section(self, name: str, run) -> None:
        started = time.monotonic()
        try:
            self.results[name] = run()
        except BaseException as exc:  # a section's failure (SystemExit from a helper too) is recorded, not fatal
            if isinstance(exc, KeyboardInterrupt):
                raise
            self.results[name] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-2000:]}
        self.results.setdefault("seconds", {})[name] = round(time.monotonic() - started, 1)
        self.write()
        print(
            f"[gpu_check] {name}: {self.results['seconds'][name]} s"
            + (
                f" — {self.results[name]['error']}"
                if isinstance(self.results[name], dict) and "error" in self.results[name]
                else ""
            ),
            file=sys.stderr,
            flush=True,
        )

    def write(self) -> None:
        from gpu_report import markdown

        for name, text in (
            ("gpu_check.json", json.dumps(self.results, indent=1, default=str)),
            ("gpu_check.md", markdown(self.results)),
        ):
            tmp = self.out / f".{name}.tmp"
            tmp.write_text(text + "\n", encoding="utf-8")
            tmp.replace(self.out / name)


# --- sections ---------------------------------------------------------------------------------------------
def environment(plan: Plan) -> dict:
    import torch

    env = {
        "machine": machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "torch_arch_list": torch.cuda.get_arch_list(),
        "torch_built_for": torch._C._cuda_getArchFlags().split(),
        "cuda_available": torch.cuda.is_available(),
        "cores": available_cores(),
    }
    for package in ("numpy", "onnxruntime", "openvino"):
        try:
            env[package] = __import__(package).__version__
        except ImportError:
            env[package] = None
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
        env["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
        env["compute_capability"] = "sm_%d%d" % torch.cuda.get_device_capability(0)
    if shutil.which("nvidia-smi"):
        smi = (
            subprocess.run(
                ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=30,
            )
            .stdout.strip()
            .splitlines()
        )
        env["nvidia_smi"] = smi
        env["driver"] = smi[0].split(",")[-1].strip() if smi else None
    elif not plan.dry:
        raise RuntimeError("no nvidia-smi: not a GPU machine (use --dry on the CPU)")
    return env


def sample_paths(directory: Path, count: int) -> list[Path]:
    paths = sorted(p for p in directory.iterdir() if p.suffix.lower() == ".png")
    if not paths:
        raise SystemExit(f"no PNG sample images in {directory}")
    return paths[:count] if count else paths


def make_bundle(work: Path, samples: list[Path], plan: Plan) -> Path:
    """A cxr10 demo bundle carrying fp16 calibration inputs (the sample images; --dry: the first) and, where this
    CPU can measure it (and not --dry), the bf16 OpenVINO variant."""
    for folder, chosen in (("samples", samples), ("calibration", samples[: plan.calibration or len(samples)])):
        (work / folder).mkdir()
        for path in chosen:
            (work / folder / path.name).symlink_to(path.resolve())
    calibration = work / "calibration"
    precisions = ("fp16",)
    if not plan.dry:
        try:
            import openvino as ov

            from chexnet.engines.openvino import cpu_runs_bf16

            if cpu_runs_bf16(ov.Core()):
                precisions += ("bf16",)
        except ImportError:
            pass
    return write_demo_bundle(work / "models" / "cxr10", "cxr10", variants=VariantRequest(precisions, calibration, 0.01))


def service_section(check: Check, models_dir: Path, images: list[bytes], forward: dict) -> dict:
    from gpu_service import Licence, bottleneck, json_base64_ms, measured_row, models, serving

    plan, cores = check.plan, available_cores()
    decode_slots = default_concurrency(cores)
    json_ms = json_base64_ms(images[0])
    served_rate = {
        r["batch"]: r["images_per_s"]
        for r in forward.get("rows", [])
        if r["mode"].startswith("engine.infer") and "images_per_s" in r
    }
    licence = Licence(Path(tempfile.mkdtemp(prefix="gpu-check-licence-")), "cxr10")
    configs = [(b, "fp32", plan.clients) for b in plan.max_batches]
    if plan.fp16_clients:
        configs.append((max(plan.max_batches), "fp16", plan.fp16_clients))
    rows, startup = [], {}
    for max_batch, precision, clients in configs:
        if check.left() < check.seconds * len(clients) + plan.start_s:
            rows.append({"max_batch": max_batch, "precision": precision, "skipped": "time budget"})
            continue
        env = {
            "CHEXNET_ENGINE": "torch",
            "CHEXNET_DEVICE": plan.device,
            "CHEXNET_PRECISION": precision,
            "CHEXNET_MAX_BATCH": str(max_batch),
            "CHEXNET_ENGINE_WORKERS": "1",
            "CHEXNET_THREADS": str(max(8, 2 * max_batch)),
            "CHEXNET_DECODE_CONCURRENCY": str(decode_slots),
            "CHEXNET_QUEUE_SIZE": "1024",
            "CHEXNET_MODELS": "cxr10",
        }
        try:
            with serving(models_dir, licence, env) as (url, server):
                info = models(url, licence.token)[0]
                startup[f"{precision}, max batch {max_batch}"] = {k: info[k] for k in ("engine", "device", "precision")}
                if precision == "fp16":
                    startup["fp16 measured at start-up"] = info["variants"].get("fp16")
                from gpu_service import closed_loop

                closed_loop(url, licence.token, images, 2, min(1.0, check.seconds))  # warm-up
                for n in clients:
                    if check.left() < check.seconds + 5:
                        rows.append(
                            {"max_batch": max_batch, "precision": precision, "clients": n, "skipped": "time budget"}
                        )
                        continue
                    row = measured_row(
                        url,
                        server,
                        licence.token,
                        images,
                        n,
                        check.seconds,
                        decode_slots,
                        1,
                        0 if plan.device == "cuda" else cores,
                    )
                    rate = served_rate.get(max_batch)
                    row.update(
                        {
                            "max_batch": max_batch,
                            "precision": precision,
                            "share_of_engine_rate": round(row["requests_per_s"] / rate, 3) if rate else None,
                            "bottleneck": bottleneck(row, max_batch, json_ms),
                        }
                    )
                    rows.append(row)
        except RuntimeError as exc:
            rows.append({"max_batch": max_batch, "precision": precision, "error": str(exc)})
    return {
        "rows": rows,
        "servers": startup,
        "json_base64_ms": round(json_ms, 2),
        "decode_slots": decode_slots,
        "seconds_per_row": check.seconds,
    }


def layouts(cores: int, count: int) -> list[tuple[int, int, str]]:
    """chexnet/cpu.py's layout for these cores, then half as many workers with twice the threads, then the reverse."""
    workers, threads = engine_layout(cores)
    out = [(workers, threads, "default (chexnet/cpu.py)")]
    for w, t in ((workers // 2, threads * 2), (workers * 2, threads // 2)):
        if w >= 1 and t >= 1 and len(out) < count:
            out.append((w, t, "alternative"))
    return out


def cpu_section(check: Check, models_dir: Path, images: list[bytes]) -> dict:
    from gpu_service import Licence, bottleneck, closed_loop, json_base64_ms, measured_row, serving

    plan, cores = check.plan, available_cores()
    bundle = load_bundle(models_dir / "cxr10")
    engines = [(engine, "fp32") for engine in plan.cpu_engines]
    if "openvino" in plan.cpu_engines and "bf16" in bundle.manifest.variants:
        engines.append(("openvino", "bf16"))
    decode_slots = default_concurrency(cores)
    json_ms = json_base64_ms(images[0])
    licence = Licence(Path(tempfile.mkdtemp(prefix="gpu-check-licence-")), "cxr10")
    rows = []
    for engine, precision in engines:
        for workers, threads, kind in layouts(cores, plan.cpu_layouts):
            base = {"engine": engine, "precision": precision, "workers": workers, "threads": threads, "layout": kind}
            if check.left() < check.seconds * len(plan.cpu_clients) + plan.start_s:
                rows.append({**base, "skipped": "time budget"})
                continue
            env = {
                "CHEXNET_ENGINE": engine,
                "CHEXNET_PRECISION": precision,
                "CHEXNET_MAX_BATCH": "1",
                "CHEXNET_ENGINE_WORKERS": str(workers),
                "CHEXNET_ENGINE_THREADS": str(threads),
                "CHEXNET_DECODE_CONCURRENCY": str(decode_slots),
                "CHEXNET_QUEUE_SIZE": "1024",
                "CHEXNET_MODELS": "cxr10",
            }
            try:
                with serving(models_dir, licence, env) as (url, server):
                    closed_loop(url, licence.token, images, 2, min(1.0, check.seconds))  # warm-up
                    for n in plan.cpu_clients:
                        row = measured_row(
                            url, server, licence.token, images, n, check.seconds, decode_slots, workers, threads
                        )
                        row.update(base, bottleneck=bottleneck(row, 1, json_ms))
                        rows.append(row)
            except RuntimeError as exc:
                rows.append({**base, "error": str(exc)})
    return {"rows": rows, "cores": cores, "decode_slots": decode_slots, "seconds_per_row": check.seconds}


def _release_gpu() -> None:
    """The servers measured next have the GPU to themselves (but for what this process's CUDA context holds)."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json and gpu_check.md")
    parser.add_argument("--dry", action="store_true", help="the CPU, two images, small matrix (make test)")
    parser.add_argument(
        "--samples", type=Path, help="folder of 1024² PNGs (default: .gpu-samples, else ../shared/data/nih)"
    )
    parser.add_argument("--budget-s", type=float, help="seconds for everything (default 420; --dry 90)")
    parser.add_argument("--seconds", type=float, help="seconds per load row (default 5; --dry 1)")
    args = parser.parse_args(argv)
    plan = Plan(args.dry)
    samples_dir = args.samples or next((p for p in SAMPLES if p.is_dir()), SAMPLES[0])
    check = Check(args.out, plan, args.budget_s or (90 if args.dry else 420), args.seconds or (1.0 if args.dry else 5))
    chexnet.configure()
    os.environ.setdefault("CHEXNET_LOG_LEVEL", "WARNING")
    import gpu_forward

    check.section("environment", lambda: environment(plan))
    samples = sample_paths(samples_dir, plan.images)
    images = [p.read_bytes() for p in samples]
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as work:
        work = Path(work)
        state: dict = {}

        def build():
            state["bundle"] = load_bundle(make_bundle(work, samples, plan))
            return {
                "variants": sorted(state["bundle"].manifest.variants),
                "startup_variants": sorted(state["bundle"].manifest.startup_variants),
            }

        check.section("bundle", build)
        if "bundle" not in state:
            return 1
        bundle = state.pop("bundle")
        m = bundle.manifest
        x = calibration_tensors(work / "samples", m.input_size, m.mean, m.std)

        def correctness():
            result, state["engine"] = gpu_forward.correctness(bundle, x, plan.device)
            return {**result, "samples": [p.name for p in samples]}

        check.section("correctness", correctness)

        def forward():
            engine = state.get("engine") or gpu_forward.create_engine(bundle, "torch", plan.device)
            return {
                "rows": gpu_forward.forward_rows(bundle, engine, plan.batches, plan.forward_min_s, check.deadline),
                "input": m.input_size,
            }

        check.section("forward", forward)
        state.clear()
        _release_gpu()
        check.section("service", lambda: service_section(check, work / "models", images, check.results["forward"]))
        check.section("cpu_engines", lambda: cpu_section(check, work / "models", images))
    print((args.out / "gpu_check.md").read_text(encoding="utf-8"))
    failed = [name for name in SECTIONS if "error" in check.results.get(name, {})]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
