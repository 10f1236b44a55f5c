"""``python -m chexnet.api.healthcheck``: exit 0 when this container's API is ready (Docker HEALTHCHECK)."""

import os
import sys
import urllib.error
import urllib.request


def main() -> int:
    url = f"http://127.0.0.1:{os.environ.get('CHEXNET_PORT', '8080')}/api/v1/ready"
    try:
        with urllib.request.urlopen(url, timeout=4) as response:
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError):
        return 1


if __name__ == "__main__":
    sys.exit(main())
