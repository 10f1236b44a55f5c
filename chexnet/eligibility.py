"""Eligibility from DICOM tags (DESIGN.md "DICOM results and the DICOM node"): the models read frontal
chest radiographs, so a DICOM whose own header says otherwise gets a warning code in the response,
and the DICOM node skips it. Only what a tag says counts: a tag that is absent gives no warning, and
PNG/JPEG carry no tags, so they get none (nothing is guessed from the pixels)."""

import pydicom

RADIOGRAPHY = {"CR", "DX"}
CHEST = {"CHEST", "THORAX", "LUNG"}
LATERAL = {"LL", "RL", "LATERAL", "LAT"}

# code → the sentence a log line or a reader of the response gets
WARNINGS = {
    "not_radiograph": "Modality is not CR or DX; the models were trained on chest radiographs only.",
    "not_chest": "BodyPartExamined is not the chest; the findings do not apply to this body part.",
    "lateral_view": "ViewPosition is lateral; the models read frontal (PA/AP) views only.",
}


def _tag(source: pydicom.Dataset, keyword: str) -> str | None:
    value = source.get(keyword)
    text = str(value or "").strip().upper()
    return text or None


def warnings_for(source: pydicom.Dataset | None) -> list[str]:
    """Warning codes (keys of WARNINGS) in a fixed order; [] for a non-DICOM input."""
    if source is None:
        return []
    found = []
    modality = _tag(source, "Modality")
    if modality is not None and modality not in RADIOGRAPHY:
        found.append("not_radiograph")
    body_part = _tag(source, "BodyPartExamined")
    if body_part is not None and body_part not in CHEST:
        found.append("not_chest")
    view = _tag(source, "ViewPosition")
    if view is not None and view in LATERAL:
        found.append("lateral_view")
    return found
