"""Image sizes: uncompressed (docker image inspect) and compressed (docker save | gzip -6), plus the
offline package, written to BENCHMARKS.md with --write.

    python bench/image_sizes.py --version 0.1.0 --write BENCHMARKS.md
"""

import argparse
import datetime as dt
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, write_section  # noqa: E402


def compressed_size(image: str) -> int:
    """Bytes of `docker save IMAGE | gzip -6` (pigz where installed), streamed, never held in memory."""
    gzip = shutil.which("pigz") or "gzip"
    save = subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE)
    compress = subprocess.Popen([gzip, "-6", "-c"], stdin=save.stdout, stdout=subprocess.PIPE)
    save.stdout.close()
    total = sum(len(block) for block in iter(lambda: compress.stdout.read(1 << 20), b""))
    if compress.wait() or save.wait():
        raise SystemExit(f"docker save {image} | {gzip} failed")
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", required=True)
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    rows = []
    for name in ("chexnet-api-cpu", "chexnet-api-gpu", "chexnet-nginx"):
        image = f"{name}:{args.version}"
        size = int(
            subprocess.run(
                ["docker", "image", "inspect", "-f", "{{.Size}}", image], check=True, capture_output=True, text=True
            ).stdout
        )
        rows.append(f"| {image} | {size / 1e6:,.0f} MB | {compressed_size(image) / 1e6:,.0f} MB |")
        print(rows[-1], flush=True)
    package = Path("dist") / f"chexnet-offline-{args.version}-cpu.tar.gz"
    if package.exists():
        rows.append(
            f"| {package.name} (CPU API + nginx, shared base layers) | | {package.stat().st_size / 1e6:,.0f} MB |"
        )
    body = "\n".join(
        [
            f"## Image sizes (`bench/image_sizes.py`, {dt.date.today().isoformat()})",
            f"Machine: {machine()}. Compressed: `docker save` through gzip level 6.",
            "",
            "| image | uncompressed | compressed |",
            "| --- | --- | --- |",
            *rows,
        ]
    )
    print(body)
    if args.write:
        write_section(args.write, "images", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
