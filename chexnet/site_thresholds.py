"""A site's own thresholds (``site-thresholds.json``, written by ``python -m chexnet calibrate``) and how the
service applies them: the file names the bundle it was made for (id, version, the precision it ran in and the
sha256 of its manifest.json, which pins every weight file's sha256) and carries a hash of its own content; the
service refuses it for any other bundle or precision, or once edited, and every result then names the thresholds
that decided it: ``bundle`` or ``site@<first 12 hex digits of the content hash>``."""

import hashlib
import json
import math
import os
import stat
import sys
import tempfile
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from chexnet.bundle import Bundle
from chexnet.bundle.manifest import MANIFEST, sha256_file
from chexnet.errors import BundleError

SCHEMA = "chexnet-site-thresholds/1"
BUNDLE_THRESHOLDS = "bundle"  # ModelInfo.thresholds when the bundle's own thresholds decide
HASH_FIELD = "content_sha256"
MAX_BYTES = 16 << 20  # calibrate writes a few KiB; a larger file is not read into memory


class SiteThresholdsError(BundleError):
    """A site thresholds file that cannot be used (unreadable, edited, or made for another bundle)."""


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class MadeFor(_Open):
    """The bundle, and the precision it ran in, that the thresholds were measured on."""

    id: str
    version: str
    precision: str
    manifest_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    demo: bool


class ClassThreshold(_Open):
    code: str
    threshold: float = Field(ge=0.0, le=1.0)
    source: Literal["site", "bundle"]  # measured here, or the bundle's kept (reason says why)


class SiteThresholds(_Open):
    schema_: Literal["chexnet-site-thresholds/1"] = Field(alias="schema")
    bundle: MadeFor
    classes: list[ClassThreshold] = Field(min_length=1)
    content_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")

    @property
    def tag(self) -> str:
        return f"site@{self.content_sha256[:12]}"

    @property
    def thresholds(self) -> dict[str, float]:
        return {c.code: c.threshold for c in self.classes}


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:20]} is too large a number")
    return value


def content_hash(document: dict) -> str:
    """sha256 of the document without its own hash field, as canonical JSON (sorted keys, no spaces, ASCII)."""
    body = {k: v for k, v in document.items() if k != HASH_FIELD}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def with_hash(document: dict) -> dict:
    return {**{k: v for k, v in document.items() if k != HASH_FIELD}, HASH_FIELD: content_hash(document)}


def read_site_thresholds(path: str | Path, name: str | None = None) -> SiteThresholds:
    """The file, checked: JSON of this schema whose content hash matches (nothing edited since it was written).
    name: how sentences name the file (default: its path)."""
    shown = name or str(path)
    path = Path(path)
    try:
        with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as f:  # a FIFO must not hold up the start
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise SiteThresholdsError(f"Site thresholds file {shown} is not a regular file; give calibrate's file.")
            data = f.read(MAX_BYTES + 1)
        if len(data) > MAX_BYTES:
            raise SiteThresholdsError(
                f"Site thresholds file {shown} is larger than {MAX_BYTES >> 20} MiB, far more than calibrate writes; "
                "make it with python -m chexnet calibrate."
            )
        raw = json.loads(data.decode("utf-8"), parse_constant=_no_constant, parse_float=_finite)
    except FileNotFoundError:
        raise SiteThresholdsError(f"Site thresholds file {shown} does not exist.") from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise SiteThresholdsError(f"Site thresholds file {shown} is not readable JSON ({str(exc)[:200]}).") from None
    if not isinstance(raw, dict) or raw.get("schema") != SCHEMA:
        raise SiteThresholdsError(
            f"{shown} is not a site thresholds file ('schema' must be {SCHEMA}); make it with python -m chexnet calibrate."
        )
    try:
        site = SiteThresholds.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "file"
        raise SiteThresholdsError(
            f"Site thresholds file {shown}: field '{where}' is invalid: {first['msg']}."
        ) from None
    if content_hash(raw) != site.content_sha256:
        raise SiteThresholdsError(
            f"Site thresholds file {shown} was changed after calibrate wrote it (its content hash does not match); "
            "run calibrate again rather than editing it."
        )
    return site


def manifest_sha256(bundle: Bundle) -> str:
    return sha256_file(bundle.path / MANIFEST)


def mismatch(site: SiteThresholds, bundle: Bundle, precision: str, source: str) -> str | None:
    """One sentence saying how the bundle or precision differs from what the thresholds were made for, else None."""
    made, m = site.bundle, bundle.manifest
    differences = []
    if made.id != m.id:
        differences.append(f"bundle {made.id}, not {m.id}")
    if made.version != m.version:
        differences.append(f"version {made.version}, not {m.version}")
    if made.manifest_sha256 != manifest_sha256(bundle):
        differences.append("another manifest.json (sha256 differs: the bundle was rebuilt or replaced)")
    if made.precision != precision:
        differences.append(f"precision {made.precision}, not {precision}")
    if not differences:
        return None
    return (
        f"Site thresholds {source} were made for {'; '.join(differences)}; "
        f"calibrate again for {m.id} {m.version} in {precision}, or remove the file."
    )


def apply_site_thresholds(site: SiteThresholds, bundle: Bundle, precision: str, source: str) -> Bundle:
    """The bundle with the site's thresholds in its labels; refuses one made for another bundle or precision."""
    problem = mismatch(site, bundle, precision, source)
    if problem:
        raise SiteThresholdsError(problem)
    table = site.thresholds
    unknown = sorted(set(table) - set(bundle.manifest.codes))
    if unknown:
        raise SiteThresholdsError(f"Site thresholds {source} name label codes {bundle.id} does not have: {unknown}.")
    labels = [
        label.model_copy(update={"threshold": table[label.code]}) if label.code in table else label
        for label in bundle.manifest.labels
    ]
    return Bundle(bundle.path, bundle.manifest.model_copy(update={"labels": labels}))


def write_atomic(path: Path, data: bytes) -> None:
    """Write through a temporary file in the same folder and rename it over path: never half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def main(argv: list[str]) -> int:
    """python -m chexnet.site_thresholds FILE [NAME]: the installers' check, with the product's own reader, before
    they install a file; prints the thresholds' name and the bundle they are for, or one sentence (exit 1)."""
    try:
        site = read_site_thresholds(argv[0], argv[1] if len(argv) > 1 else None)
    except SiteThresholdsError as exc:
        print(exc.message, file=sys.stderr)
        return 1
    print(f"{site.tag} for {site.bundle.id} {site.bundle.version} ({site.bundle.precision})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
