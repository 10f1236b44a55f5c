"""Real DICOM tools as a hospital's side uses them: dcmtk's storescu as the modality, GDCM re-encoding as a
modality or PACS would, dicom3tools' dciodvfy as the validator."""

import shutil
import subprocess
from pathlib import Path

import gdcm
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
PROPOSE = {
    JPEG2000Lossless: ["-xv"],
    JPEG2000: ["-xw"],
    JPEGBaseline8Bit: ["-xy"],
    JPEGExtended12Bit: ["-xx"],
    JPEGLosslessSV1: ["-xs"],
    RLELossless: ["-xr"],
}


def storescu(
    port: int, calling: str, called: str, *files: Path, host: str = "127.0.0.1"
) -> subprocess.CompletedProcess:
    """One association per file, each proposed in the transfer syntax it is stored in, as a modality does."""
    tool = shutil.which("storescu")
    assert tool, "storescu (Debian dcmtk) plays the modality here; .ci/run installs it"
    run = None
    for path in files:
        syntax = pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
        run = subprocess.run(
            [tool, *PROPOSE.get(syntax, []), "-aet", calling, "-aec", called, host, str(port), str(path)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if run.returncode != 0:
            return run
    return run


def transcode(source: Path, out: Path, syntax: int, lossy_error: int = 0) -> bytes:
    """Re-encode with GDCM, as a modality or PACS would have."""
    reader = gdcm.ImageReader()
    reader.SetFileName(str(source))
    assert reader.Read()
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(syntax))
    change.SetInput(reader.GetImage())
    if lossy_error:
        codec = gdcm.JPEGLSCodec()
        codec.SetLossless(False)
        codec.SetLossyError(lossy_error)
        change.SetUserCodec(codec)
    assert change.Change()
    writer = gdcm.ImageWriter()
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    writer.SetFileName(str(out))
    assert writer.Write()
    return out.read_bytes()


def dciodvfy_errors(ds: pydicom.Dataset, tmp_path: Path) -> list[str]:
    tool = shutil.which("dciodvfy")
    assert tool, "dciodvfy (Debian dicom3tools) is needed to validate DICOM results; .ci/run installs it"
    path = tmp_path / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    run = subprocess.run([tool, str(path)], capture_output=True, text=True, encoding="latin-1", check=False)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]
