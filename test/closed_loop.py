"""Closed-loop load for the Swarm end to end (test/e2e.sh, test/e2e_three_nodes.sh) and bench/swarm_replicas.py:
N clients, each sending the next prediction as soon as the last one is answered, until a stop file appears.

Each request is a new HTTPS connection, as a PACS integration's would be. With several --url (the nodes'
addresses, as a hospital's load balancer or DNS round robin spreads them), each request goes to the next
address in turn; an address that refuses the connection or does not accept it within CONNECT_TIMEOUT_S is
skipped for SKIP_S, as a balancer's health check would, and the request is sent to the next one (counted as
retried_connect; a request is never sent twice once its body went out). A 503 is retried after its
Retry-After (capped at 1 s), as the API contract asks of clients; anything else that is not a 200 with
findings (another status, a connection cut or timed out after the request was sent) is a failure.

With --phase-file, each request is counted in the phase that file names when it ends, answered or failed
(the end to end writes the event it is about to cause there; a request sent before and cut by it is that
event's), with the times of the phase's first and last failure and its slowest answer (seconds from the first
try, retries included). Writes progress to OUT every second and the summary at the end: requests, ok,
retried_503, retried_connect, failures (the first 20, with their phase and time), seconds, requests/s,
answers per address, phases.
"""

import argparse
import itertools
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import requests
import urllib3

MAX_RETRIES = 60
CONNECT_TIMEOUT_S = 3.0
SKIP_S = 10.0


class Balancer:
    """Round robin over URLS, leaving out for SKIP_S an address that did not accept a connection."""

    def __init__(self, urls: list[str]):
        self.lock = threading.Lock()
        self.turn = itertools.cycle(urls)
        self.urls = urls
        self.skipped_until = {url: 0.0 for url in urls}

    def next(self) -> str:
        with self.lock:
            now = time.monotonic()
            for _ in self.urls:
                url = next(self.turn)
                if self.skipped_until[url] <= now:
                    return url
            return min(self.urls, key=self.skipped_until.__getitem__)  # all skipped: the soonest back

    def skip(self, url: str) -> None:
        with self.lock:
            self.skipped_until[url] = time.monotonic() + SKIP_S


class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.ok = self.retried = self.retried_connect = self.failed = 0
        self.failures: list[dict] = []
        self.by_url: dict[str, int] = {}
        self.phases: dict[str, dict] = {}

    def add(
        self,
        phase: str,
        ok: int = 0,
        retried: int = 0,
        retried_connect: int = 0,
        failure: str | None = None,
        url: str = "",
        seconds: float = 0.0,
    ) -> None:
        now = round(time.time(), 1)
        with self.lock:
            self.ok += ok
            self.retried += retried
            self.retried_connect += retried_connect
            if ok:
                self.by_url[url] = self.by_url.get(url, 0) + ok
            row = self.phases.setdefault(
                phase,
                {
                    "ok": 0,
                    "retried_503": 0,
                    "retried_connect": 0,
                    "failed": 0,
                    "first_failure": None,
                    "last_failure": None,
                    "slowest_s": 0.0,
                },
            )
            row["slowest_s"] = max(row["slowest_s"], round(seconds, 1))
            row["ok"] += ok
            row["retried_503"] += retried
            row["retried_connect"] += retried_connect
            if failure is not None:
                self.failed += 1
                row["failed"] += 1
                row["first_failure"] = row["first_failure"] or now
                row["last_failure"] = now
                if len(self.failures) < 20:
                    self.failures.append({"phase": phase, "time": now, "url": url, "error": failure})

    def summary(self, seconds: float) -> dict:
        with self.lock:
            return {
                "requests": self.ok + self.failed,
                "ok": self.ok,
                "retried_503": self.retried,
                "retried_connect": self.retried_connect,
                "failed": self.failed,
                "failures": list(self.failures),
                "seconds": round(seconds, 1),
                "requests_per_s": round(self.ok / seconds, 2) if seconds else 0.0,
                "ok_by_url": dict(self.by_url),
                "phases": json.loads(json.dumps(self.phases)),
            }


def _not_connected(exc: requests.RequestException) -> bool:
    """The connection was refused or not accepted in time: nothing of the request was sent."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return True
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    return isinstance(exc, requests.ConnectionError) and isinstance(reason, urllib3.exceptions.NewConnectionError)


def one_prediction(balancer: Balancer, token: str, image: bytes, tally: Tally, phase: Callable[[], str]) -> None:
    started = time.monotonic()
    for _ in range(MAX_RETRIES):
        url = balancer.next()
        try:
            response = requests.post(
                f"{url}/api/v1/predict",
                data=image,
                verify=False,
                timeout=(CONNECT_TIMEOUT_S, 120),
                headers={
                    "Authorization": f"Bearer {token}",
                    "Content-Type": "application/octet-stream",
                    "Connection": "close",
                },
            )
        except requests.RequestException as exc:
            if _not_connected(exc):
                balancer.skip(url)
                tally.add(phase(), retried_connect=1)
                continue
            tally.add(phase(), failure=f"{type(exc).__name__}: {str(exc)[:160]}", url=url)
            return
        if response.status_code == 503:
            tally.add(phase(), retried=1)
            time.sleep(min(1.0, float(response.headers.get("Retry-After", "1") or 1)))
            continue
        if response.status_code == 200 and response.json().get("findings"):
            tally.add(phase(), ok=1, url=url, seconds=time.monotonic() - started)
        else:
            tally.add(phase(), failure=f"{response.status_code}: {response.text[:160]}", url=url)
        return
    tally.add(phase(), failure=f"no answer after {MAX_RETRIES} tries")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--url",
        required=True,
        action="append",
        help="e.g. https://nginx:8443 on the stack's network; repeat for several",
    )
    parser.add_argument("--token-file", required=True, type=Path)
    parser.add_argument("--image", required=True, type=Path)
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--stop-file", required=True, type=Path)
    parser.add_argument("--phase-file", type=Path, help="holds the name of the phase requests are counted in")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)  # the stack's name is not the service's
    token, image = args.token_file.read_text().strip(), args.image.read_bytes()
    tally, balancer, started = Tally(), Balancer(args.url), time.monotonic()

    def phase() -> str:
        try:
            return args.phase_file.read_text().strip() or "-" if args.phase_file else "-"
        except OSError:
            return "-"

    def client() -> None:
        while not args.stop_file.exists():
            one_prediction(balancer, token, image, tally, phase)

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
