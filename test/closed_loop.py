"""Closed-loop load for the Swarm end to end (test/e2e.sh) and bench/swarm_replicas.py: N clients, each
sending the next prediction as soon as the last one is answered, until a stop file appears.

Each request is a new HTTPS connection, as a PACS integration's would be. A 503 is retried after its
Retry-After (capped at 1 s), as the API contract asks of clients; anything else that is not a 200 with
findings (another status, a connection error) is a failure. Writes progress to OUT every second and
the summary at the end: requests, ok, retried_503, failures (the first 20), seconds, requests/s.
"""

import argparse
import json
import threading
import time
from pathlib import Path

import requests
import urllib3

MAX_RETRIES = 60


class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.ok = self.retried = self.failed = 0
        self.failures: list[str] = []

    def add(self, ok: int = 0, retried: int = 0, failure: str | None = None) -> None:
        with self.lock:
            self.ok += ok
            self.retried += retried
            if failure is not None:
                self.failed += 1
                if len(self.failures) < 20:
                    self.failures.append(failure)

    def summary(self, seconds: float) -> dict:
        with self.lock:
            return {
                "requests": self.ok + self.failed,
                "ok": self.ok,
                "retried_503": self.retried,
                "failed": self.failed,
                "failures": list(self.failures),
                "seconds": round(seconds, 1),
                "requests_per_s": round(self.ok / seconds, 2) if seconds else 0.0,
            }


def one_prediction(url: str, token: str, image: bytes, tally: Tally) -> None:
    for _ in range(MAX_RETRIES):
        try:
            response = requests.post(
                f"{url}/api/v1/predict",
                data=image,
                verify=False,
                timeout=120,
                headers={
                    "Authorization": f"Bearer {token}",
                    "Content-Type": "application/octet-stream",
                    "Connection": "close",
                },
            )
        except requests.RequestException as exc:
            tally.add(failure=f"{type(exc).__name__}: {str(exc)[:160]}")
            return
        if response.status_code == 503:
            tally.add(retried=1)
            time.sleep(min(1.0, float(response.headers.get("Retry-After", "1") or 1)))
            continue
        if response.status_code == 200 and response.json().get("findings"):
            tally.add(ok=1)
        else:
            tally.add(failure=f"{response.status_code}: {response.text[:160]}")
        return
    tally.add(failure=f"503 after {MAX_RETRIES} retries")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True, help="e.g. https://nginx:8443 on the stack's network")
    parser.add_argument("--token-file", required=True, type=Path)
    parser.add_argument("--image", required=True, type=Path)
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--stop-file", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)  # the stack's name is not the service's
    token, image = args.token_file.read_text().strip(), args.image.read_bytes()
    tally, started = Tally(), time.monotonic()

    def client() -> None:
        while not args.stop_file.exists():
            one_prediction(args.url, token, image, tally)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(args.clients)]
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        args.out.write_text(json.dumps(tally.summary(time.monotonic() - started)))
        time.sleep(1)
    args.out.write_text(json.dumps(tally.summary(time.monotonic() - started)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
