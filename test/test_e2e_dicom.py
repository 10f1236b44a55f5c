"""End to end with a real PACS (run by test/e2e.sh after the field guide's "DICOM node" section): Orthanc
from Debian plays the hospital PACS and routes CR/DX to the installed node; dcmtk's storescu plays the
modality. The node is killed with SIGKILL as soon as it has accepted the images, its restart policy
brings it back, and every result must reach Orthanc in the source study and pass dciodvfy. Then, after the
guide's DICOMweb step (results to Orthanc's DICOMweb plugin), a study sent by STOW-RS through nginx must come
back to Orthanc by STOW-RS (``-k dicomweb``; test/e2e.sh runs the two stages around that step).

Environment: CHEXNET_E2E_SITE (the install folder), CHEXNET_E2E_ORTHANC_URL (its REST API),
CHEXNET_E2E_ORTHANC_DICOM (host:port of its DICOM listener), CHEXNET_QA_SAMPLES (../shared/data), and for
STOW-RS through nginx CHEXNET_QA_URL, CHEXNET_QA_CA_CERT and CHEXNET_QA_TOKEN_FILE (the QA script's)."""

import io
import os
import signal
import subprocess
from pathlib import Path

import pydicom
import pytest
import requests
from pydicom.uid import ComprehensiveSRStorage, ParametricMapStorage, SecondaryCaptureImageStorage, generate_uid

from dicom_tools import dciodvfy_errors, storescu
from waiting import wait_until

pytestmark = pytest.mark.e2e
CHEST = ["RG1_UNCR.dcm", "RG1_J2KR.dcm", "RSNA_pneumonia_16d7f894_CR_SC_jpegbaseline.dcm"]
NOT_CHEST = ["RG3_RLE.dcm"]


@pytest.fixture(scope="module")
def site() -> Path:
    return Path(os.environ["CHEXNET_E2E_SITE"])


@pytest.fixture(scope="module")
def orthanc() -> str:
    return os.environ["CHEXNET_E2E_ORTHANC_URL"]


def compose(site: Path, *args: str) -> str:
    v2 = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False).returncode == 0
    command = ["docker", "compose"] if v2 else ["docker-compose"]
    return subprocess.run([*command, *args], cwd=site, capture_output=True, text=True, check=True).stdout.strip()


def inspect(container: str, template: str) -> str:
    return subprocess.run(
        ["docker", "inspect", "-f", template, container], capture_output=True, text=True, check=True
    ).stdout.strip()


def node_metric(container: str, name: str) -> float:
    script = "import urllib.request as u; print(u.urlopen('http://127.0.0.1:9102/metrics', timeout=5).read().decode())"
    run = subprocess.run(
        ["docker", "exec", container, "python", "-c", script], capture_output=True, text=True, check=False
    )
    return sum(float(line.split()[-1]) for line in run.stdout.splitlines() if line.startswith(name))


def study_instances(orthanc: str, study_uid: str) -> list[pydicom.Dataset]:
    found = requests.post(
        f"{orthanc}/tools/find", json={"Level": "Instance", "Query": {"StudyInstanceUID": study_uid}}, timeout=30
    ).json()
    return [
        pydicom.dcmread(io.BytesIO(requests.get(f"{orthanc}/instances/{i}/file", timeout=30).content)) for i in found
    ]


def results_for(orthanc: str, source: pydicom.Dataset) -> dict:
    found = {}
    for ds in study_instances(orthanc, source.StudyInstanceUID):
        if ds.SOPClassUID == ComprehensiveSRStorage:
            evidence = ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
            if evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID:
                found["sr"] = ds
        elif ds.SOPClassUID == SecondaryCaptureImageStorage and "SourceImageSequence" in ds:
            if ds.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID:
                found["sc"] = ds
        elif ds.SOPClassUID == ParametricMapStorage:
            derivation = ds.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0]
            if derivation.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID:
                found["pm"] = ds
    return found


