"""A prediction as DICOM objects a PACS files with the source study (DESIGN.md "DICOM results and the
DICOM node"), built with highdicom:

- a Comprehensive SR, TID 1500 measurement report: one measurement group per class (finding type:
  the class in the private scheme 99CHEXNET) with its probability (DCM 122157), threshold and a
  qualitative evaluation (the class: SCT Present/Absent at the threshold), the algorithm's name, version
  and demo flag ("NOT FOR DIAGNOSIS" for demo bundles);
- a Secondary Capture per heatmap: the overlay, with "DEMO - NOT FOR DIAGNOSIS" burned in for demo
  bundles;
- a Parametric Map per heatmap: the class activation map as float values in 0..1 (a unitless real-world
  value mapping whose quantity is the class, 99CHEXNET) on the source image's rows and columns, which the
  SR's measurement group of that class references next to the source image (as IHE AI Results does).
  CHEXNET_DICOM_MAPS (sc, pm or both) chooses which of the last two are made.

All copy the patient and study modules of the source, reference its SOP instance and get new UIDs,
derived from the source instance and the model under the configured root (asked again, the same
instances). What of the source is copied is decided in one place, :func:`_checked_source`: a value is
copied when it is valid in the repertoire the source declares, else left empty (type 2) or out (type 3),
with a log line naming the attribute. The REST API and the DICOM node call :func:`result_objects`.
"""

import io
import logging
from collections.abc import Sequence
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
from pydicom.charset import decode_bytes, encode_string, python_encoding
from pydicom.dataelem import RawDataElement
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid
from pydicom.valuerep import validate_value

from chexnet.errors import InvalidImage, InvalidOption
from chexnet.predictor import Finding, Prediction

MANUFACTURER = "CheXNet on-premise"
SR_SERIES_NUMBER = 9901
SC_SERIES_NUMBER = 9902
PM_SERIES_NUMBER = 9903
MAPS = ("sc", "pm", "both")  # CHEXNET_DICOM_MAPS: which heatmap objects are made
# The float pixels all Parametric Maps of one result may hold (each map is 4 bytes per source pixel; the
# dataset and its encoding hold about three times this at their peak): 1 map of a 40 MP image, or 7 of 9 MP.
MAP_BUDGET_MIB = 256
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
# Text values whose bytes depend on the Specific Character Set (chexnet.imaging.dicom keeps them as read).
_CHARACTER_SET_VRS = {"SH", "LO", "ST", "LT", "UT", "PN", "UC"}
UTF8 = "ISO_IR 192"

log = logging.getLogger(__name__)
_REQUIRED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")


@dataclass(frozen=True)
class ResultSettings:
    uid_root: str = pydicom.uid.PYDICOM_ROOT_UID  # CHEXNET_DICOM_UID_ROOT
    station_name: str = "CHEXNET"
    maps: str = "both"  # CHEXNET_DICOM_MAPS: one of MAPS

    @property
    def secondary_captures(self) -> bool:
        return self.maps in ("sc", "both")

    @property
    def parametric_maps(self) -> bool:
        return self.maps in ("pm", "both")


def _checked_source(source: pydicom.Dataset) -> pydicom.Dataset:
    """The source header with its UIDs checked, as results may carry it: the one place that decides, value by
    value, what is copied. A value is copied when its bytes are valid in the repertoire the source declares
    (:func:`_in_repertoire`) and the value is fit for its attribute (:func:`_fit`); otherwise it is left
    empty where the attribute is type 2 (every one of ``_TYPE2`` is present) and left out where it is not, and
    a log line names the attribute (never its value). The result declares the character set its values need
    (:func:`_result_character_sets`)."""
    for keyword in _REQUIRED_UIDS:
        value = str(source.get(keyword) or "").strip("\0 ")
        if not value or not pydicom.uid.UID(value).is_valid:
            raise InvalidImage(
                f"The DICOM has no valid {keyword}, so results cannot be filed with its study; "
                "export it again from the PACS."
            )
    declared = _character_sets(source)
    complete = pydicom.Dataset()
    texts = []
    for tag in list(source.keys()):
        raw = source.get_item(tag)  # the bytes as read, before pydicom converts them on access
        element = source[tag]
        if element.keyword == "SpecificCharacterSet":
            continue
        name = element.keyword or str(element.tag)
        if not _in_repertoire(raw, element, declared):
            problem = f"not valid in its declared character set ({', '.join(declared) or 'none: ASCII'})"
        elif not _fit(element, declared):
            problem = f"not a valid {element.VR} value"
        else:
            complete.add_new(element.tag, element.VR, element.value)
            if element.VR in _CHARACTER_SET_VRS:
                texts.append(_text(element))
            continue
        kept = element.keyword in _TYPE2
        log.warning("DICOM results: the source's %s is %s; left %s.", name, problem, "empty" if kept else "out")
        if kept:
            complete.add_new(element.tag, element.VR, None)
    charsets = _result_character_sets(texts, declared)
    if charsets:
        complete.SpecificCharacterSet = charsets
    for keyword, vr in _TYPE2.items():
        if keyword not in complete:
            complete.add_new(keyword, vr, None)
    return complete


