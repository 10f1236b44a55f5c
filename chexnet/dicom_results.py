"""A prediction as DICOM objects a PACS files with the source study (DESIGN.md "DICOM results and the
DICOM node"), built with highdicom:

- a Comprehensive SR, TID 1500 measurement report: one measurement group per class (finding type:
  the class in the private scheme 99CHEXNET) with its probability (DCM 122157), threshold and a
  qualitative evaluation (the class: SCT Present/Absent at the threshold), the algorithm's name, version
  and demo flag ("NOT FOR DIAGNOSIS" for demo bundles);
- a Secondary Capture per heatmap: the overlay, with "DEMO - NOT FOR DIAGNOSIS" burned in for demo
  bundles.

Both copy the patient and study modules of the source, reference its SOP instance and get new UIDs,
derived from the source instance and the model under the configured root (asked again, the same
instances). The REST API and the DICOM node call :func:`result_objects`.
"""

import io
from dataclasses import dataclass

import cv2
import highdicom as hd
import numpy as np
import pydicom
from highdicom.sr import (
    AlgorithmIdentification,
    CodedConcept,
    ComprehensiveSR,
    DeviceObserverIdentifyingAttributes,
    Measurement,
    MeasurementReport,
    MeasurementsAndQualitativeEvaluations,
    ObservationContext,
    ObserverContext,
    QualitativeEvaluation,
    SourceImageForMeasurementGroup,
    TrackingIdentifier,
)
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid
from pydicom.valuerep import validate_value

from chexnet.errors import InvalidImage
from chexnet.predictor import Finding, Prediction

MANUFACTURER = "CheXNet on-premise"
SR_SERIES_NUMBER = 9901
SC_SERIES_NUMBER = 9902
NOT_FOR_DIAGNOSIS = "DEMO - NOT FOR DIAGNOSIS"
SCHEME = "99CHEXNET"  # a private coding scheme ("99" prefix) for the model's own concepts
THRESHOLD = CodedConcept("threshold", SCHEME, "Decision threshold")
UNITLESS = CodedConcept("1", "UCUM", "no units")
CHEST_RADIOGRAPH = CodedConcept("399208008", "SCT", "Plain chest X-ray")
# Type 2 attributes of the Patient and General Study modules: present in every result, empty when the
# source lacks them.
_TYPE2 = {
    "PatientName": "PN",
    "PatientID": "LO",
    "PatientBirthDate": "DA",
    "PatientSex": "CS",
    "StudyDate": "DA",
    "StudyTime": "TM",
    "ReferringPhysicianName": "PN",
    "StudyID": "SH",
    "AccessionNumber": "SH",
}
_CHARACTER_SETS = {v.value for v in hd.valuerep.SpecificCharacterSetValues}
_REQUIRED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")


@dataclass(frozen=True)
class ResultSettings:
    uid_root: str = pydicom.uid.PYDICOM_ROOT_UID  # CHEXNET_DICOM_UID_ROOT
    station_name: str = "CHEXNET"


def _checked_source(source: pydicom.Dataset) -> pydicom.Dataset:
    """The source header with its UIDs checked and every type 2 patient/study attribute present."""
    for keyword in _REQUIRED_UIDS:
        value = str(source.get(keyword) or "").strip("\0 ")
        if not value or not pydicom.uid.UID(value).is_valid:
            raise InvalidImage(
                f"The DICOM has no valid {keyword}, so results cannot be filed with its study; "
                "export it again from the PACS."
            )
    charsets = _character_sets(source)
    complete = pydicom.Dataset()
    for element in source:
        if element.keyword != "SpecificCharacterSet":
            complete.add_new(element.tag, element.VR, element.value if _fit(element, charsets) else None)
    if charsets:
        complete.SpecificCharacterSet = charsets
    elif "SpecificCharacterSet" in complete:
        del complete.SpecificCharacterSet
    for keyword, vr in _TYPE2.items():
        if keyword not in complete:
            complete.add_new(keyword, vr, None)
    return complete


def _fit(element: pydicom.DataElement, charsets: list[str]) -> bool:
    """Whether a source value may be copied as it is: valid for its VR (pydicom's check: an Age String
    "62" is not), as many values as the element takes, person-name groups of at most 64 characters, no control characters (ESC only under
    an ISO 2022 character set), and PatientSex one of M, F, O. What is not fit is copied empty."""
    value = element.value
    items = list(value) if isinstance(value, (list, pydicom.multival.MultiValue)) else [value]
    escapes = any(c.startswith("ISO 2022") for c in charsets)
    if len(items) > 1 and pydicom.datadict.dictionary_VM(element.tag) == "1":
        return False  # a backslash in a single-valued element
    try:
        for item in items:
            validate_value(element.VR, item, pydicom.config.RAISE)
            text = str(item if item is not None else "")
            if any(ord(c) < 0x20 and not (c == "\x1b" and escapes) for c in text):
                return False
            if element.VR == "PN" and any(len(group) > 64 for group in text.split("=")):
                return False
    except (ValueError, TypeError):
        return False
    return element.keyword != "PatientSex" or str(value or "") in ("", "M", "F", "O")


