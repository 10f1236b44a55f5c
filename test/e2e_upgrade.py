"""Checks of an installed site for the upgrade and rollback steps of test/e2e.sh.

``snapshot --dir D --out F`` records what an upgrade must keep (certificates, audit log, models, the
customer's .env settings). ``installed --dir D --version V --token T --max-upload-mb N [--same-as F]
[--thresholds bundle|site]`` asserts that version V runs healthy from D, answers a prediction through nginx
(decided by the bundle's or the site's calibrated thresholds), keeps the customer's upload limit, and (with
--same-as) kept everything the snapshot recorded. Exits 1 with the reason.
"""

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import requests

URL = "https://localhost:18443"
SAMPLE = Path(__file__).resolve().parent.parent.parent / "shared/data/nih/00000075_000.png"


def env_file(site: Path) -> dict[str, str]:
    pairs = (
        line.split("=", 1)
        for line in (site / ".env").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    return dict(pairs)


def snapshot(site: Path) -> dict:
    settings = env_file(site)
    settings.pop("CHEXNET_VERSION")
    return {
        "certs": {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((site / "certs").iterdir())},
        "audit": (site / "audit/audit.jsonl").read_text().splitlines(),
        "models": sorted(str(p.relative_to(site)) for p in (site / "models").rglob("*")),
        "settings": settings,
    }


def compose() -> list[str]:
    return (
        ["docker", "compose"]
        if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0
        else [shutil.which("docker-compose")]
    )


def running_image(site: Path) -> str:
    api = subprocess.run(
        [*compose(), "ps", "-q", "api"], cwd=site, check=True, capture_output=True, text=True
    ).stdout.strip()
    return subprocess.run(
        ["docker", "inspect", "-f", "{{.Config.Image}} {{.State.Health.Status}}", api],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def installed(args) -> None:
    site = Path(args.dir)
    settings = env_file(site)
    expect(
        settings["CHEXNET_VERSION"] == args.version,
        f".env says version {settings['CHEXNET_VERSION']}, not {args.version}",
    )
    image = running_image(site)
    expect(
        image == f"chexnet-api-cpu:{args.version} healthy",
        f"the API runs '{image}', not version {args.version} healthy",
    )
    token = Path(args.token).read_text().strip()
    auth = {"Authorization": f"Bearer {token}"}
    ca = str(site / "certs/server.crt")
    response = requests.post(
        f"{URL}/api/v1/predict", headers=auth, files={"image": SAMPLE.read_bytes()}, verify=ca, timeout=120
    )
    expect(
        response.status_code == 200 and len(response.json()["findings"]) == 10,
        f"prediction: {response.status_code} {response.text[:200]}",
    )
    model = response.json()["model"]
    if args.engine:
        expect(
            (model["engine"], model["precision"]) == (args.engine, args.precision),
            f"the API answers with {model['engine']} {model['precision']}, not {args.engine} {args.precision} from .env",
        )
    if args.thresholds == "site":
        site_file = site / "license/site-thresholds.json"
        digest = json.loads(site_file.read_text())["content_sha256"] if site_file.is_file() else "(no file)"
        expect(
            model["thresholds"].startswith("site@") and digest.startswith(model["thresholds"][5:]),
            f"the answer's thresholds are '{model['thresholds']}', not the installed site file's ({digest})",
        )
    else:
        expect(model["thresholds"] == "bundle", f"the answer's thresholds are '{model['thresholds']}', not 'bundle'")
    too_big = requests.post(
        f"{URL}/api/v1/predict",
        headers={**auth, "Content-Type": "image/png"},
        data=b"\0" * ((args.max_upload_mb + 1) * 2**20 + 1),
        verify=ca,
        timeout=120,
    )
    expect(
        too_big.status_code == 413
        and too_big.json()["error"]["code"] == "payload_too_large"
        and f"upload limit of {args.max_upload_mb} MiB" in too_big.json()["error"]["message"],
        f"the customer's upload limit of {args.max_upload_mb} MiB is not in force: {too_big.status_code}",
    )
    if args.same_as:
        before, now = json.loads(Path(args.same_as).read_text()), snapshot(site)
        expect(now["certs"] == before["certs"], "the certificates changed")
        expect(now["models"] == before["models"], "the models folder changed")
        expect(
            now["settings"] == before["settings"],
            f"the customer's .env settings changed: {before['settings']} → {now['settings']}",
        )
        expect(
            now["audit"][: len(before["audit"])] == before["audit"] and len(now["audit"]) > len(before["audit"]),
            "the audit log lost records or recorded nothing new",
        )
    print(
        f"ok: version {args.version} healthy, predicting ({model['engine']} {model['precision']}, "
        f"thresholds {model['thresholds']}), "
        f"upload limit {args.max_upload_mb} MiB"
        + (", certificates, models, .env and audit log kept" if args.same_as else "")
    )


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise SystemExit(f"error: {message}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("snapshot")
    p.add_argument("--dir", required=True)
    p.add_argument("--out", required=True)
    p = sub.add_parser("installed")
    p.add_argument("--dir", required=True)
    p.add_argument("--version", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--max-upload-mb", type=int, required=True)
    p.add_argument("--same-as")
    p.add_argument("--engine", help="the engine .env asks for (checked in a prediction's model block)")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--thresholds", choices=["bundle", "site"], default="bundle", help="which thresholds must decide")
    args = parser.parse_args()
    if args.command == "snapshot":
        Path(args.out).write_text(json.dumps(snapshot(Path(args.dir))))
    else:
        installed(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
