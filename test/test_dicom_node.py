"""The DICOM node as a PACS meets it: ``python -m chexnet dicom-node`` in its own process, dcmtk's storescu
as the modality, a pynetdicom C-STORE SCP as the destination. Instances are spooled before the C-STORE
is answered, so a SIGKILL right after the sends loses nothing; results wait in the spool while the
destination is down and arrive once it is up."""

import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ComprehensiveSRStorage, SecondaryCaptureImageStorage
from pynetdicom import AE, evt

from api_helpers import make_env
from dicom_tools import storescu
from test_dicom_results import dciodvfy_errors
from waiting import wait_until

CHEST = ["RG1_J2KR.dcm", "RSNA_pneumonia_16d7f894_CR_SC_jpegbaseline.dcm"]
NOT_CHEST = "RG3_RLE.dcm"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Destination:
    """A PACS stand-in: a C-STORE SCP for the result classes that keeps what it receives. ``answers``
    maps a SOP class to the status (or status dataset) it answers instead of storing."""

    def __init__(self, port: int):
        self.port = port
        self.received: list[pydicom.Dataset] = []
        self.answers: dict = {}
        self.asked: list[str] = []  # the SOP class of every C-STORE, stored or not
        self.server = None

    def start(self):
        ae = AE(ae_title="PACS")
        for sop_class in (ComprehensiveSRStorage, SecondaryCaptureImageStorage):
            ae.add_supported_context(sop_class)

        def on_store(event):
            ds = event.dataset
            self.asked.append(ds.SOPClassUID)
            if ds.SOPClassUID in self.answers:
                return self.answers[ds.SOPClassUID]
            ds.file_meta = event.file_meta
            self.received.append(ds)
            return 0x0000

        self.server = ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])

    def stop(self):
        if self.server:
            self.server.shutdown()
            self.server = None


