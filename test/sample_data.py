"""Where the repository and the sample radiographs are: ../shared/data beside the repo, never copied into it."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"
NIH = SHARED_DATA / "nih"
DICOM = SHARED_DATA / "dicom"
RGBA_PNGS = ("00000100_000.png", "00001369_000.png")
