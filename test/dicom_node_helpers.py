"""The DICOM node run as a PACS meets it, for the tests: the node in its own process (``python -m chexnet
dicom-node``) and a pynetdicom C-STORE SCP standing in for the PACS that receives the results."""

import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pydicom
from pydicom.uid import ComprehensiveSRStorage, ParametricMapStorage, SecondaryCaptureImageStorage
from pynetdicom import AE, evt

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
        # the classes it accepts at association (a PACS without Parametric Maps leaves that one out)
        self.classes = [ComprehensiveSRStorage, SecondaryCaptureImageStorage, ParametricMapStorage]

    def start(self):
        ae = AE(ae_title="PACS")
        for sop_class in self.classes:
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
        self.env = {
            **os.environ,
            "CHEXNET_MODELS_DIR": env.settings.models_dir,
            "CHEXNET_LICENSE_KEYS": env.settings.license_keys,
            "CHEXNET_PRODUCT_UUID_FILE": env.settings.product_uuid_file,
            "CHEXNET_ENGINE": "onnxruntime",
            "CHEXNET_AUDIT_LOG": str(tmp / "audit.jsonl"),
            "CHEXNET_DICOM_AE_TITLE": "CHEXNET",
            "CHEXNET_DICOM_PORT": str(self.port),
            "CHEXNET_DICOM_ALLOWED_AES": "MODALITY,ORTHANC",
            "CHEXNET_DICOM_DESTINATION": f"PACS@127.0.0.1:{destination_port}",
            "CHEXNET_DICOM_SPOOL": str(self.spool),
            "CHEXNET_DICOM_TOKEN_FILE": str(tmp / "node.token"),
            "CHEXNET_DICOM_RETRY_MAX_S": "2",
            "CHEXNET_DICOM_METRICS_PORT": str(self.metrics_port),
            "CHEXNET_DICOMWEB_PORT": str(free_port()),  # STOW-RS in on its own port (8042 by default)
            **settings,
        }
        self.log = tmp / "node.log"
        self.process = None

    def start(self, wait: bool = True):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "chexnet", "dicom-node"],
            env=self.env,
            stdout=open(self.log, "ab"),
            stderr=subprocess.STDOUT,
        )
        if wait:
            wait_until(lambda: self.echo() == 0, 120, "the node to answer C-ECHO")

    def echo(self) -> int:
        return self.healthcheck().returncode

    def healthcheck(self) -> subprocess.CompletedProcess:
        if self.process.poll() is not None:
            raise AssertionError(f"the node exited: {self.log.read_text()[-2000:]}")
        return subprocess.run(
            [sys.executable, "-m", "chexnet.dicom_node.healthcheck"],
            env=self.env,
            capture_output=True,
            text=True,
            check=False,
        )

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