class Node:
    def __init__(self, env, tmp: Path, destination_port: int, **settings: str):
        self.port, self.metrics_port = free_port(), free_port()
        self.spool = tmp / "spool"
        (tmp / "node.token").write_text(env.token() + "\n")
        self.env = {**os.environ,
                    "CHEXNET_MODELS_DIR": env.settings.models_dir, "CHEXNET_LICENSE_KEYS": env.settings.license_keys,
                    "CHEXNET_PRODUCT_UUID_FILE": env.settings.product_uuid_file, "CHEXNET_ENGINE": "onnxruntime",
                    "CHEXNET_AUDIT_LOG": str(tmp / "audit.jsonl"), "CHEXNET_DICOM_AE_TITLE": "CHEXNET",
                    "CHEXNET_DICOM_PORT": str(self.port), "CHEXNET_DICOM_ALLOWED_AES": "MODALITY,ORTHANC",
                    "CHEXNET_DICOM_DESTINATION": f"PACS@127.0.0.1:{destination_port}",
                    "CHEXNET_DICOM_SPOOL": str(self.spool), "CHEXNET_DICOM_TOKEN_FILE": str(tmp / "node.token"),
                    "CHEXNET_DICOM_RETRY_MAX_S": "2", "CHEXNET_DICOM_METRICS_PORT": str(self.metrics_port),
                    **settings}
        self.log = tmp / "node.log"
        self.process = None

    def start(self, wait: bool = True):
        self.process = subprocess.Popen([sys.executable, "-m", "chexnet", "dicom-node"], env=self.env,
                                        stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)
        if wait:
            wait_until(lambda: self.echo() == 0, 120, "the node to answer C-ECHO")

    def echo(self) -> int:
        return self.healthcheck().returncode

    def healthcheck(self) -> subprocess.CompletedProcess:
        if self.process.poll() is not None:
            raise AssertionError(f"the node exited: {self.log.read_text()[-2000:]}")
        return subprocess.run([sys.executable, "-m", "chexnet.dicom_node.healthcheck"], env=self.env,
                              capture_output=True, text=True, check=False)

    def status(self, field: str) -> int:
        """A line of /proc/<pid>/status in kB or a count (VmHWM: the peak resident memory; Threads)."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
        raise AssertionError(f"no {field} in /proc/{self.process.pid}/status")

    def files(self, queue: str) -> list[Path]:
        return sorted((self.spool / queue).glob("*.dcm"))

    def metric(self, name: str) -> float:
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).read().decode()
        return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))

    def kill(self):
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=60)


@pytest.fixture()
def site(tmp_path, demo_bundle, request):
    env = make_env(tmp_path, demo_bundle.path)
    destination = Destination(free_port())
    node = Node(env, tmp_path, destination.port, **getattr(request, "param", {}))
    yield env, node, destination
    node.stop()
    destination.stop()


def test_accepted_instances_survive_a_sigkill_and_results_arrive_once_the_pacs_is_up(site, dicom_dir, tmp_path):
    env, node, destination = site
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
    wait_until(lambda: len(destination.received) >= 4 and not list((node.spool / "outgoing").glob("*.dcm")),
             120, "the results at the destination")
    assert len(destination.received) == 4, "one SR and one capture per chest image; the tibia is skipped"
    for name in CHEST:
        source = pydicom.dcmread(dicom_dir / name, stop_before_pixels=True)
        mine = [ds for ds in destination.received if ds.StudyInstanceUID == source.StudyInstanceUID]
        assert sorted(ds.SOPClassUID for ds in mine) == sorted([ComprehensiveSRStorage, SecondaryCaptureImageStorage])
        for ds in mine:
            assert dciodvfy_errors(ds, tmp_path) == []
            assert ds.PatientID == source.PatientID
    audit = (tmp_path / "audit.jsonl").read_text()
    assert audit.count('"event": "dicom_skipped"') == 1 and '"not_chest"' in audit
    assert "CompressedSamples" not in audit and "CompressedSamples" not in node.log.read_text()
    assert "skipped: not a frontal chest radiograph" in node.log.read_text()
    assert node.metric('chexnet_dicom_skipped_total{reason="not_chest"}') == 1


def test_a_calling_ae_not_allowed_is_refused_and_nothing_is_spooled(site, dicom_dir):
    env, node, destination = site
    node.start()
    sent = storescu(node.port, "STRANGER", "CHEXNET", dicom_dir / CHEST[0])
    assert sent.returncode != 0
    assert not list((node.spool / "incoming").glob("*.dcm")) and node.metric("chexnet_dicom_received_total") == 0
    own = storescu(node.port, "CHEXNET", "CHEXNET", dicom_dir / CHEST[0])  # its own title admits only C-ECHO
    assert own.returncode != 0 or "0124" in own.stderr + own.stdout
    assert node.metric("chexnet_dicom_received_total") == 0


def test_a_damaged_file_is_kept_in_rejected_with_a_log_line(site, dicom_dir, tmp_path):
    env, node, destination = site
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


@pytest.mark.parametrize("name, value, fragment", [
    ("CHEXNET_DICOM_ALLOWED_AES", "", "CHEXNET_DICOM_ALLOWED_AES"),
    ("CHEXNET_DICOM_DESTINATION", "pacs.example:104", "AE@host:port"),
    ("CHEXNET_DICOM_AE_TITLE", "A" * 17, "CHEXNET_DICOM_AE_TITLE"),
    ("CHEXNET_DICOM_TOKEN_FILE", "", "CHEXNET_DICOM_TOKEN_FILE"),
    ("CHEXNET_DICOM_HEATMAPS", "some", "CHEXNET_DICOM_HEATMAPS"),
])
def test_bad_settings_stop_the_node_with_a_sentence(site, name, value, fragment):
    env, node, destination = site
    run = subprocess.run([sys.executable, "-m", "chexnet", "dicom-node"], env={**node.env, name: value},
                         capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 2 and fragment in run.stderr and "Traceback" not in run.stderr
