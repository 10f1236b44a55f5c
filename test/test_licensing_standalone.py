"""``licensing`` stands alone: it imports nothing from ``chexnet``, has its own error base with the
product's error protocol, and the API answers both bases with the same JSON. The OpenAPI error table is
explicit; this checks it misses no class the API can answer with."""

import json
import subprocess
import sys
from pathlib import Path

from chexnet import errors
from chexnet.api import errors as api_errors
from chexnet.api.openapi import API_ERRORS, error_codes_by_status
from licensing import errors as licence_errors
from licensing_helpers import make_app

ROOT = Path(__file__).resolve().parent.parent

IMPORT_ALL = """
import importlib, json, pkgutil, sys
import licensing
names = [m.name for m in pkgutil.walk_packages(licensing.__path__, "licensing.") if not m.name.endswith("__main__")]
for name in names:
    importlib.import_module(name)
print(json.dumps({"imported": names, "chexnet": sorted(m for m in sys.modules if m.split(".")[0] == "chexnet")}))
"""


def test_licensing_imports_nothing_from_chexnet():
    run = subprocess.run([sys.executable, "-c", IMPORT_ALL], capture_output=True, text=True, cwd=ROOT, check=True)
    found = json.loads(run.stdout)
    assert {"licensing.errors", "licensing.flask_auth", "licensing.registry.app"} <= set(found["imported"])
    assert found["chexnet"] == []


def test_the_licensing_base_has_the_protocol_of_service_errors():
    assert not issubclass(licence_errors.LicensingError, errors.ServiceError)
    assert issubclass(licence_errors.LicenseError, licence_errors.LicensingError)
    for err in (licence_errors.LicenseNotReady("wait"), errors.NotReady("wait")):
        assert (err.code, err.status, err.message) == ("not_ready", 503, "wait")
        assert err.headers == {"Retry-After": str(err.retry_after_s)}


def _subclasses(cls: type) -> set[type]:
    return {cls}.union(*(_subclasses(sub) for sub in cls.__subclasses__()))


def test_the_openapi_error_table_lists_every_code_the_api_answers_with():
    """A new error class of chexnet, of the API or of the token checks must be added to API_ERRORS."""
    answered = _subclasses(errors.ServiceError) | _subclasses(licence_errors.LicenseError)
    listed = {(cls.status, cls.code) for cls in API_ERRORS}
    missing = {cls.__name__: (cls.status, cls.code) for cls in answered if (cls.status, cls.code) not in listed}
    assert not missing
    table = error_codes_by_status()
    assert all(cls.code in table[cls.status] for cls in answered)
    assert {api_errors.BadRequest, api_errors.NotFound, api_errors.MethodNotAllowed} <= set(API_ERRORS)


def test_the_api_answers_both_bases_with_the_same_body():
    app = make_app(None)

    @app.get("/core")
    def core():
        raise errors.Overloaded("Busy; retry.")

    @app.get("/licence")
    def licence():
        raise licence_errors.LicensingError("The licence check failed.")

    client = app.test_client()
    core_response, licence_response = client.get("/core"), client.get("/licence")
    assert core_response.status_code == 503 and core_response.headers["Retry-After"] == "2"
    assert core_response.get_json() == {"error": {"code": "overloaded", "message": "Busy; retry.", "request_id": None}}
    assert licence_response.status_code == 500
    assert licence_response.get_json() == {
        "error": {"code": "internal_error", "message": "The licence check failed.", "request_id": None}
    }
    not_ready = client.get("/license")  # the verifier is not loaded: LicenseNotReady through token_required
    assert not_ready.status_code == 503 and not_ready.headers["Retry-After"] == "30"
    assert not_ready.get_json()["error"]["code"] == "not_ready"
