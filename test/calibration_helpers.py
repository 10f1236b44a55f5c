"""Site calibration in tests: a labels CSV for a bundle built from the NIH sample's own labels
(../shared/data/nih/labels.csv, read where it is), and the calibrate command run as a site runs it."""

import csv
import subprocess
import sys
from pathlib import Path

from sample_data import ROOT

# ChestX-ray14 column of the sample's labels.csv -> cxr10 label code
NIH_TO_CXR10 = {
    "Consolidation": "consolidation",
    "Cardiomegaly": "cardiomegaly",
    "Pneumothorax": "pneumothorax",
    "Edema": "pulmonary_edema",
    "Mass": "mass",
    "Pneumonia": "pneumonia",
    "Effusion": "pleural_effusion",
}
ANY_FINDING = "atelectasis"  # labelled 1 where the image has any ChestX-ray14 finding: 30 of 40, enough of both
CONSTANT = "fracture"  # all 0: AUROC undefined
# unspecified_10 gets no column at all


def nih_rows(nih_dir: Path) -> list[dict[str, str]]:
    with open(nih_dir / "labels.csv", newline="") as f:
        return list(csv.DictReader(f))


def cxr10_labels(nih_dir: Path, out: Path) -> dict[str, list[int]]:
    """Writes the labels CSV for the cxr10 demo bundle; returns its columns (code -> 0/1 per row, image names)."""
    rows = nih_rows(nih_dir)
    findings = [name for name in rows[0] if name != "image"]
    columns: dict = {"image": [r["image"] for r in rows]}
    columns[ANY_FINDING] = [int(any(r[n] == "1" for n in findings)) for r in rows]
    for name, code in NIH_TO_CXR10.items():
        columns[code] = [int(r[name]) for r in rows]
    columns[CONSTANT] = [0] * len(rows)
    write_csv(out, columns)
    return columns


def write_csv(path: Path, columns: dict[str, list]) -> None:
    names = list(columns)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(names)
        writer.writerows(zip(*(columns[n] for n in names), strict=True))


def run_calibrate(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "chexnet", "calibrate", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
