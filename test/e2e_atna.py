"""The audit repository (IHE ATNA) step of test/e2e.sh, around the field guide's own block.

``pki DIR NAME`` writes a test PKI (syslog_helpers.make_pki) whose repository certificate names NAME, the
repository's address on the stack's network. ``received LOG --token T --ca C --source-id S`` makes one
prediction through nginx (waiting, bounded, for the API the guide's ``docker-compose up -d`` restarted) and
waits until the repository's LOG holds the API's start and that prediction as DICOM audit messages (PS3.15
A.5.1 structure, AuditSourceID S). Exits 1 with the reason."""

import argparse
import sys
import time
import uuid
from pathlib import Path

import requests

from syslog_helpers import Received, check_audit_message, make_pki
from waiting import wait_until

URL = "https://localhost:18443"
SAMPLE = Path(__file__).resolve().parent.parent.parent / "shared/data/nih/00000075_000.png"


def predict(url: str, token: str, ca: str) -> str:
    """The request id of one prediction answered 200 (the API may still be starting)."""
    request_id = str(uuid.uuid4())

    def answered():
        try:
            r = requests.post(
                f"{url}/api/v1/predict",
                headers={"Authorization": f"Bearer {token}", "X-Request-ID": request_id},
                files={"image": SAMPLE.read_bytes()},
                verify=ca,
                timeout=60,
            )
        except requests.ConnectionError:
            return None
        return r.headers.get("X-Request-ID", request_id) if r.status_code == 200 else None

    return wait_until(answered, 300, "a prediction through nginx after the restart")


def received(log: Path, request_id: str, source_id: str) -> None:
    def arrived():
        if not log.exists():
            return None
        messages = [Received.parse(line) for line in log.read_text(encoding="utf-8").splitlines() if line.strip()]
        started = [m for m in messages if m.event_type == "110120"]
        predicted = [m for m in messages if m.event_id == "110103" and m.detail("request_id") == request_id]
        return (started, predicted, messages) if started and predicted else None

    started, predicted, messages = wait_until(arrived, 120, f"the start and prediction {request_id} at the repository")
    for message in messages:
        check_audit_message(message.xml)
        assert (message.app_name, message.msgid) == ("chexnet", "IHE+RFC-3881"), (message.app_name, message.msgid)
        source = message.xml.find("AuditSourceIdentification")
        assert source is not None and source.get("AuditSourceID") == source_id, source.attrib if source else None
    print(f"ok: {len(messages)} audit messages at the repository over TLS, the prediction {request_id} among them")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pki")
    p.add_argument("dir", type=Path)
    p.add_argument("name")
    p = sub.add_parser("received")
    p.add_argument("log", type=Path)
    p.add_argument("--token", type=Path, required=True)
    p.add_argument("--ca", required=True)
    p.add_argument("--source-id", required=True)
    p.add_argument("--url", default=URL, help="the site's HTTPS address")
    args = parser.parse_args()
    if args.command == "pki":
        make_pki(args.dir, args.name)
        return 0
    started = time.monotonic()
    request_id = predict(args.url, args.token.read_text().strip(), args.ca)
    try:
        received(args.log, request_id, args.source_id)
    except AssertionError as error:
        print(f"error: the audit repository's messages ({time.monotonic() - started:.0f} s): {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
