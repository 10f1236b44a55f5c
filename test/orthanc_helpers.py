"""Debian's Orthanc with its DICOMweb plugin (``orthanc``, ``orthanc-dicomweb``; .ci/run installs them) on
127.0.0.1 with a temporary configuration and storage: the hospital PACS a DICOMweb test talks to, as
any local peer. Skips the test only where the binary or the plugin is absent."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import requests

from dicom_node_helpers import free_port
from waiting import wait_until

PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


class Orthanc:
    def __init__(self, tmp: Path):
        binary = shutil.which("Orthanc")
        if binary is None or not PLUGIN.exists():
            pytest.skip("Debian's orthanc and orthanc-dicomweb are not installed here (.ci/run installs them)")
        self.binary, self.folder = binary, tmp / "orthanc"
        self.folder.mkdir()
        self.http_port, self.dicom_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.dicomweb = f"{self.url}/dicom-web"
        self.config = self.folder / "orthanc.json"
        self.config.write_text(
            json.dumps(
                {
                    "Name": "CheXNet test PACS",
                    "StorageDirectory": str(self.folder / "db"),
                    "IndexDirectory": str(self.folder / "db"),
                    "HttpPort": self.http_port,
                    "DicomPort": self.dicom_port,
                    "DicomAet": "ORTHANC",
                    "RemoteAccessAllowed": False,
                    "AuthenticationEnabled": False,
                    "Plugins": [str(PLUGIN)],
                    "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
                }
            )
        )
        self.log = self.folder / "orthanc.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, str(self.config)], stdout=open(self.log, "ab"), stderr=subprocess.STDOUT
        )
        wait_until(self._answers, 60, "Orthanc to answer")

    def _answers(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"Orthanc exited: {self.log.read_text()[-2000:]}")
        try:
            return requests.get(f"{self.dicomweb}/studies", timeout=5).status_code == 200
        except requests.ConnectionError:
            return False

    def instances(self, study_uid: str) -> list[dict]:
        """QIDO-RS: the study's instances as DICOM JSON (empty while the study is unknown)."""
        answer = requests.get(f"{self.dicomweb}/studies/{study_uid}/instances", timeout=30)
        return answer.json() if answer.status_code == 200 and answer.content else []

    def retrieve(self, study_uid: str, series_uid: str, instance_uid: str) -> bytes:
        """WADO-RS: one instance as a PS3.10 file."""
        answer = requests.get(
            f"{self.dicomweb}/studies/{study_uid}/series/{series_uid}/instances/{instance_uid}",
            headers={"Accept": 'multipart/related; type="application/dicom"'},
            timeout=60,
        )
        answer.raise_for_status()
        return single_part(answer)

    def origin(self, sop_instance_uid: str) -> str:
        """How the instance reached Orthanc (its Origin metadata): DicomProtocol for C-STORE, Plugins for the DICOMweb plugin (STOW-RS)."""
        found = requests.post(f"{self.url}/tools/lookup", data=sop_instance_uid, timeout=30).json()
        return requests.get(f"{self.url}/instances/{found[0]['ID']}/metadata/Origin", timeout=30).text

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=60)


def single_part(answer: requests.Response) -> bytes:
    """The body of the one part of a multipart/related answer (email parses it; test side only)."""
    import email.parser
    import email.policy

    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + answer.headers["Content-Type"].encode() + b"\r\n\r\n" + answer.content
    )
    parts = [part.get_payload(decode=True) for part in message.iter_parts()]
    assert len(parts) == 1, f"{len(parts)} parts"
    return parts[0]


def stow_body(files: list[bytes], content_type: str = "application/dicom") -> tuple[bytes, str]:
    """A STOW-RS body and its Content-Type, one part per file."""
    boundary = "chexnet-test-boundary-7f3a"
    body = b"".join(f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode() + data + b"\r\n" for data in files)
    return body + f"--{boundary}--\r\n".encode(), f'multipart/related; type="{content_type}"; boundary={boundary}'
