"""Request ids of the REST API: nginx's X-Request-ID when it is well-formed, else a fresh one."""

import re
import uuid

from flask import request

REQUEST_ID_HEADER = "X-Request-ID"
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def request_id_from_headers() -> str:
    """nginx's id when it is well-formed, else a fresh one (never echo arbitrary header bytes)."""
    incoming = request.headers.get(REQUEST_ID_HEADER, "")
    return incoming if _VALID_REQUEST_ID.match(incoming) else uuid.uuid4().hex
