"""The site's labels: a CSV with one row per image, a column ``image`` naming the file (relative to the images
folder) and one 0/1 column per label code. Every problem is one sentence that says what to fix."""

import csv
import hashlib
import io
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from chexnet.errors import InvalidOption

IMAGE_COLUMN = "image"
MAX_LISTED = 5
MAX_LABELS_BYTES = 64 * 2**20  # a row per image: a million rows of cxr25 fit in ~60 MiB


class CalibrationInputError(InvalidOption):
    """The labels file, the images or the targets cannot be used as given."""


@dataclass(frozen=True)
class LabelledImages:
    files: list[Path]  # in the order of the rows
    truth: dict[str, np.ndarray]  # label code -> 0/1 per row (bool)
    sha256: str  # of the bytes read, the ones these rows come from


def _some(items: list[str]) -> str:
    shown = ", ".join(items[:MAX_LISTED])
    return shown + (f" and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else "")


def _escapes(name: str) -> bool:
    normal = os.path.normpath(name)
    return os.path.isabs(normal) or normal.split(os.sep)[0] == ".."


def _read_regular_file(path: Path) -> bytes:
    """The bytes of a regular file of at most MAX_LABELS_BYTES. Opened without blocking and checked on the open
    descriptor, so a FIFO or a device (even one swapped in after a check) is refused rather than waited on."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with open(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise CalibrationInputError(f"Labels file {path} is not a regular file; give the CSV file itself.")
        data = f.read(MAX_LABELS_BYTES + 1)
    if len(data) > MAX_LABELS_BYTES:
        raise CalibrationInputError(
            f"Labels file {path} is larger than {MAX_LABELS_BYTES // 2**20} MiB; it needs only one row per image."
        )
    return data


def read_labels(path: Path, images: Path, codes: list[str], bundle_id: str) -> LabelledImages:
    try:
        data = _read_regular_file(path)
        rows = list(csv.reader(io.StringIO(data.decode("utf-8-sig"), newline="")))
    except FileNotFoundError:
        raise CalibrationInputError(f"Labels file {path} does not exist.") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise CalibrationInputError(f"Labels file {path} is not a readable UTF-8 CSV ({exc}).") from None
    rows = [row for row in rows if any(cell.strip() for cell in row)]
    if not rows:
        raise CalibrationInputError(f"Labels file {path} is empty; it needs a header row and one row per image.")
    header = [cell.strip() for cell in rows[0]]
    if IMAGE_COLUMN not in header:
        raise CalibrationInputError(
            f"Labels file {path} has no '{IMAGE_COLUMN}' column; its header must be '{IMAGE_COLUMN}' and label codes."
        )
    columns = [h for h in header if h != IMAGE_COLUMN]
    repeated = sorted({h for h in header if header.count(h) > 1})
    if repeated:
        raise CalibrationInputError(f"Labels file {path} repeats the column(s) {_some(repeated)}.")
    unknown = [c for c in columns if c not in codes]
    if unknown:
        raise CalibrationInputError(
            f"Labels file {path} has columns that are not label codes of {bundle_id}: {_some(unknown)} "
            f"(its codes: {', '.join(codes)})."
        )
    if not columns:
        raise CalibrationInputError(f"Labels file {path} has no label columns; add one 0/1 column per label code.")
    if len(rows) == 1:
        raise CalibrationInputError(f"Labels file {path} has a header but no image rows.")
    where = {h: i for i, h in enumerate(header)}
    seen: dict[str, int] = {}
    files: list[Path] = []
    values: dict[str, list[bool]] = {c: [] for c in columns}
    for number, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise CalibrationInputError(
                f"Labels file {path} line {number} has {len(row)} cells, not {len(header)} as its header."
            )
        name = row[where[IMAGE_COLUMN]].strip()
        if not name:
            raise CalibrationInputError(f"Labels file {path} line {number} names no image.")
        key = os.path.normpath(name)  # a.png and ./a.png are the same image
        if key in seen:
            raise CalibrationInputError(
                f"Labels file {path} lists image {name} twice (lines {seen[key]} and {number}); keep one row per image."
            )
        seen[key] = number
        for code in columns:
            cell = row[where[code]].strip()
            if cell not in ("0", "1"):
                raise CalibrationInputError(
                    f"Labels file {path} line {number} has '{cell[:20]}' for {code}; each label must be 0 or 1."
                )
            values[code].append(cell == "1")
        files.append(images / name)
    # names are read inside the folder (as written: a folder of links to the PACS export is fine)
    outside = [name for name in seen if _escapes(name)]
    if outside:
        raise CalibrationInputError(f"Labels file {path} names files outside {images}: {_some(outside)}.")
    missing = [str(f.relative_to(images)) for f in files if not f.is_file()]
    if missing:
        raise CalibrationInputError(
            f"{len(missing)} image(s) the labels file names are not in {images}: {_some(missing)}."
        )
    truth = {c: np.array(v, dtype=bool) for c, v in values.items()}
    return LabelledImages(files, truth, hashlib.sha256(data).hexdigest())
