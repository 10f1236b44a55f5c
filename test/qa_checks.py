"""The QA checks of a deployed CheXNet stack, through nginx: each check takes a Context and returns a short
detail string, or raises AssertionError (failed) or Skip (cannot run with the options given).

test/test_chexnet_docker.py runs them (standalone or under pytest); the fault tests reuse a few.
Needs only `requests`. Sends traffic to the given URL and nowhere else.
"""

import base64
import http.client
import json
import socket
import ssl
import time
import urllib.parse
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import requests


class Skip(Exception):
    """A check that cannot run with the options given (reported as skipped, never as passed)."""


@dataclass
class Context:
    url: str
    token: str
    ca_cert: str | bool
    http_url: str | None = None
    wrong_host_token: str | None = None
    expired_token: str | None = None
    samples: Path | None = None
    max_upload_mb: int = 64
    conn_limit: int = 32

    def get(self, path: str, token: str | None = "default", **kwargs) -> requests.Response:
        return requests.get(
            self.url + path,
            headers=self._headers(token, kwargs.pop("headers", {})),
            verify=self.ca_cert,
            timeout=60,
            **kwargs,
        )

    def post(self, path: str, token: str | None = "default", **kwargs) -> requests.Response:
        return requests.post(
            self.url + path,
            headers=self._headers(token, kwargs.pop("headers", {})),
            verify=self.ca_cert,
            timeout=120,
            **kwargs,
        )

    def _headers(self, token, extra: dict) -> dict:
        token = self.token if token == "default" else token
        return {**({"Authorization": f"Bearer {token}"} if token else {}), **extra}

    def sample(self, relative: str) -> bytes:
        if self.samples is None or not (self.samples / relative).is_file():
            raise Skip(f"sample {relative} not found (give --samples pointing at shared/data)")
        return (self.samples / relative).read_bytes()


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


def expect_error(response: requests.Response, status: int, code: str) -> dict:
    expect(
        response.status_code == status,
        f"expected HTTP {status} {code}, got {response.status_code}: {response.text[:200]}",
    )
    expect(
        response.headers.get("Content-Type", "").startswith("application/json"),
        f"error body is {response.headers.get('Content-Type')}, not JSON",
    )
    body = response.json()
    expect(body.get("error", {}).get("code") == code, f"expected error code {code}, got {body}")
    expect(bool(body["error"].get("message")), "the error has no message")
    return body


def decode_heatmap(item: dict) -> bytes:
    data = base64.b64decode(item["data"], validate=True)
    magic = b"\xff\xd8\xff" if item["mime"] == "image/jpeg" else b"\x89PNG\r\n\x1a\n"
    expect(data.startswith(magic), f"heatmap {item['code']} is not a {item['mime']} image")
    expect(item["width"] > 0 and item["height"] > 0 and max(item["width"], item["height"]) <= 512, "heatmap size")
    return data


# --- checks: each returns a short detail string or raises AssertionError / Skip ---------------------


def check_health(ctx):
    response = ctx.get("/api/v1/health", token=None)
    expect(response.status_code == 200 and response.json() == {"status": "ok"}, f"health: {response.text[:200]}")
    return "200 ok"


def check_ready(ctx):
    response = ctx.get("/api/v1/ready", token=None)
    expect(response.status_code == 200, f"not ready: {response.text[:300]}")
    return "models " + ", ".join(response.json()["models"])


def check_models(ctx):
    response = ctx.get("/api/v1/models")
    expect(response.status_code == 200, f"models: {response.status_code} {response.text[:200]}")
    models = response.json()["models"]
    expect(
        models and all({"id", "version", "demo", "engine", "device", "input_size", "labels"} <= set(m) for m in models),
        "a model lacks contract fields",
    )
    return "; ".join(
        f"{m['id']} {m['version']}{' DEMO' if m['demo'] else ''} on {m['engine']}/{m['device']}" for m in models
    )


def check_license(ctx):
    body = ctx.get("/api/v1/license").json()
    expect(
        {"customer", "subject", "features", "expires_at", "days_left", "product_uuid"} <= set(body), f"license: {body}"
    )
    return f"{body['customer']} / {body['subject']}, {body['days_left']} days left"


