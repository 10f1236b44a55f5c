#!/usr/bin/env python3
"""QA end-to-end check of a deployed CheXNet stack, through nginx.

Standalone (prints a report, exits 1 on any failure):
    python test/test_chexnet_docker.py --url https://HOST --token-file TOKEN --ca-cert certs/server.crt \\
        [--http-url http://HOST] [--wrong-host-token-file F] [--expired-token-file F] [--samples ../shared/data]

Under pytest (marker e2e): set CHEXNET_QA_URL, CHEXNET_QA_TOKEN_FILE, CHEXNET_QA_CA_CERT and optionally
CHEXNET_QA_HTTP_URL, CHEXNET_QA_WRONG_HOST_TOKEN_FILE, CHEXNET_QA_EXPIRED_TOKEN_FILE, CHEXNET_QA_SAMPLES.

Needs only `requests`. Sends traffic to the given URL and nowhere else.
"""

import argparse
import os
import sys
from pathlib import Path

import requests

from qa_checks import CHECKS, Context, Skip, context_from  # beside this script: python puts its folder on sys.path

try:  # under pytest this module is also a test file; standalone it needs no pytest
    import pytest
except ImportError:  # pragma: no cover
    pytest = None


def run_all(ctx: Context) -> int:
    counts = {"PASS": 0, "FAIL": 0, "SKIP": 0}
    print(f"CheXNet QA against {ctx.url}\n")
    for check in CHECKS:
        name = check.__name__.removeprefix("check_")
        try:
            status, detail = "PASS", check(ctx)
        except Skip as exc:
            status, detail = "SKIP", str(exc)
        except (AssertionError, requests.RequestException, OSError, ValueError, KeyError) as exc:
            status, detail = "FAIL", f"{type(exc).__name__}: {exc}"
        counts[status] += 1
        print(f"  {status}  {name:<32} {detail}", flush=True)
    print(f"\n{counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped")
    return 1 if counts["FAIL"] else 0


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True, help="https://HOST[:PORT] of nginx")
    parser.add_argument("--token-file", required=True, help="a valid licence token for this server")
    parser.add_argument("--ca-cert", help="certificate (or CA) to verify nginx with; without it TLS is not verified")
    parser.add_argument("--http-url", help="http://HOST[:PORT] to check the redirect to HTTPS")
    parser.add_argument("--wrong-host-token-file", help="a genuine token issued for another product_uuid")
    parser.add_argument("--expired-token-file", help="a genuine token that has expired")
    parser.add_argument(
        "--samples",
        default=str(Path(__file__).resolve().parent.parent.parent / "shared" / "data"),
        help="folder with nih/ and dicom/ sample files (default ../shared/data)",
    )
    parser.add_argument("--max-upload-mb", type=int, default=64, help="the site's CHEXNET_MAX_UPLOAD_MB")
    parser.add_argument("--conn-limit", type=int, default=32, help="the site's NGINX_CONN_LIMIT")
    return parser.parse_args(argv)


if pytest is not None:

    @pytest.fixture(scope="module")
    def qa_context():
        if not os.environ.get("CHEXNET_QA_URL"):
            pytest.skip("set CHEXNET_QA_URL, CHEXNET_QA_TOKEN_FILE and CHEXNET_QA_CA_CERT to run the QA checks")
        env = os.environ.get
        return context_from(
            argparse.Namespace(
                url=env("CHEXNET_QA_URL"),
                token_file=env("CHEXNET_QA_TOKEN_FILE"),
                ca_cert=env("CHEXNET_QA_CA_CERT"),
                http_url=env("CHEXNET_QA_HTTP_URL"),
                wrong_host_token_file=env("CHEXNET_QA_WRONG_HOST_TOKEN_FILE"),
                expired_token_file=env("CHEXNET_QA_EXPIRED_TOKEN_FILE"),
                samples=env("CHEXNET_QA_SAMPLES"),
                max_upload_mb=int(env("CHEXNET_QA_MAX_UPLOAD_MB", "64")),
                conn_limit=int(env("CHEXNET_QA_CONN_LIMIT", "32")),
            )
        )

    @pytest.mark.e2e
    @pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
    def test_deployed_stack(qa_context, check):
        try:
            check(qa_context)
        except Skip as exc:
            pytest.skip(str(exc))


if __name__ == "__main__":
    sys.exit(run_all(context_from(parse_args())))