def _text(element: pydicom.DataElement) -> str:
    value = element.value
    items = list(value) if isinstance(value, (list, pydicom.multival.MultiValue)) else [value]
    return "\\".join(str(item if item is not None else "") for item in items)


def _in_repertoire(
    raw: pydicom.DataElement | RawDataElement, element: pydicom.DataElement, declared: list[str]
) -> bool:
    """Whether a text value's bytes, as the source sent them, are valid in the repertoire it declares: ASCII
    where it declares none, a strict decode where it declares one set, and where it declares ISO 2022 code
    extensions, pydicom's decode switching on the escape sequences without replacing a byte. Latin-1 bytes
    with no declaration, or under ISO_IR 192 (UTF-8), are not: they are never guessed at."""
    if element.VR not in _CHARACTER_SET_VRS or not isinstance(raw, RawDataElement) or raw.value is None:
        return True
    data = bytes(raw.value)
    if not declared:
        return data.isascii()
    if len(declared) == 1 and not declared[0].startswith("ISO 2022"):
        try:
            data.decode(python_encoding[declared[0]])
        except (UnicodeDecodeError, LookupError):
            return False
        return True
    return "\ufffd" not in _text(element)


def _result_character_sets(texts: list[str], declared: list[str]) -> list[str]:
    """The Specific Character Set of the results: none when every copied value is ASCII; the source's own
    when it encodes every copied value back (the values were valid in it); otherwise, where pydicom's
    ISO 2022 encoder cannot give a value back as it was, ISO_IR 192: the values transcoded to UTF-8."""
    if all(text.isascii() for text in texts):
        return []
    encodings = [python_encoding[term] for term in declared]
    for text in texts:
        try:
            encoded = encode_string(text, encodings)
            if decode_bytes(encoded, encodings, {ord(c) for c in "^=\\"}) != text:
                return [UTF8]
        except (UnicodeError, LookupError, ValueError):
            return [UTF8]
    return declared


def _fit(element: pydicom.DataElement, charsets: list[str]) -> bool:
    """Whether a source value may be copied as it is: valid for its VR (pydicom's check: an Age String
    "62" is not), as many values as the element takes, person-name groups of at most 64 characters, no control characters (ESC only under
    an ISO 2022 character set), and PatientSex one of M, F, O."""
    value = element.value
    items = list(value) if isinstance(value, (list, pydicom.multival.MultiValue)) else [value]
    escapes = any(c.startswith("ISO 2022") for c in charsets)
    if len(items) > 1 and pydicom.datadict.dictionary_VM(element.tag) == "1":
        return False  # a backslash in a single-valued element
    try:
        for item in items:
            # pydicom's own IS/DS numbers are checked as the strings they were read from
            validate_value(element.VR, str(item) if element.VR in ("IS", "DS") else item, pydicom.config.RAISE)
            text = str(item if item is not None else "")
            if any(ord(c) < 0x20 and not (c == "\x1b" and escapes) or 0x7F <= ord(c) <= 0x9F for c in text):
                return False  # control characters (C0 but ESC under ISO 2022, DEL, C1) are in no DICOM text
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
    parametric_map: pydicom.Dataset | None = None,
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
        # the radiograph, then the finding's Parametric Map where one was made (IHE AI Results: a viewer finds
        # the map of a finding among its group's image references, by its SOP class)
        source_images=[
            SourceImageForMeasurementGroup(image.SOPClassUID, image.SOPInstanceUID)
            for image in (source, parametric_map)
            if image is not None
        ],
    )


def _series_description(prediction: Prediction, what: str) -> str:
    m = prediction.model
    text = f"CheXNet {m.id} {m.version} {what}"
    return f"{text} {NOT_FOR_DIAGNOSIS}" if m.demo else text


# Triage priority (chexnet.triage) as a study-level coded finding: TID 1500's "Qualitative Evaluations"
# container holding (triage-priority, 99CHEXNET) = routine | urgent | stat (99CHEXNET), each rule that raised
# it and, for demo bundles, the DEMO note as (121106, DCM, "Comment") text properties.
QUALITATIVE_EVALUATIONS = CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")
PRIORITY = CodedConcept("triage-priority", SCHEME, "Triage priority")
PRIORITY_LEVELS = {level: CodedConcept(level, SCHEME, level.upper()) for level in ("routine", "urgent", "stat")}
COMMENT = CodedConcept("121106", "DCM", "Comment")