def _predict_file(ctx, relative: str, fmt: str, **params):
    response = ctx.post(
        "/api/v1/predict",
        params={"heatmaps": "top", **params},
        files={"image": (Path(relative).name, ctx.sample(relative))},
    )
    expect(response.status_code == 200, f"{relative}: {response.status_code} {response.text[:300]}")
    body = response.json()
    expect(body["image"]["format"] == fmt, f"{relative}: format {body['image']['format']}")
    expect(len(body["findings"]) > 0 and all(0 <= f["probability"] <= 1 for f in body["findings"]), "findings")
    expect(len(body["heatmaps"]) >= 1, "no heatmap")
    for item in body["heatmaps"]:
        decode_heatmap(item)
    expect(body["request_id"] == response.headers.get("X-Request-ID"), "request id differs from the header")
    top = max(body["findings"], key=lambda f: f["probability"])
    return f"{body['model']['id']}: top {top['code']} {top['probability']:.3f}, {body['timing_ms']['total']:.0f} ms"


def check_predict_png(ctx):
    return _predict_file(ctx, "nih/00000075_000.png", "png")


def check_predict_rgba_png(ctx):
    return _predict_file(ctx, "nih/00000100_000.png", "png", heatmaps="all", heatmap_format="png")


def check_predict_dicom_jpeg_baseline(ctx):
    return _predict_file(ctx, "dicom/RSNA_pneumonia_16d7f894_CR_SC_jpegbaseline.dcm", "dicom")


def check_predict_dicom_j2k(ctx):
    return _predict_file(ctx, "dicom/RG1_J2KR.dcm", "dicom")


def check_predict_raw_body(ctx):
    response = ctx.post(
        "/api/v1/predict?heatmaps=none",
        data=ctx.sample("dicom/RG3_RLE.dcm"),
        headers={"Content-Type": "application/dicom"},
    )
    expect(response.status_code == 200 and response.json()["heatmaps"] == [], f"raw body: {response.text[:200]}")
    return "raw application/dicom body"


def check_cxrnet_compat(ctx):
    response = ctx.post("/api/v1/CXRNet/predict", files={"image": ("x.png", ctx.sample("nih/00000075_000.png"))})
    body = response.json()
    expect(response.status_code == 200 and body.get("status") == "OK", f"CXRNet: {response.text[:200]}")
    expect(len(body["answer"]) == len(body["category"]), "answer and category lengths differ")
    expect(base64.b64decode(body["gradcam"]).startswith(b"\xff\xd8\xff"), "gradcam is not a JPEG")
    return f"{len(body['answer'])} classes"


def check_no_token(ctx):
    response = ctx.get("/api/v1/license", token=None)
    expect_error(response, 401, "token_missing")
    expect(response.headers.get("WWW-Authenticate", "").startswith("Bearer"), "no WWW-Authenticate: Bearer")
    return "401 token_missing"


def check_forged_token(ctx):
    header, payload, signature = ctx.token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["features"] = claims.get("features", []) + ["everything"]
    forged_payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    expect_error(ctx.get("/api/v1/license", token=f"{header}.{forged_payload}.{signature}"), 401, "token_invalid")
    expect_error(ctx.get("/api/v1/license", token=f"{header}.{payload}.{signature[:-4]}AAAA"), 401, "token_invalid")
    return "tampered payload and signature refused"


def check_token_in_query_refused(ctx):
    expect_error(ctx.get("/api/v1/license", token=None, params={"token": ctx.token}), 401, "token_invalid")
    return "401"


def check_other_host_token(ctx):
    if not ctx.wrong_host_token:
        raise Skip("no --wrong-host-token-file given")
    expect_error(ctx.get("/api/v1/license", token=ctx.wrong_host_token), 403, "wrong_host")
    return "403 wrong_host"


def check_expired_token(ctx):
    if not ctx.expired_token:
        raise Skip("no --expired-token-file given")
    expect_error(ctx.get("/api/v1/license", token=ctx.expired_token), 401, "token_expired")
    expect(ctx.get("/api/v1/license").status_code == 200, "the valid token stopped working")
    return "401 token_expired; the valid token still works"


