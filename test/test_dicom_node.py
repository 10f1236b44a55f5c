"""The DICOM node as a PACS meets it: ``python -m chexnet dicom-node`` in its own process, dcmtk's storescu
as the modality, a pynetdicom C-STORE SCP as the destination. Instances are spooled before the C-STORE
is answered, so a SIGKILL right after the sends loses nothing; results wait in the spool while the
destination is down and arrive once it is up."""

import sqlite3
import subprocess
import sys

import pydicom
import pytest
from pydicom.uid import ComprehensiveSRStorage, ParametricMapStorage, SecondaryCaptureImageStorage

from dicom_node_helpers import CHEST, NOT_CHEST
from dicom_tools import dciodvfy_errors, storescu
from waiting import wait_until


def test_accepted_instances_survive_a_sigkill_and_results_arrive_once_the_pacs_is_up(dicom_site, dicom_dir, tmp_path):
    env, node, destination = dicom_site
    node.start()
    files = [dicom_dir / name for name in (*CHEST, NOT_CHEST)]
    sent = storescu(node.port, "MODALITY", "CHEXNET", *files)
    assert sent.returncode == 0, sent.stderr
    node.kill()  # right after the sends returned: everything acknowledged must be on disk
    spooled = list((node.spool / "incoming").glob("*.dcm")) + list((node.spool / "outgoing").glob("*.dcm"))
    assert spooled, "acknowledged instances must be in the spool"

    node.start()  # the destination is still down: results wait in the spool and the failures are counted
    wait_until(lambda: node.metric("chexnet_dicom_send_failures_total") >= 1, 120, "a failed send")
    wait_until(lambda: not list((node.spool / "incoming").glob("*.dcm")), 120, "the worker to empty incoming/")
    assert node.metric('chexnet_dicom_queue_depth{queue="outgoing"}') >= 2

    destination.start()
    wait_until(
        lambda: len(destination.received) >= 6 and not list((node.spool / "outgoing").glob("*.dcm")),
        120,
        "the results at the destination",
    )
    assert len(destination.received) == 6, "an SR, a capture and a Parametric Map per chest image; the tibia is skipped"
    for name in CHEST:
        source = pydicom.dcmread(dicom_dir / name, stop_before_pixels=True)
        mine = [ds for ds in destination.received if ds.StudyInstanceUID == source.StudyInstanceUID]
        assert sorted(ds.SOPClassUID for ds in mine) == sorted(
            [ComprehensiveSRStorage, SecondaryCaptureImageStorage, ParametricMapStorage]
        )
        for ds in mine:
            assert dciodvfy_errors(ds, tmp_path) == []
            assert ds.PatientID == source.PatientID
    audit = (tmp_path / "audit.jsonl").read_text()
    assert audit.count('"event": "dicom_skipped"') == 1 and '"not_chest"' in audit
    assert "CompressedSamples" not in audit and "CompressedSamples" not in node.log.read_text()
    assert "skipped: not a frontal chest radiograph" in node.log.read_text()
    assert node.metric('chexnet_dicom_skipped_total{reason="not_chest"}') == 1


def test_a_calling_ae_not_allowed_is_refused_and_nothing_is_spooled(dicom_site, dicom_dir):
    env, node, destination = dicom_site
    node.start()
    sent = storescu(node.port, "STRANGER", "CHEXNET", dicom_dir / CHEST[0])
    assert sent.returncode != 0
    assert not list((node.spool / "incoming").glob("*.dcm")) and node.metric("chexnet_dicom_received_total") == 0
    own = storescu(node.port, "CHEXNET", "CHEXNET", dicom_dir / CHEST[0])  # its own title admits only C-ECHO
    assert own.returncode != 0 or "0124" in own.stderr + own.stdout
    assert node.metric("chexnet_dicom_received_total") == 0


def test_a_damaged_file_is_kept_in_rejected_with_a_log_line(dicom_site, dicom_dir, tmp_path):
    env, node, destination = dicom_site
    damaged = tmp_path / "damaged.dcm"
    ds = pydicom.dcmread(dicom_dir / "RG1_UNCR.dcm")
    ds.Rows = 3000  # more rows than its pixel data holds: well-formed DICOM, impossible image
    ds.save_as(damaged)
    node.start()
    destination.start()
    sent = storescu(node.port, "MODALITY", "CHEXNET", damaged)
    assert sent.returncode == 0, sent.stderr
    wait_until(lambda: list((node.spool / "rejected").glob("*.dcm")), 60, "the damaged file in rejected/")
    assert "rejected a received instance" in node.log.read_text()
    assert destination.received == []
    # counted with the API's refusals in the /monitor roll-up beside the audit log (written within seconds)
    wait_until(lambda: _refusals(tmp_path / "monitor.sqlite"), 60, "the rejection in the monitor roll-up")
    assert all(reason.startswith("dicom_rejected:") for reason in _refusals(tmp_path / "monitor.sqlite"))


def _refusals(path) -> list[str]:
    if not path.exists():
        return []
    with sqlite3.connect(path, timeout=10) as db:
        return [key for (key,) in db.execute("SELECT key FROM counts WHERE kind = 'refusal'")]


@pytest.mark.parametrize(
    "name, value, fragment",
    [
        ("CHEXNET_DICOM_ALLOWED_AES", "", "CHEXNET_DICOM_ALLOWED_AES"),
        ("CHEXNET_DICOM_DESTINATION", "pacs.example:104", "AE@host:port"),
        ("CHEXNET_DICOM_AE_TITLE", "A" * 17, "CHEXNET_DICOM_AE_TITLE"),
        ("CHEXNET_DICOM_TOKEN_FILE", "", "CHEXNET_DICOM_TOKEN_FILE"),
        ("CHEXNET_DICOM_HEATMAPS", "some", "CHEXNET_DICOM_HEATMAPS"),
        ("CHEXNET_DICOM_MAPS", "overlay", "CHEXNET_DICOM_MAPS must be one of sc, pm, both"),
    ],
)
def test_bad_settings_stop_the_node_with_a_sentence(dicom_site, name, value, fragment):
    env, node, destination = dicom_site
    run = subprocess.run(
        [sys.executable, "-m", "chexnet", "dicom-node"],
        env={**node.env, name: value},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 2 and fragment in run.stderr and "Traceback" not in run.stderr
