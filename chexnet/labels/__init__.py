"""The label sets that ship with the product (DESIGN.md): cxr10, cxr25, chestxray14."""

import json
from importlib import resources
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from chexnet.errors import BundleError

BUILTIN = ("cxr10", "cxr25", "chestxray14")


class LabelName(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    en: str = Field(min_length=1)
    zh: str | None = None


class Label(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    code: str = Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")
    name: LabelName
    threshold: float = Field(default=0.5, ge=0.0, le=1.0)


_LABEL_LIST = TypeAdapter(list[Label])


def load_labels(spec: str) -> list[Label]:
    """A built-in set name, or a JSON file: a list of {code, name: {en, zh}, threshold}."""
    if spec in BUILTIN:
        text = resources.files(__name__).joinpath(f"{spec}.json").read_text(encoding="utf-8")
        source = spec
    else:
        path = Path(spec)
        if not path.is_file():
            raise BundleError(f"Labels '{spec}' is neither a built-in set ({', '.join(BUILTIN)}) nor a file.")
        text, source = path.read_text(encoding="utf-8"), str(path)
    try:
        labels = _LABEL_LIST.validate_python(json.loads(text))
    except (json.JSONDecodeError, ValidationError) as exc:
        raise BundleError(f"Labels {source} are not a valid list of {{code, name, threshold}}: {exc}") from None
    if not labels:
        raise BundleError(f"Labels {source} are empty.")
    return labels


def apply_thresholds(labels: list[Label], path: str) -> list[Label]:
    """Override thresholds from a JSON object {code: threshold}; unknown codes are an error."""
    try:
        table = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise BundleError(f"Thresholds file {path} is not readable JSON ({exc}).") from None
    codes = {label.code for label in labels}
    if not isinstance(table, dict) or set(table) - codes:
        unknown = sorted(set(table) - codes) if isinstance(table, dict) else []
        raise BundleError(f"Thresholds file {path} must map label codes to numbers; unknown codes: {unknown}.")
    try:
        return [
            label.model_copy(update={"threshold": float(table[label.code])}) if label.code in table else label
            for label in labels
        ]
    except (TypeError, ValueError):
        raise BundleError(f"Thresholds file {path} has a value that is not a number.") from None