def check_bad_inputs(ctx):
    expect_error(ctx.post("/api/v1/predict", data=b"this is text, not an image"), 415, "unsupported_media_type")
    expect_error(ctx.post("/api/v1/predict", data=b""), 415, "unsupported_media_type")
    png = ctx.sample("nih/00000075_000.png")
    expect_error(ctx.post("/api/v1/predict", data=png[: len(png) // 2]), 400, "invalid_image")
    # The JPEG baseline sample relabelled as JPIP Referenced, a transfer syntax no codec decodes.
    jpip = ctx.sample("dicom/RSNA_pneumonia_16d7f894_CR_SC_jpegbaseline.dcm").replace(
        b"1.2.840.10008.1.2.4.50", b"1.2.840.10008.1.2.4.94", 1
    )
    expect_error(ctx.post("/api/v1/predict", data=jpip), 415, "unsupported_media_type")
    expect_error(ctx.post("/api/v1/predict?heatmaps=bogus", data=png), 422, "invalid_option")
    expect_error(ctx.post("/api/v1/predict?model=no-such-model", data=png), 404, "model_not_found")
    expect(ctx.get("/api/v1/health", token=None).status_code == 200, "the server stopped answering")
    return "415, 400, 415, 422, 404 and still serving"


def _tls_context(ctx, **versions) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ctx.ca_cert if isinstance(ctx.ca_cert, str) else None)
    if ctx.ca_cert is False:
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.0/1.1 are deprecated: that is the point
        for name, value in versions.items():
            setattr(context, name, value)
    return context


def _host_port(url: str) -> tuple[str, int]:
    parsed = urllib.parse.urlsplit(url)
    return parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80)


def check_upload_over_limit(ctx):
    host, port = _host_port(ctx.url)
    connection = http.client.HTTPSConnection(host, port, context=_tls_context(ctx), timeout=30)
    size = (ctx.max_upload_mb + 2) * 1024 * 1024
    connection.putrequest("POST", "/api/v1/predict")
    connection.putheader("Authorization", f"Bearer {ctx.token}")
    connection.putheader("Content-Type", "image/png")
    connection.putheader("Content-Length", str(size))
    connection.endheaders()  # nginx answers from the header alone; the body is never sent
    response = connection.getresponse()
    body = json.loads(response.read())
    connection.close()
    expect(response.status == 413 and body["error"]["code"] == "payload_too_large", f"got {response.status} {body}")
    limit = f"the upload limit of {ctx.max_upload_mb} MiB (CHEXNET_MAX_UPLOAD_MB)"
    expect(limit in body["error"]["message"], f"nginx's 413 does not name {limit}: {body}")
    return f"413 for a declared {size // 2**20} MiB body"


def check_rate_limit(ctx):
    def one(_):
        return ctx.get("/api/v1/license")

    with ThreadPoolExecutor(max_workers=32) as pool:
        responses = list(pool.map(one, range(200)))
    limited = [r for r in responses if r.status_code == 429]
    expect(limited, "no 429 in a burst of 200 requests")
    expect_error(limited[0], 429, "rate_limited")
    expect(all(r.status_code in (200, 429) for r in responses), "a burst caused errors other than 429")
    time.sleep(3)  # let the bucket refill for the checks after this one
    return f"{len(limited)} of 200 answered 429"


def check_tls_versions(ctx):
    host, port = _host_port(ctx.url)
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        context = _tls_context(ctx, minimum_version=version, maximum_version=version)
        with context.wrap_socket(
            __import__("socket").create_connection((host, port), timeout=10), server_hostname=host
        ):
            pass
    refused = []
    for version in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1):
        context = _tls_context(ctx, minimum_version=version, maximum_version=version)
        context.set_ciphers("ALL:@SECLEVEL=0")  # the client is willing; the server must say no
        try:
            with context.wrap_socket(
                __import__("socket").create_connection((host, port), timeout=10), server_hostname=host
            ):
                pass
        except (ssl.SSLError, ConnectionResetError):
            refused.append(version.name)
    expect(refused == ["TLSv1", "TLSv1_1"], f"TLS 1.0/1.1 not refused: only {refused}")
    return "TLS 1.2 and 1.3 accepted; 1.0 and 1.1 refused"


def check_security_headers(ctx):
    response = ctx.get("/api/v1/health", token=None, headers={"X-Request-ID": "qa-request-42"})
    expect("max-age=" in response.headers.get("Strict-Transport-Security", ""), "no HSTS header")
    expect(
        response.headers.get("Server", "").lower() in ("nginx", ""),
        f"server header leaks a version: {response.headers.get('Server')}",
    )
    expect(response.headers.get("X-Request-ID") == "qa-request-42", "X-Request-ID not passed through")
    expect_error(ctx.get("/metrics", token=None), 404, "not_found")
    return "HSTS, no version, request id passed, /metrics not published"


def check_http_redirect(ctx):
    if not ctx.http_url:
        raise Skip("no --http-url given")
    response = requests.get(
        ctx.http_url + "/api/v1/health", allow_redirects=False, timeout=10, headers={"Host": "evil.example"}
    )
    location = response.headers.get("Location", "")
    expect(
        response.status_code == 301 and location.startswith("https://"), f"HTTP gives {response.status_code} {location}"
    )
    expect("evil.example" not in location, f"the redirect follows the client's Host header: {location}")
    return f"301 → {location} (a forged Host is ignored)"