def _character_sets(source: pydicom.Dataset) -> list[str]:
    """The source's Specific Character Set as highdicom takes it: an empty first value (the default
    repertoire before code extensions, as Japanese DICOM writes it) is ISO 2022 IR 6; none at all is
    the default repertoire."""
    value = source.get("SpecificCharacterSet")
    terms = [
        str(v).strip()
        for v in (value if isinstance(value, (list, pydicom.multival.MultiValue)) else [value])
        if v is not None
    ]
    if len(terms) > 1 and terms[0] == "":
        terms[0] = "ISO 2022 IR 6"
    terms = [t for t in terms if t not in ("", "ISO_IR 6")]
    unknown = [t for t in terms if t not in _CHARACTER_SETS]
    if unknown:
        raise InvalidImage(
            f"The DICOM's Specific Character Set '{unknown[0][:32]}' is not one DICOM defines, so its "
            "names cannot be copied into results; correct it in the PACS."
        )
    return terms


def _uid(settings: ResultSettings, prediction: Prediction, *role: str) -> str:
    """A UID derived from the source instance, the model and the object's role: the same request made
    again (a retry, the node's restart after a crash) yields the same instance, not a duplicate."""
    m, source = prediction.model, prediction.source
    assert source is not None  # result_objects makes results only for a DICOM source
    return generate_uid(
        prefix=settings.uid_root,
        # site thresholds change present/absent, so they make other instances (the bundle's keep their UIDs)
        entropy_srcs=[str(source.SOPInstanceUID), m.id, m.version, m.precision, *_site(m.thresholds), *role],
    )


def _site(thresholds: str) -> list[str]:
    return [] if thresholds == "bundle" else [thresholds]


def _algorithm(prediction: Prediction) -> AlgorithmIdentification:
    m = prediction.model
    parameters = [
        f"engine={m.engine}",
        f"device={m.device}",
        f"precision={m.precision}",
        f"thresholds={m.thresholds}",
        f"demo={'true' if m.demo else 'false'}",
    ]
    if m.demo:
        parameters.append(f"{NOT_FOR_DIAGNOSIS}: untrained demo weights")
    return AlgorithmIdentification(
        name=f"CheXNet {m.id}", version=m.version, parameters=parameters, manufacturer=MANUFACTURER
    )


def _group(
    settings: ResultSettings,
    prediction: Prediction,
    source: pydicom.Dataset,
    finding: Finding,
    algorithm: AlgorithmIdentification,
) -> MeasurementsAndQualitativeEvaluations:
    presence = codes.SCT.Present if finding.positive else codes.SCT.Absent
    concept = CodedConcept(finding.code, SCHEME, finding.label.name.en)
    return MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(
            uid=_uid(settings, prediction, "tracking", finding.code), identifier=finding.code
        ),
        finding_type=concept,
        algorithm_id=algorithm,
        measurements=[
            Measurement(name=codes.DCM.Probability, value=finding.probability, unit=UNITLESS),
            Measurement(name=THRESHOLD, value=finding.label.threshold, unit=UNITLESS),
        ],
        # the class itself, present or absent at its threshold
        qualitative_evaluations=[QualitativeEvaluation(concept, presence)],
        source_images=[SourceImageForMeasurementGroup(source.SOPClassUID, source.SOPInstanceUID)],
    )


def _series_description(prediction: Prediction, what: str) -> str:
    m = prediction.model
    text = f"CheXNet {m.id} {m.version} {what}"
    return f"{text} {NOT_FOR_DIAGNOSIS}" if m.demo else text


