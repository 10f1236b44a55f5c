"""``python -m chexnet.api.healthcheck``: exit 0 when this container's API is ready (Docker HEALTHCHECK).

It prints /ready's warnings (a refused revocation list while an earlier one stays in force) and reasons
on stdout, which Docker keeps in the health log (``docker inspect``), so they are seen without a log search."""

import json
import os
import sys
import urllib.error
import urllib.request


def main() -> int:
    url = f"http://127.0.0.1:{os.environ.get('CHEXNET_PORT', '8080')}/api/v1/ready"
    try:
        status, body = _fetch(url)
    except (urllib.error.URLError, OSError) as exc:
        print(f"not ready: {url} does not answer ({getattr(exc, 'reason', exc)})")
        return 1
    _print_notes(body)
    return 0 if status == 200 else 1


def _fetch(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=4) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:  # 503: not ready, with reasons
        with exc:
            return exc.code, exc.read()


def _print_notes(body: bytes) -> None:
    try:
        data = json.loads(body)
    except ValueError:
        return
    if not isinstance(data, dict):
        return
    for label, key in (("not ready", "reasons"), ("warning", "warnings")):
        for sentence in data.get(key) or []:
            print(f"{label}: {sentence}")


if __name__ == "__main__":
    sys.exit(main())