def _priority_item(prediction: Prediction) -> hd.sr.ContainerContentItem:
    priority = prediction.priority
    item = hd.sr.CodeContentItem(PRIORITY, PRIORITY_LEVELS[priority.level], relationship_type="CONTAINS")
    notes = [f"raised by {r.rule.text}: {r.code} probability {r.probability:g}" for r in priority.raised]
    if not priority.rules:
        notes.append("no priority rule applies to this model (CHEXNET_PRIORITY_RULES)")
    if priority.demo:
        notes.append(f"{NOT_FOR_DIAGNOSIS}: priority from untrained demo weights")
    if notes:
        item.ContentSequence = hd.sr.ContentSequence(
            [hd.sr.TextContentItem(COMMENT, note[:1024], relationship_type="HAS PROPERTIES") for note in notes]
        )
    container = hd.sr.ContainerContentItem(QUALITATIVE_EVALUATIONS, relationship_type="CONTAINS")
    container.ContentSequence = hd.sr.ContentSequence([item])
    return container


def structured_report(
    settings: ResultSettings,
    prediction: Prediction,
    source: pydicom.Dataset,
    parametric_maps: Sequence[pydicom.Dataset] = (),
) -> ComprehensiveSR:
    """The TID 1500 report; each finding's group references the finding's Parametric Map among
    ``parametric_maps`` (by the quantity of its real-world value mapping)."""
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
    maps = {_map_code(pm): pm for pm in parametric_maps}
    groups = [
        _group(settings, prediction, source, finding, algorithm, maps.get(finding.code))
        for finding in prediction.findings
    ]
    report = MeasurementReport(
        observation_context=context, procedure_reported=CHEST_RADIOGRAPH, imaging_measurements=groups
    )
    report[0].ContentSequence.append(_priority_item(prediction))
    sr = ComprehensiveSR(
        evidence=[source, *parametric_maps],
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
        along_rows, along_columns = str(parts[0]), str(parts[1])
        if np.dot(_DIRECTIONS[along_rows], _DIRECTIONS[along_columns]) == 0:  # L and L, or L and R: no plane
            return along_rows, along_columns
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


# --- Parametric Maps --------------------------------------------------------------------------------------
_DIRECTIONS = {"L": (1, 0, 0), "R": (-1, 0, 0), "P": (0, 1, 0), "A": (0, -1, 0), "H": (0, 0, 1), "F": (0, 0, -1)}


def _positive(value) -> list[float] | None:
    try:
        numbers = [float(v) for v in (value or [])]
    except (TypeError, ValueError):
        return None
    return numbers if len(numbers) == 2 and min(numbers) > 0 and np.isfinite(numbers).all() else None


def _plane(source: pydicom.Dataset) -> bool:
    """Whether the source's Image Position and Orientation (Patient) describe a plane: a finite position and
    two orthogonal unit vectors (dciodvfy's check), not zeros or the same direction twice."""
    try:
        position = np.array([float(v) for v in source.get("ImagePositionPatient") or []])
        orientation = np.array([float(v) for v in source.get("ImageOrientationPatient") or []])
    except (TypeError, ValueError):
        return False
    if position.shape != (3,) or orientation.shape != (6,) or not np.isfinite([*position, *orientation]).all():
        return False
    row, column = orientation[:3], orientation[3:]
    unit = abs(np.linalg.norm(row) - 1) < 1e-3 and abs(np.linalg.norm(column) - 1) < 1e-3
    return bool(unit and abs(np.dot(row, column)) < 1e-3)


def _map_geometry(settings: ResultSettings, prediction: Prediction, source: pydicom.Dataset) -> pydicom.Dataset:
    """The source as highdicom derives a Parametric Map's plane from it. A source with a frame of reference,
    position, orientation and pixel spacing (a DX "for processing" or a tomosynthesis plane) lends them as
    they are, so the map lies in its patient space. A projection radiograph (CR, most DX) has none, and the
    Parametric Map IOD requires them: the map gets a frame of reference of its own (a UID derived like the
    others: no other object shares it), its first pixel at the origin, the orientation the source's Patient
    Orientation names (L\\F, the PA convention, where it names none) and the source's Pixel Spacing, else its
    Imager Pixel Spacing, else 1 mm. Either way the map has the source's rows and columns and references it
    with Spatial Locations Preserved YES: a viewer overlays it pixel on pixel."""
    geometry = pydicom.Dataset()
    geometry.update(source)
    if "SliceThickness" not in geometry:  # highdicom reads it for the pixel measures; unknown for a projection
        geometry.SliceThickness = None
    spacing = _positive(source.get("PixelSpacing"))
    if source.get("FrameOfReferenceUID") and spacing and _plane(source):
        return geometry
    along_rows, along_columns = _orientation(source) or ("L", "F")
    geometry.FrameOfReferenceUID = _uid(settings, prediction, "frame-of-reference")
    geometry.PositionReferenceIndicator = None
    geometry.ImagePositionPatient = [0.0, 0.0, 0.0]
    geometry.ImageOrientationPatient = [float(c) for c in (*_DIRECTIONS[along_rows], *_DIRECTIONS[along_columns])]
    geometry.PixelSpacing = spacing or _positive(source.get("ImagerPixelSpacing")) or [1.0, 1.0]
    return geometry


def _map_code(pm: pydicom.Dataset) -> str:
    mapping = pm.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    return str(mapping.QuantityDefinitionSequence[0].ConceptCodeSequence[0].CodeValue)


def parametric_maps(
    settings: ResultSettings, prediction: Prediction, source: pydicom.Dataset
) -> list[hd.pm.ParametricMap]:
    """One Parametric Map per heatmap: the CAM (min-max normalised, 0..1) resampled bilinearly from the
    model's grid over the whole image to the source's rows and columns, stored as 32-bit floats."""
    if not prediction.heatmaps:
        return []
    m = prediction.model
    rows, columns = int(source.Rows), int(source.Columns)
    need_mib = rows * columns * 4 * len(prediction.heatmaps) / 2**20
    if need_mib > MAP_BUDGET_MIB:
        raise InvalidOption(
            f"{len(prediction.heatmaps)} Parametric Maps of this {columns}x{rows} image would take "
            f"{need_mib:.0f} MiB, over the {MAP_BUDGET_MIB} MiB one result may hold; ask for fewer heatmaps "
            "(heatmaps=top), or for secondary captures only (CHEXNET_DICOM_MAPS=sc)."
        )
    geometry = _map_geometry(settings, prediction, source)
    series_uid = _uid(settings, prediction, "pm-series")
    maps = []
    for number, heatmap in enumerate(prediction.heatmaps, start=1):
        name = heatmap.label.name.en
        values = cv2.resize(heatmap.cam.astype(np.float32), (columns, rows), interpolation=cv2.INTER_LINEAR)
        np.clip(values, 0.0, 1.0, out=values)  # in place: the map is the largest array of a result
        mapping = hd.pm.RealWorldValueMapping(
            lut_label="CAM",
            lut_explanation=f"Class activation, unitless 0-1: {name}"[:64],
            unit=UNITLESS,
            value_range=(0.0, 1.0),
            slope=1.0,
            intercept=0.0,
            quantity_definition=CodedConcept(heatmap.label.code, SCHEME, name),
        )
        pm = hd.pm.ParametricMap(
            source_images=[geometry],
            pixel_array=values,
            series_instance_uid=series_uid,
            series_number=PM_SERIES_NUMBER,
            sop_instance_uid=_uid(settings, prediction, "pm", heatmap.label.code),
            instance_number=number,
            manufacturer=MANUFACTURER,
            manufacturer_model_name=f"{m.id} {m.version}"[:64],
            software_versions=m.version,
            device_serial_number=settings.station_name,
            contains_recognizable_visual_features=False,
            real_world_value_mappings=[mapping],
            voi_lut_transformations=[hd.VOILUTTransformation(window_center=0.5, window_width=1.0)],
            content_label="DEMO_CAM" if m.demo else "CAM",
            content_description=(f"CAM {name}" + (f" {NOT_FOR_DIAGNOSIS}" if m.demo else ""))[:64],
            derived_pixel_contrast=hd.pm.DerivedPixelContrastValues.QUANTITY,
            series_description=_series_description(prediction, "CAM"),
        )
        # General Series Laterality is type 2C: the source's value when it is one, else present and empty.
        pm.Laterality = source.Laterality if str(source.get("Laterality") or "") in ("R", "L") else None
        pm.BurnedInAnnotation = "NO"
        maps.append(pm)
    return maps


def result_objects(settings: ResultSettings, prediction: Prediction) -> list[pydicom.Dataset]:
    """The SR, then one secondary capture per heatmap, then one Parametric Map per heatmap (as
    ``settings.maps`` asks); the SR references each map from its finding's measurement group."""
    if prediction.source is None:
        raise ValueError("DICOM results need a DICOM source (checked where the options are read)")
    source = _checked_source(prediction.source)
    try:
        maps = parametric_maps(settings, prediction, source) if settings.parametric_maps else []
        captures = secondary_captures(settings, prediction, source) if settings.secondary_captures else []
        return [structured_report(settings, prediction, source, maps), *captures, *maps]
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