def structured_report(settings: ResultSettings, prediction: Prediction, source: pydicom.Dataset) -> ComprehensiveSR:
    m = prediction.model
    device = DeviceObserverIdentifyingAttributes(
        uid=generate_uid(prefix=settings.uid_root, entropy_srcs=[settings.station_name, m.id, m.version]),
        name=settings.station_name,
        manufacturer_name=MANUFACTURER,
        model_name=f"{m.id} {m.version}",
    )
    context = ObservationContext(
        observer_device_context=ObserverContext(observer_type=codes.DCM.Device, observer_identifying_attributes=device)
    )
    algorithm = _algorithm(prediction)
    groups = [_group(settings, prediction, source, finding, algorithm) for finding in prediction.findings]
    report = MeasurementReport(
        observation_context=context, procedure_reported=CHEST_RADIOGRAPH, imaging_measurements=groups
    )
    sr = ComprehensiveSR(
        evidence=[source],
        content=report[0],
        series_instance_uid=_uid(settings, prediction, "sr-series"),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=_uid(settings, prediction, "sr"),
        instance_number=1,
        manufacturer=MANUFACTURER,
        series_description=_series_description(prediction, "findings"),
        is_complete=True,
        institution_name=source.get("InstitutionName") or None,
    )
    scheme = pydicom.Dataset()
    scheme.CodingSchemeDesignator = SCHEME
    scheme.CodingSchemeName = "CheXNet model concepts"
    scheme.CodingSchemeResponsibleOrganization = MANUFACTURER
    sr.CodingSchemeIdentificationSequence = [*sr.get("CodingSchemeIdentificationSequence", []), scheme]
    return sr


def _burn_in(rgb: np.ndarray, text: str) -> np.ndarray:
    out = rgb.copy()
    scale = max(0.4, out.shape[1] / 900)
    thickness = max(1, round(scale * 2))
    (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    cv2.rectangle(out, (0, 0), (min(out.shape[1], w + 12), h + base + 12), (0, 0, 0), -1)
    cv2.putText(out, text, (6, h + 6), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 0), thickness, cv2.LINE_AA)
    return out


def _orientation(source: pydicom.Dataset) -> tuple[str, str] | None:
    value = source.get("PatientOrientation")
    parts = list(value) if isinstance(value, (list, pydicom.multival.MultiValue)) else []
    allowed = {v.value for v in hd.PatientOrientationValuesBiped}
    if len(parts) == 2 and all(str(p) in allowed for p in parts):
        return str(parts[0]), str(parts[1])
    return None


def secondary_captures(
    settings: ResultSettings, prediction: Prediction, source: pydicom.Dataset
) -> list[hd.sc.SCImage]:
    series_uid = _uid(settings, prediction, "sc-series")
    orientation = _orientation(source)
    captures = []
    for number, heatmap in enumerate(prediction.heatmaps, start=1):
        code, overlay = heatmap.label.code, heatmap.rendered
        rgb = _burn_in(overlay.rgb, NOT_FOR_DIAGNOSIS) if prediction.model.demo else overlay.rgb
        sc = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=source,
            pixel_array=np.ascontiguousarray(rgb),
            photometric_interpretation="RGB",
            bits_allocated=8,
            coordinate_system="PATIENT",
            series_instance_uid=series_uid,
            series_number=SC_SERIES_NUMBER,
            sop_instance_uid=_uid(settings, prediction, "sc", code),
            instance_number=number,
            manufacturer=MANUFACTURER,
            patient_orientation=orientation or ("L", "F"),
            series_description=_series_description(prediction, "heatmaps"),
        )
        if orientation is None:  # unknown in the source: type 2, so present and empty
            sc.PatientOrientation = None  # type: ignore[assignment]  # pydicom: an empty value
        # General Series Laterality is type 2C; the source's value when it is one, else present and empty.
        sc.Laterality = source.Laterality if str(source.get("Laterality") or "") in ("R", "L") else None  # type: ignore[assignment]
        sc.ImageType = ["DERIVED", "SECONDARY"]
        sc.BurnedInAnnotation = "YES" if prediction.model.demo else "NO"
        sc.DerivationDescription = (
            f"Class activation map for {heatmap.label.name.en} from {prediction.model.id} "
            f"{prediction.model.version}" + (f"; {NOT_FOR_DIAGNOSIS}" if prediction.model.demo else "")
        )[:1024]
        reference = pydicom.Dataset()
        reference.ReferencedSOPClassUID = source.SOPClassUID
        reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
        sc.SourceImageSequence = [reference]
        captures.append(sc)
    return captures


def result_objects(settings: ResultSettings, prediction: Prediction) -> list[pydicom.Dataset]:
    """The SR, then one secondary capture per heatmap of the prediction."""
    if prediction.source is None:
        raise ValueError("DICOM results need a DICOM source (checked where the options are read)")
    source = _checked_source(prediction.source)
    try:
        return [structured_report(settings, prediction, source), *secondary_captures(settings, prediction, source)]
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        # highdicom validates what it copies: a malformed patient or study attribute in the source, or a
        # SOP class it has no module table for (KeyError).
        raise InvalidImage(
            "The DICOM's patient or study attributes are malformed, so results cannot be "
            f"filed with it ({type(exc).__name__}); correct them in the PACS."
        ) from None


def encode(dataset: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
