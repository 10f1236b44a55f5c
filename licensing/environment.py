"""The one reader of settings from environment variables, for every service of the product: the CheXNet
API and DICOM node (CHEXNET_*, CHEXNET_DICOM_*) and the vendor's registration service (LICENSING_*).
It lives here, in the bottom layer, because `licensing` imports nothing from `chexnet`.

Each read names the variable in its one-sentence refusal. An empty or blank value is the default. Whole
numbers are ASCII digits only (``str.isdigit`` and ``int`` would take other scripts' digits), numbers are
finite decimals, and no value may hold a control character.
"""

import math
import re
from collections.abc import Mapping, Sequence
from typing import overload

_WHOLE = re.compile(r"^[+-]?[0-9]{1,18}$")
_DECIMAL = re.compile(r"^[+-]?([0-9]{1,18}(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]{1,3})?$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class Environment:
    """The variables PREFIX + name of ENV; a refusal raises ERROR (the caller's settings error) with one sentence."""

    def __init__(self, env: Mapping[str, str], prefix: str, error: type[Exception]):
        self.env = env
        self.prefix = prefix
        self.error = error

    def variable(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def refuse(self, name: str, sentence: str) -> Exception:
        """The error to raise: '<VARIABLE> <sentence>'."""
        return self.error(f"{self.variable(name)} {sentence}")

    @overload
    def text(self, name: str, default: str) -> str: ...

    @overload
    def text(self, name: str, default: None = None) -> str | None: ...

    def text(self, name: str, default: str | None = None) -> str | None:
        raw = self.env.get(self.variable(name))
        if raw is None or raw.strip() == "":
            return default
        if _CONTROL.search(raw):
            raise self.refuse(name, "holds a control character (a line break, tab or NUL); write the value plainly.")
        return raw.strip()

    def required(self, name: str, sentence: str) -> str:
        """The value; unset or blank is refused with '<VARIABLE> <sentence>'."""
        value = self.text(name)
        if value is None:
            raise self.refuse(name, sentence)
        return value

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        raw = self.text(name, str(default))
        if not _WHOLE.match(raw):
            raise self.refuse(name, f"must be a whole number, not '{raw[:40]}'.")
        return self._within(name, int(raw), low, high)

    def number(self, name: str, default: float, low: float, high: float) -> float:
        raw = self.text(name, repr(default))
        if not _DECIMAL.match(raw) or not math.isfinite(float(raw)):
            raise self.refuse(name, f"must be a number, not '{raw[:40]}'.")
        return self._within(name, float(raw), low, high)

    def choice(self, name: str, default: str, allowed: Sequence[str]) -> str:
        value = self.text(name, default)
        if value not in allowed:
            raise self.refuse(name, f"must be one of {', '.join(allowed)}, not '{value[:40]}'.")
        return value

    def matching(self, name: str, default: str | None, pattern: re.Pattern[str], what: str) -> str | None:
        """The value if it matches PATTERN whole; else refused as 'must be WHAT'."""
        value = self.text(name, default)
        if value is not None and not pattern.fullmatch(value):
            raise self.refuse(name, f"must be {what}, not '{value[:40]}'.")
        return value

    def listed(self, name: str, pattern: re.Pattern[str], what: str) -> tuple[str, ...]:
        """A comma list, blanks dropped, each item matching PATTERN whole (else refused as 'must list WHAT')."""
        items = tuple(item.strip() for item in (self.text(name, "") or "").split(",") if item.strip())
        for item in items:
            if not pattern.fullmatch(item):
                raise self.refuse(name, f"must list {what}, not '{item[:40]}'.")
        return items

    def _within(self, name: str, value, low, high):
        if not low <= value <= high:
            raise self.refuse(name, f"must be between {_shown(low)} and {_shown(high)}, not {_shown(value)}.")
        return value


def _shown(value: float) -> str:
    """A bound or value as a person writes it: 65535, 0.5, 400000000 (no '.0', no exponent)."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"
