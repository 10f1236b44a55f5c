"""The hospital's audit record repository for tests: Debian's rsyslogd receiving syslog over TLS (RFC 5425,
the gtls driver) on 127.0.0.1, with its own config, pid file and port in a temporary folder, writing each
message's APP-NAME, MSGID and MSG to a file; and a test PKI (a CA, the repository's certificate, a client
certificate) made with ``cryptography``. Also the structure check of a DICOM audit message (PS3.15 A.5.1)."""

import base64
import datetime as dt
import ipaddress
import os
import shutil
import signal
import subprocess
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from dicom_node_helpers import free_port
from waiting import wait_until

RSYSLOGD = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"
GTLS_MODULES = ("/usr/lib/x86_64-linux-gnu/rsyslog/lmnsd_gtls.so", "/usr/lib/aarch64-linux-gnu/rsyslog/lmnsd_gtls.so")
BOM = "\ufeff"


def require_rsyslog() -> None:
    if not Path(RSYSLOGD).exists() or not any(Path(p).exists() for p in GTLS_MODULES):
        pytest.skip("rsyslog and rsyslog-gnutls are not installed (.ci/run installs them)")


# --- a test PKI --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA that signed none of these


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _write_key(key, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    path.chmod(0o600)


def _ca(common: str):
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common))
        .issuer_name(_name(common))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _leaf(ca_key, ca_cert, common: str, usage, names: list[x509.GeneralName]):
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def make_pki(folder: Path, *server_names: str) -> Pki:
    """The repository's certificate names localhost, 127.0.0.1 and SERVER_NAMES (its names on a Docker network)."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = _ca("Hospital test CA")
    server_key, server_cert = _leaf(
        ca_key,
        ca_cert,
        "audit.hospital.test",
        ExtendedKeyUsageOID.SERVER_AUTH,
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        + [x509.DNSName(name) for name in server_names],
    )
    client_key, client_cert = _leaf(
        ca_key, ca_cert, "chexnet", ExtendedKeyUsageOID.CLIENT_AUTH, [x509.DNSName("chexnet.hospital.test")]
    )
    _, other = _ca("Some other CA")
    pki = Pki(
        folder / "ca.pem",
        folder / "server.pem",
        folder / "server.key",
        folder / "client.pem",
        folder / "client.key",
        folder / "other-ca.pem",
    )
    for cert, path in (
        (ca_cert, pki.ca),
        (server_cert, pki.server_cert),
        (client_cert, pki.client_cert),
        (other, pki.other_ca),
    ):
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(server_key, pki.server_key)
    _write_key(client_key, pki.client_key)
    return pki


# --- rsyslogd as the audit repository -------------------------------------------------------------------
class Rsyslog:
    """rsyslogd -n -f CONF -i PIDFILE, receiving syslog over TLS on 127.0.0.1:port; mutual: the client must
    present a certificate of the CA (x509/certvalid), else anonymous clients are taken (the server is
    still authenticated by its certificate)."""

    def __init__(self, folder: Path, pki: Pki, *, mutual: bool = False):
        self.folder = folder
        self.pki = pki
        self.port = free_port()
        self.received = folder / "received.log"
        self.conf = folder / "rsyslog.conf"
        self.pidfile = folder / "rsyslogd.pid"
        self.process: subprocess.Popen | None = None
        work = folder / "work"
        work.mkdir(parents=True, exist_ok=True)
        auth = "x509/certvalid" if mutual else "anon"
        self.conf.write_text(
            f"""
global(workDirectory="{work}" maxMessageSize="64k"
       defaultNetstreamDriver="gtls"
       defaultNetstreamDriverCAFile="{pki.ca}"
       defaultNetstreamDriverCertFile="{pki.server_cert}"
       defaultNetstreamDriverKeyFile="{pki.server_key}")
module(load="imtcp" streamDriver.name="gtls" streamDriver.mode="1" streamDriver.authMode="{auth}")
input(type="imtcp" address="127.0.0.1" port="{self.port}")
template(name="atna" type="string" string="%app-name% %msgid% %msg%\\n")
action(type="omfile" file="{self.received}" template="atna" flushOnTXEnd="on" asyncWriting="off")
"""
        )

    @property
    def url(self) -> str:
        return f"tls://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.pidfile.unlink(missing_ok=True)
        log = open(self.folder / "rsyslogd.out", "ab")
        self.process = subprocess.Popen(
            [RSYSLOGD, "-n", "-f", str(self.conf), "-i", str(self.pidfile)], stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        wait_until(self._listening, 30, f"rsyslogd listening on port {self.port}")

    def _listening(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"rsyslogd exited: {(self.folder / 'rsyslogd.out').read_text()[-2000:]}")
        return f":{self.port:04X} " in _listening_ports()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            self.process.wait(30)
        self.process = None

    def messages(self) -> list["Received"]:
        if not self.received.exists():
            return []
        lines = self.received.read_text(encoding="utf-8").splitlines()
        return [Received.parse(line) for line in lines if line.strip()]

    def wait_for(self, count: int, seconds: float = 60) -> list["Received"]:
        def arrived():
            messages = self.messages()
            return messages if len(messages) >= count else None

        return wait_until(arrived, seconds, f"{count} audit messages at the repository")


def _listening_ports() -> str:
    """/proc/net/tcp's local addresses of listening sockets (state 0A), as text."""
    rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return " ".join(row.split()[1] + " " for row in rows if row.split()[3] == "0A")


