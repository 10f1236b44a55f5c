"""``python -m chexnet serve``: the REST API on waitress, settings from the CHEXNET_* variables."""

import logging
import os
import signal
import sys

from chexnet.api.app import create_app
from chexnet.service import Settings, SettingsError, configure_logging
from chexnet.service.memory import WAITRESS_CONNECTIONS, WAITRESS_RECV_BYTES


def serve(host: str | None = None, port: int | None = None) -> int:
    """host, port: the command line's --host and --port, over CHEXNET_HOST and CHEXNET_PORT."""
    env = dict(os.environ)
    env.update({k: str(v) for k, v in (("CHEXNET_HOST", host), ("CHEXNET_PORT", port)) if v is not None})
    try:
        settings = Settings.from_env(env)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    import waitress

    app = create_app(settings)
    # SIGTERM (docker stop) ends waitress's loop as Ctrl-C does, so the stop is audited (chexnet.service.atna)
    signal.signal(signal.SIGTERM, _exit)
    layout = settings.layout
    logging.getLogger("chexnet").info(
        "listening", extra={"fields": {"host": settings.host, "port": settings.port, **vars(layout)}}
    )
    waitress.serve(
        app,
        host=settings.host,
        port=settings.port,
        threads=layout.http_threads,
        ident="chexnet",
        max_request_body_size=app.config["MAX_CONTENT_LENGTH"],
        channel_timeout=120,
        connection_limit=WAITRESS_CONNECTIONS,
        recv_bytes=WAITRESS_RECV_BYTES,
        clear_untrusted_proxy_headers=True,
    )
    app.extensions["chexnet"].stop()
    return 0


def _exit(*_) -> None:
    raise SystemExit(0)
