"""bench/gpu_check.py's results as markdown tables: one section each, in the order measured, for BENCHMARKS.md."""


def _cell(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.2e}" if 0 < abs(value) < 1e-2 else f"{value:g}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_cell(v)}" for k, v in value.items()) or "0"
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value) or "none"
    return str(value).replace("|", "/")


def _table(header: list[str], rows: list[list]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + " --- |" * len(header),
        *("| " + " | ".join(_cell(c) for c in row) + " |" for row in rows),
    ]


def _failed(section: dict) -> list[str]:
    return [f"**Failed:** `{section['error']}`", "", "```", section.get("traceback", "").strip(), "```"]


def environment(env: dict) -> list[str]:
    keys = (
        "gpu",
        "driver",
        "cuda",
        "cudnn",
        "torch",
        "torch_arch_list",
        "torch_built_for",
        "compute_capability",
        "gpu_memory_gib",
        "machine",
        "cores",
        "python",
        "numpy",
        "onnxruntime",
        "openvino",
    )
    return _table(["what", "value"], [[k, env.get(k)] for k in keys if k in env])


def correctness(c: dict) -> list[str]:
    fp16 = c.get("fp16_startup_check", {})
    rows = [
        [
            "torch fp32 on the device vs ONNX Runtime fp32 (CPU): max abs dp",
            c["fp32_max_dp"],
            "1e-4",
            c["fp32_max_dp"] <= 1e-4,
        ],
        [
            "... CAMs after min-max normalisation: max abs difference",
            c["fp32_max_dcam"],
            "1e-4",
            c["fp32_max_dcam"] <= 1e-4,
        ],
    ]
    if "tf32_max_dp" in c:
        rows.append(
            ["TF32 convolutions (cuDNN's default, off in the engine) vs ONNX Runtime", c["tf32_max_dp"], "", ""]
        )
    rows.append(["bf16 autocast vs torch fp32: max abs dp", c["bf16_autocast_max_dp"], "", ""])
    if "refused" in fp16:
        rows.append(["fp16 start-up check (the service's)", fp16["refused"], "", False])
    else:
        rows.append(
            [
                f"fp16 autocast vs torch fp32: the service's start-up check on {fp16.get('images')} calibration "
                f"images ({fp16.get('flips')} of {fp16.get('decisions')} decisions flipped)",
                fp16.get("max_delta"),
                fp16.get("max_delta_bound"),
                fp16.get("max_delta", 1) <= fp16.get("max_delta_bound", 0),
            ]
        )
    return [f"{c['images']} sample images on {c['device']}.", "", *_table(["check", "value", "bound", "within"], rows)]


def forward(f: dict) -> list[str]:
    modes = list(dict.fromkeys(r["mode"] for r in f["rows"]))
    batches = list(dict.fromkeys(r["batch"] for r in f["rows"]))
    cell = {(r["mode"], r["batch"]): r.get("images_per_s", r.get("skipped")) for r in f["rows"]}
    return [
        f"Images/s at {f['input']} px (random input on the device; the engine's call from and to host memory).",
        "",
        *_table(["batch", *modes], [[b, *(cell.get((m, b)) for m in modes)] for b in batches]),
    ]


def service(s: dict) -> list[str]:
    header = [
        "max batch",
        "precision",
        "clients",
        "requests/s",
        "p50 ms",
        "p99 ms",
        "errors",
        "GPU util %",
        "mean batch",
        "share of engine rate",
        "server cores (Python)",
        "client cores",
        "bottleneck",
    ]
    rows = []
    for r in s["rows"]:
        if "requests_per_s" in r:
            rows.append(
                [
                    r["max_batch"],
                    r["precision"],
                    r["clients"],
                    r["requests_per_s"],
                    r["p50_ms"],
                    r["p99_ms"],
                    r["errors"],
                    r["gpu_util_pct"],
                    r["mean_batch"],
                    r["share_of_engine_rate"],
                    f"{r['server_cores']} ({r['python_cores']})",
                    r["client_cores"],
                    r["bottleneck"],
                ]
            )
        else:
            rows.append(
                [
                    r.get("max_batch"),
                    r.get("precision"),
                    r.get("clients", "all"),
                    r.get("skipped") or r.get("error"),
                    *[""] * 9,
                ]
            )
    return [
        f"`python -m chexnet serve`, torch engine, one engine worker, waitress threads max(8, 2 × max batch), "
        f"{s['decode_slots']} decode slots; each request a 1024² PNG upload, all findings, one JPEG heatmap; "
        f"{s['seconds_per_row']:g} s per row; JSON + base64 of a response: {s['json_base64_ms']} ms. Share of engine "
        "rate: requests/s over the engine call's images/s at the max batch (forward table).",
        "",
        *_table(header, rows),
        "",
        *(f"- {k}: {_cell(v)}" for k, v in s.get("servers", {}).items()),
    ]


def cpu_engines(c: dict) -> list[str]:
    header = [
        "engine, precision",
        "workers × threads",
        "layout",
        "clients",
        "requests/s",
        "p50 ms",
        "p99 ms",
        "errors",
        "server cores (Python)",
        "decode busy",
        "bottleneck",
    ]
    rows = []
    for r in c["rows"]:
        first = [f"{r['engine']} {r['precision']}", f"{r['workers']} × {r['threads']}", r["layout"]]
        if "requests_per_s" in r:
            rows.append(
                [
                    *first,
                    r["clients"],
                    r["requests_per_s"],
                    r["p50_ms"],
                    r["p99_ms"],
                    r["errors"],
                    f"{r['server_cores']} ({r['python_cores']})",
                    r["decode_busy"],
                    r["bottleneck"],
                ]
            )
        else:
            rows.append([*first, "all", r.get("skipped") or r.get("error"), *[""] * 6])
    return [
        f"{c['cores']} cores, max batch 1, {c['decode_slots']} decode slots, the load client on the same "
        f"machine; {c['seconds_per_row']:g} s per row.",
        "",
        *_table(header, rows),
    ]


def bundle(b: dict) -> list[str]:
    return [
        f"A cxr10 demo bundle built here from the sample images: validated variants {_cell(b['variants'])}, "
        f"measured at start-up {_cell(b['startup_variants'])}."
    ]


RENDER = {
    "environment": ("Environment", environment),
    "bundle": ("Bundle", bundle),
    "correctness": ("Correctness", correctness),
    "forward": ("Bare forward", forward),
    "service": ("The service under load", service),
    "cpu_engines": ("CPU engines on this machine's cores", cpu_engines),
}


def markdown(results: dict) -> str:
    env = results.get("environment", {})
    title = (
        "GPU check (`bench/gpu_check.py"
        + (" --dry`, CPU only" if results.get("dry") else "`")
        + f", {results.get('date')}): {env.get('gpu', 'no GPU')}, driver {env.get('driver', 'n/a')}, CUDA {env.get('cuda')}"
    )
    lines = [f"## {title}", ""]
    for name, (heading, render) in RENDER.items():
        if name not in results:
            continue
        section = results[name]
        lines += [f"### {heading} ({results.get('seconds', {}).get(name, '?')} s)", ""]
        lines += _failed(section) if "error" in section else render(section)
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