def test_results_reach_the_pacs_in_the_source_study_through_a_crash_of_the_node(site, orthanc, tmp_path):
    samples = Path(os.environ["CHEXNET_QA_SAMPLES"]) / "dicom"
    host, port = os.environ["CHEXNET_E2E_ORTHANC_DICOM"].rsplit(":", 1)
    node = compose(site, "ps", "-q", "dicom-node")
    assert inspect(node, "{{.State.Health.Status}}") == "healthy"
    restarts = int(inspect(node, "{{.RestartCount}}"))

    sent = storescu(int(port), "MODALITY", "ORTHANC", *[samples / n for n in CHEST + NOT_CHEST], host=host)
    assert sent.returncode == 0, sent.stderr
    # Orthanc routes each CR to the node; crash the node the moment it has acknowledged all of them.
    wait_until(
        lambda: node_metric(node, "chexnet_dicom_received_total") >= len(CHEST + NOT_CHEST),
        300,
        "the node to accept every routed image",
    )
    os.kill(int(inspect(node, "{{.State.Pid}}")), signal.SIGKILL)
    wait_until(
        lambda: int(inspect(node, "{{.RestartCount}}")) > restarts, 120, "the restart policy to restart the node"
    )
    wait_until(lambda: inspect(node, "{{.State.Health.Status}}") == "healthy", 300, "the restarted node to be healthy")

    for name in CHEST:
        source = pydicom.dcmread(samples / name, stop_before_pixels=True)
        results = wait_until(
            lambda source=source: (r := results_for(orthanc, source)) and len(r) == 3 and r,
            300,
            f"the SR, heatmap capture and Parametric Map of {name} in Orthanc",
        )
        for ds in results.values():
            assert dciodvfy_errors(ds, tmp_path) == [], f"{name}: {ds.SOPClassUID.name}"
            assert (ds.PatientID, ds.StudyInstanceUID) == (source.PatientID, source.StudyInstanceUID)
    for name in NOT_CHEST:
        source = pydicom.dcmread(samples / name, stop_before_pixels=True)
        assert results_for(orthanc, source) == {}, f"{name} is not a chest image: no results"
    logs = subprocess.run(["docker", "logs", node], capture_output=True, text=True, check=True)
    assert "skipped: not a frontal chest radiograph" in logs.stdout + logs.stderr
    audit = (site / "audit" / "dicom-node.jsonl").read_text()
    assert audit.count('"event": "dicom_skipped"') >= len(NOT_CHEST)
    assert "CompressedSamples" not in audit, "no patient name in the audit file"


def test_a_study_sent_by_stow_rs_through_nginx_comes_back_to_the_pacs_by_dicomweb(site, orthanc, tmp_path):
    """After the guide's DICOMweb step: STOW-RS in through nginx (token required), every result out by STOW-RS."""
    node = compose(site, "ps", "-q", "dicom-node")
    wait_until(lambda: inspect(node, "{{.State.Health.Status}}") == "healthy", 300, "the recreated node to be healthy")
    assert "CHEXNET_DICOMWEB_DESTINATION=http://orthanc:8042/dicom-web" in inspect(node, "{{json .Config.Env}}")
    source = pydicom.dcmread(Path(os.environ["CHEXNET_QA_SAMPLES"]) / "dicom" / CHEST[1])
    source.StudyInstanceUID, source.SeriesInstanceUID = generate_uid(), generate_uid()  # a study new to Orthanc
    source.SOPInstanceUID = source.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    data = io.BytesIO()
    source.save_as(data, enforce_file_format=True)
    boundary = "chexnet-e2e-stow"
    body = b"".join(
        (
            f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode(),
            data.getvalue(),
            f"\r\n--{boundary}--\r\n".encode(),
        )
    )
    url, ca = f"{os.environ['CHEXNET_QA_URL']}/dicomweb/studies", os.environ["CHEXNET_QA_CA_CERT"]
    content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
    refused = requests.post(url, data=body, headers={"Content-Type": content_type}, verify=ca, timeout=60)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "token_missing", refused.text
    token = Path(os.environ["CHEXNET_QA_TOKEN_FILE"]).read_text().strip()
    answer = requests.post(
        url,
        data=body,
        headers={"Content-Type": content_type, "Authorization": f"Bearer {token}"},
        verify=ca,
        timeout=120,
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["00081199"]["Value"][0]["00081155"]["Value"] == [source.SOPInstanceUID]

    results = wait_until(
        lambda: (r := results_for(orthanc, source)) and len(r) == 3 and r, 300, "the SR, capture and map in Orthanc"
    )
    for ds in results.values():
        assert dciodvfy_errors(ds, tmp_path) == [], ds.SOPClassUID.name
        assert (ds.PatientID, ds.StudyInstanceUID) == (source.PatientID, source.StudyInstanceUID)
        found = requests.post(f"{orthanc}/tools/lookup", data=ds.SOPInstanceUID, timeout=30).json()
        origin = requests.get(f"{orthanc}/instances/{found[0]['ID']}/metadata/Origin", timeout=30).text
        assert origin == "Plugins", "stored by Orthanc's DICOMweb plugin (STOW-RS), not by C-STORE"
