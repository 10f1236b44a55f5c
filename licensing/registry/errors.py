"""The registry's errors, in the product's error protocol (:class:`licensing.errors.LicensingError`: code,
status, message, headers). One handler (``licensing.registry.app``) answers each: under ``/api/`` as
``{"error": {"code", "message"}}`` with its status and headers, on the pages with :meth:`RegistryError.page`.
werkzeug's HTTP errors and Flask-WTF's CSRF failures are wrapped in the classes below first."""

from flask import flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException

from licensing.errors import LicensingError


class RegistryError(LicensingError):
    """A refused registry request; ``page()`` is what a browser gets instead of the JSON."""

    title = "Error"

    def page(self) -> ResponseReturnValue:
        return render_template("message.html", title=self.title, message=self.message), self.status, self.headers


class LoginRequired(RegistryError):
    """No live session: the pages send the browser to sign in and come back."""

    code = "login_required"
    status = 401

    def page(self) -> ResponseReturnValue:
        return redirect(url_for("auth.login", next=request.path))


class InputError(RegistryError):
    """A form or JSON body with a missing, malformed or conflicting value: the pages flash the sentence."""

    code = "invalid_input"
    status = 422

    def page(self) -> ResponseReturnValue:
        flash(self.message, "error")
        return redirect(url_for("pages.index"))


class CsrfFailed(RegistryError):
    """A form or API call without the session's CSRF token (Flask-WTF's description, plus how to get one
    for API clients)."""

    code = "csrf_failed"
    status = 400
    title = "Form expired"

    def __init__(self, description: str):
        super().__init__(f"{description} Send X-CSRFToken from GET /api/csrf.")
        self.description = description

    def page(self) -> ResponseReturnValue:
        return render_template("message.html", title=self.title, message=self.description), self.status, self.headers


class HttpError(RegistryError):
    """werkzeug's HTTP error (404, 405, 413, 500 ...): its status, its name as the code and title."""

    def __init__(self, err: HTTPException):
        super().__init__(err.description or "")
        self.code = (err.name or "").lower().replace(" ", "_")
        self.status = err.code or 500
        self.title = err.name
