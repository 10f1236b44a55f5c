"""``python -m chexnet.api.smoke --url URL < token``: one prediction through the deployed stack.

The installer runs it inside the API container against nginx, so it needs nothing on the host. The
image is synthetic (a smooth gradient with a bright disc): the point is the round trip, not the findings.
"""

import argparse
import io
import sys

import numpy as np
import requests
import urllib3
from PIL import Image


def synthetic_png(size: int = 512) -> bytes:
    y, x = np.mgrid[0:size, 0:size]
    pixels = (x + y) * (200.0 / (2 * size)) + 40.0 * ((x - size / 2) ** 2 + (y - size / 3) ** 2 < (size / 8) ** 2)
    buf = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True, help="e.g. https://nginx (inside the compose network)")
    parser.add_argument("--ca-cert", help="CA bundle for the certificate; without it the certificate is not checked")
    args = parser.parse_args()
    if not args.ca_cert:
        # Inside the compose network nginx's certificate (issued for the site's host name) cannot match
        # the service name; this check is about the round trip, and says so instead of warning per request.
        urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
    token = sys.stdin.readline().strip()
    if not token:
        print("error: give the licence token on standard input.", file=sys.stderr)
        return 2
    try:
        response = requests.post(
            f"{args.url}/api/v1/predict?heatmaps=top",
            data=synthetic_png(),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "image/png"},
            timeout=120,
            verify=args.ca_cert or False,
        )
    except requests.RequestException as exc:
        print(f"error: cannot reach {args.url}: {exc}", file=sys.stderr)
        return 1
    body = response.json() if response.headers.get("Content-Type", "").startswith("application/json") else {}
    if response.status_code != 200:
        error = body.get("error", {})
        print(
            f"error: smoke prediction got HTTP {response.status_code} {error.get('code', '')}: "
            f"{error.get('message', response.text[:200])}",
            file=sys.stderr,
        )
        return 1
    top = max(body["findings"], key=lambda f: f["probability"])
    model = body["model"]
    print(
        f"smoke prediction OK through nginx: model {model['id']} {model['version']} on {model['engine']}/{model['device']}"
        f"{' (DEMO: not a diagnosis)' if model['demo'] else ''}; top finding {top['code']} p={top['probability']:.3f}; "
        f"{len(body['heatmaps'])} heatmap(s); request {body['request_id']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