def _raw_exchange(ctx, request: bytes, tls: bool = True) -> tuple[int, dict, bytes]:
    """Send bytes as they are (requests would refuse to send them malformed); return status, headers, body."""
    host, port = _host_port(ctx.url)
    with socket.create_connection((host, port), timeout=30) as plain:
        stream = _tls_context(ctx).wrap_socket(plain, server_hostname=host) if tls else plain
        stream.sendall(request)
        data = b""
        while chunk := stream.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:] if ":" in line)}
    return int(lines[0].split()[1]), headers, body


def check_nginx_errors_are_json(ctx):
    host, _ = _host_port(ctx.url)
    cases = {
        "414 long URI": (
            b"GET /api/v1/health?"
            + b"a" * 70000
            + b" HTTP/1.1\r\nHost: "
            + host.encode()
            + b"\r\nConnection: close\r\n\r\n",
            True,
            414,
            "uri_too_long",
        ),
        "400 malformed request": (
            b"GET /\x01 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            True,
            400,
            "bad_request",
        ),
        "400 header too large": (
            b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 70000 + b"\r\nConnection: close\r\n\r\n",
            True,
            400,
            "bad_request",
        ),
        "405 TRACE": (
            b"TRACE /api/v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            True,
            405,
            "method_not_allowed",
        ),
        "400 plain HTTP to the HTTPS port": (
            b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            False,
            400,
            "bad_request",
        ),
    }
    for name, (request, tls, status, code) in cases.items():
        got, headers, body = _raw_exchange(ctx, request, tls=tls)
        expect(got == status, f"{name}: HTTP {got}, expected {status}")
        expect(
            headers.get("content-type", "").startswith("application/json"),
            f"{name}: {headers.get('content-type')} body, not JSON",
        )
        expect(json.loads(body)["error"]["code"] == code, f"{name}: {body[:200]!r}")
        if status == 405:
            expect("POST" in headers.get("allow", ""), f"{name}: no Allow header")
    return ", ".join(cases)


def check_connection_limit(ctx):
    """More simultaneous requests from one address than NGINX_CONN_LIMIT: the one over gets 429 JSON."""
    time.sleep(3)  # a full request-rate bucket, so that only the connection limit can answer 429
    host, port = _host_port(ctx.url)
    held = []
    try:
        for _ in range(ctx.conn_limit):  # each sends its headers and holds its body back: a request in progress
            stream = _tls_context(ctx).wrap_socket(
                socket.create_connection((host, port), timeout=30), server_hostname=host
            )
            stream.sendall(
                b"POST /api/v1/predict HTTP/1.1\r\nHost: "
                + host.encode()
                + b"\r\nAuthorization: Bearer "
                + ctx.token.encode()
                + b"\r\nContent-Type: image/png\r\nContent-Length: 1000000\r\n\r\n"
            )
            held.append(stream)
        time.sleep(1)
        response = ctx.get("/api/v1/license")
        expect_error(response, 429, "rate_limited")
    finally:
        for stream in held:
            stream.close()
    time.sleep(3)
    expect(ctx.get("/api/v1/license").status_code == 200, "requests still refused after the connections closed")
    return f"request {ctx.conn_limit + 1} while {ctx.conn_limit} are in progress: 429"


def check_docs(ctx):
    doc = ctx.get("/api/v1/openapi.json", token=None).json()
    expect(doc["openapi"].startswith("3.") and "/api/v1/predict" in doc["paths"], "openapi document")
    expect(ctx.get("/api/v1/docs", token=None).status_code == 200, "docs page")
    return f"OpenAPI {doc['openapi']}"


CHECKS = [
    check_health,
    check_ready,
    check_models,
    check_license,
    check_predict_png,
    check_predict_rgba_png,
    check_predict_dicom_jpeg_baseline,
    check_predict_dicom_j2k,
    check_predict_raw_body,
    check_cxrnet_compat,
    check_no_token,
    check_forged_token,
    check_token_in_query_refused,
    check_other_host_token,
    check_expired_token,
    check_bad_inputs,
    check_upload_over_limit,
    check_security_headers,
    check_http_redirect,
    check_nginx_errors_are_json,
    check_tls_versions,
    check_docs,
    check_connection_limit,
    check_rate_limit,
]


def _read(path: str | None) -> str | None:
    return Path(path).read_text().strip() if path else None


def context_from(args) -> Context:
    return Context(
        url=args.url.rstrip("/"),
        token=_read(args.token_file),
        ca_cert=args.ca_cert or False,
        http_url=args.http_url.rstrip("/") if args.http_url else None,
        wrong_host_token=_read(args.wrong_host_token_file),
        expired_token=_read(args.expired_token_file),
        samples=Path(args.samples) if args.samples else None,
        max_upload_mb=args.max_upload_mb,
        conn_limit=args.conn_limit,
    )
