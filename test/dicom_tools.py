"""Real DICOM tools as a hospital's side uses them: dcmtk's storescu as the modality."""

import shutil
import subprocess
from pathlib import Path

import pydicom
from pydicom.uid import (
    JPEG2000,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    RLELossless,
)

# storescu proposes only uncompressed syntaxes unless told, and cannot decompress most compressed files.
PROPOSE = {JPEG2000Lossless: ["-xv"], JPEG2000: ["-xw"], JPEGBaseline8Bit: ["-xy"], JPEGExtended12Bit: ["-xx"],
           JPEGLosslessSV1: ["-xs"], RLELossless: ["-xr"]}


def storescu(port: int, calling: str, called: str, *files: Path, host: str = "127.0.0.1") -> subprocess.CompletedProcess:
    """One association per file, each proposed in the transfer syntax it is stored in, as a modality does."""
    tool = shutil.which("storescu")
    assert tool, "storescu (Debian dcmtk) plays the modality here; .ci/run installs it"
    run = None
    for path in files:
        syntax = pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
        run = subprocess.run([tool, *PROPOSE.get(syntax, []), "-aet", calling, "-aec", called, host, str(port), str(path)],
                             capture_output=True, text=True, timeout=120, check=False)
        if run.returncode != 0:
            return run
    return run

