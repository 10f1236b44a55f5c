"""Write small DICOM files in memory for tests (pydicom's own writer)."""

import io

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

UNDECODABLE_SYNTAX = b"1.2.840.10008.1.2.4.94"  # JPIP Referenced: pixels live on a JPIP server


def undecodable(jpeg_baseline_dicom: bytes) -> bytes:
    """The same file claiming a transfer syntax nothing here decodes (the UIDs have equal length)."""
    return jpeg_baseline_dicom.replace(b"1.2.840.10008.1.2.4.50", UNDECODABLE_SYNTAX, 1)


def make_dicom(
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    frames: int = 1,
    preamble: bool = True,
    with_pixels: bool = True,
    **elements,
) -> bytes:
    """pixels: uint8 or uint16 H×W; extra keyword elements are set on the dataset."""
    ds = Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "CR"
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "PID-12345"
    ds.PatientBirthDate = "19700101"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    bits = 8 if pixels.dtype == np.uint8 else 16
    ds.BitsAllocated = bits
    ds.BitsStored = elements.pop("BitsStored", bits)
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    for key, value in elements.items():
        setattr(ds, key, value)
    if with_pixels:
        ds.PixelData = np.ascontiguousarray(np.stack([pixels] * frames) if frames > 1 else pixels).tobytes()
    buf = io.BytesIO()
    if preamble:
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(buf, enforce_file_format=True)
    else:
        # ACR-NEMA style: no preamble, no file meta, implicit VR little endian.
        ds.save_as(buf, implicit_vr=True, little_endian=True)
    return buf.getvalue()