@dataclass(frozen=True)
class Received:
    app_name: str
    msgid: str
    xml: ET.Element

    @classmethod
    def parse(cls, line: str) -> "Received":
        app_name, msgid, message = line.split(" ", 2)
        message = message.strip().removeprefix(BOM)
        return cls(app_name, msgid, ET.fromstring(message.encode("utf-8")))

    @property
    def event_id(self) -> str:
        return self.xml.find("EventIdentification/EventID").get("csd-code")  # type: ignore[union-attr]

    @property
    def event_type(self) -> str | None:
        code = self.xml.find("EventIdentification/EventTypeCode")
        return code.get("csd-code") if code is not None else None

    def detail(self, name: str) -> str | None:
        for detail in self.xml.iter("ParticipantObjectDetail"):
            if detail.get("type") == name:
                return base64.b64decode(detail.get("value", "")).decode()
        return None

    def object_ids(self) -> list[str]:
        return [o.get("ParticipantObjectID", "") for o in self.xml.iter("ParticipantObjectIdentification")]


# --- PS3.15 A.5.1: the structure of an AuditMessage ----------------------------------------------------
# No pip or Debian package ships the DICOM audit message schema (RELAX NG) for offline use, so the schema's
# rules the product relies on are checked here: element order, required attributes and their value sets.
_CODED = ("csd-code", "codeSystemName", "originalText")
_OUTCOMES = {"0", "4", "8", "12"}
_ACTIONS = {"C", "R", "U", "D", "E"}


def check_audit_message(root: ET.Element) -> None:
    """AssertionError naming the rule of PS3.15 A.5.1 that ROOT breaks."""
    assert root.tag == "AuditMessage", root.tag
    tags = [child.tag for child in root]
    order = ["EventIdentification", "ActiveParticipant", "AuditSourceIdentification", "ParticipantObjectIdentification"]
    assert tags[0] == "EventIdentification" and tags.count("EventIdentification") == 1, tags
    assert tags.count("AuditSourceIdentification") == 1 and "ActiveParticipant" in tags, tags
    assert [order.index(t) for t in tags] == sorted(order.index(t) for t in tags), f"element order: {tags}"
    _check_event(root[0])
    for element in root:
        if element.tag == "ActiveParticipant":
            _check_participant(element)
        elif element.tag == "AuditSourceIdentification":
            assert element.get("AuditSourceID"), "AuditSourceID is required"
            assert all(c.tag == "AuditSourceTypeCode" and c.get("csd-code") for c in element)
        elif element.tag == "ParticipantObjectIdentification":
            _check_object(element)


def _check_coded(element: ET.Element) -> None:
    for attribute in _CODED:
        assert element.get(attribute), f"{element.tag} lacks {attribute}"


def _check_event(event: ET.Element) -> None:
    children = [c.tag for c in event]
    assert children[0] == "EventID" and children.count("EventID") == 1, children
    allowed = ["EventID", "EventTypeCode", "EventOutcomeDescription"]
    assert [allowed.index(t) for t in children] == sorted(allowed.index(t) for t in children), children
    for child in event:
        if child.tag != "EventOutcomeDescription":
            _check_coded(child)
    assert event.get("EventActionCode") in _ACTIONS
    assert event.get("EventOutcomeIndicator") in _OUTCOMES
    when = event.get("EventDateTime", "")
    assert dt.datetime.fromisoformat(when.replace("Z", "+00:00")).tzinfo is not None, when


def _check_participant(participant: ET.Element) -> None:
    assert participant.get("UserID"), "ActiveParticipant needs UserID"
    assert participant.get("UserIsRequestor") in ("true", "false")
    if participant.get("NetworkAccessPointTypeCode") is not None:
        assert participant.get("NetworkAccessPointTypeCode") in {"1", "2", "3", "4", "5"}
        assert participant.get("NetworkAccessPointID")
    for child in participant:
        assert child.tag in ("RoleIDCode", "MediaIdentifier"), child.tag
        if child.tag == "RoleIDCode":
            _check_coded(child)


def _check_object(element: ET.Element) -> None:
    assert element.get("ParticipantObjectID"), "ParticipantObjectID is required"
    assert element.get("ParticipantObjectTypeCode", "1") in {"1", "2", "3", "4"}
    assert element.get("ParticipantObjectTypeCodeRole", "1") in {str(n) for n in range(1, 27)}
    children = [c.tag for c in element]
    order = [
        "ParticipantObjectIDTypeCode",
        "ParticipantObjectName",
        "ParticipantObjectQuery",
        "ParticipantObjectDetail",
        "ParticipantObjectDescription",
    ]
    assert children and children[0] == "ParticipantObjectIDTypeCode", children
    assert [order.index(t) for t in children] == sorted(order.index(t) for t in children), children
    _check_coded(element[0])
    for child in element:
        if child.tag == "ParticipantObjectDetail":
            assert child.get("type")
            base64.b64decode(child.get("value", ""), validate=True)
        elif child.tag == "ParticipantObjectDescription":
            for sop in child:
                assert sop.tag in (
                    "MPPS",
                    "Accession",
                    "SOPClass",
                    "ParticipantObjectContainsStudy",
                    "Encrypted",
                    "Anonymized",
                )
                if sop.tag == "SOPClass":
                    assert int(sop.get("NumberOfInstances", "x")) == len(sop.findall("Instance"))
