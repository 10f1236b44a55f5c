"""``python -m licensing serve``: the registration service on waitress."""

import logging
import sys

from licensing.registry.settings import SettingsError, from_env


def serve() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import waitress

    from licensing.registry.app import create_app

    try:
        settings = from_env()
        app = create_app(settings)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logging.getLogger(__name__).info("token registration service on http://%s:%d", settings.host, settings.port)
    waitress.serve(app, host=settings.host, port=settings.port, threads=4)
    return 0
