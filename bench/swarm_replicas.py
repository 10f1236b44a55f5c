"""Requests/s of the Swarm stack with 1 and 2 API replicas (issue 14), through nginx, closed loop.

Needs the stack `chexnet` deployed on this node by scripts/swarm-deploy.sh (the field guide's
"Regional centre"; `--no-publish` is enough) and the cluster's token. For each replica count it
scales `chexnet_api` (`docker service scale`, which waits until the tasks are healthy), runs
test/closed_loop.py in a container on the stack's network `chexnet_front` (new HTTPS connection per
request, one PNG, the default heatmap) for a warm-up and then --seconds, and with --write puts the
table into BENCHMARKS.md. The stack is scaled back to the replica count it had.

    python bench/swarm_replicas.py --token-file token.txt --image ../shared/data/nih/00000075_000.png --write BENCHMARKS.md
"""

import argparse
import datetime as dt
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, write_section  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SERVICE = "chexnet_api"


def docker(*args: str) -> str:
    return subprocess.run(["docker", *args], check=True, capture_output=True, text=True).stdout.strip()


def run_load(image_tag: str, work: Path, clients: int, seconds: float) -> dict:
    """The closed-loop client for SECONDS; its summary."""
    (work / "stop").unlink(missing_ok=True)
    (work / "progress.json").unlink(missing_ok=True)
    name = "chexnet-bench-load"
    subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=False)
    docker(
        "run",
        "-d",
        "--name",
        name,
        "--network",
        "chexnet_front",
        "--user",
        "0",
        "-v",
        f"{ROOT / 'test'}:/src:ro",
        "-v",
        f"{work}:/out",
        image_tag,
        "python",
        "/src/closed_loop.py",
        "--url",
        "https://nginx:8443",
        "--token-file",
        "/out/token",
        "--image",
        "/out/image",
        "--clients",
        str(clients),
        "--stop-file",
        "/out/stop",
        "--out",
        "/out/progress.json",
    )
    try:
        time.sleep(seconds)
        (work / "stop").touch()
        docker("wait", name)
        return json.loads((work / "progress.json").read_text())
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--token-file", required=True, type=Path, help="the cluster's token")
    parser.add_argument(
        "--image", required=True, type=Path, help="a chest PNG, e.g. ../shared/data/nih/00000075_000.png"
    )
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--warmup", type=float, default=10)
    parser.add_argument("--write", type=Path, help="BENCHMARKS.md to update")
    args = parser.parse_args()

    image_tag = docker("service", "inspect", "-f", "{{.Spec.TaskTemplate.ContainerSpec.Image}}", SERVICE).split("@")[0]
    before = docker("service", "inspect", "-f", "{{.Spec.Mode.Replicated.Replicas}}", SERVICE)
    rows = []
    with tempfile.TemporaryDirectory(prefix="chexnet-bench-") as scratch:
        work = Path(scratch)
        work.chmod(0o755)
        shutil.copy(args.token_file, work / "token")
        shutil.copy(args.image, work / "image")
        try:
            for replicas in args.replicas:
                docker("service", "scale", "--detach=false", f"{SERVICE}={replicas}")
                time.sleep(3)  # nginx re-reads tasks.api every 2 s
                run_load(image_tag, work, args.clients, args.warmup)
                result = run_load(image_tag, work, args.clients, args.seconds)
                print(f"{replicas} replica(s): {json.dumps(result)}", flush=True)
                rows.append((replicas, result))
        finally:
            docker("service", "scale", "--detach=false", f"{SERVICE}={before}")

    table = ["| API replicas | clients | requests/s | answered | failed | retried 503 |", "|---|---|---|---|---|---|"]
    table += [
        f"| {n} | {args.clients} | {r['requests_per_s']:.2f} | {r['ok']} | {r['failed']} | {r['retried_503']} |"
        for n, r in rows
    ]
    body = "\n".join(
        [
            "## Swarm stack: API replicas (issue 14)",
            "",
            f"Machine: {machine()}; one node, so the replicas share its cores with nginx and the load client.",
            f"Image `{image_tag}`, run {dt.date.today().isoformat()} by `bench/swarm_replicas.py`: closed loop through the",
            f"stack's nginx on `chexnet_front`, a new HTTPS connection per request, {args.image.name} with the default heatmap (top finding),",
            f"{args.warmup:.0f} s warm-up then {args.seconds:.0f} s per row.",
            "",
            *table,
        ]
    )
    print(body)
    if args.write:
        write_section(args.write, "swarm-replicas", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
