"""The DICOM node as a hostile or broken peer meets it (DESIGN.md "DICOM results and the DICOM node", the
node's bounds): the node runs as its own process (``python -m chexnet dicom-node``), under the shipped
compose memory limit where memory is the point; the peers are dcmtk's storescu, raw TCP sockets and a
pynetdicom SCU sending crafted files as they are on disk (a deflated data set is never inflated here)."""

import json
import os
import shutil
import socket
import struct
import time
import zlib
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import (
    ComprehensiveSRStorage,
    ComputedRadiographyImageStorage,
    DeflatedExplicitVRLittleEndian,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    ParametricMapStorage,
    SecondaryCaptureImageStorage,
    generate_uid,
)
from pynetdicom import AE, _config

import dicom_raw_peer as raw
import hostile_files
from dicom_node_helpers import CHEST
from dicom_tools import storescu
from waiting import wait_until

MIB = 2**20
SHIPPED_MEMORY_LIMIT = 2 * 1024 * MIB  # docker-compose.yml: dicom-node mem_limit ${DICOM_MEM_LIMIT:-2g}


# --- peers and crafted files -----------------------------------------------------------------------
def crafted(
    path: Path,
    pixel_bytes: int,
    syntax=ExplicitVRLittleEndian,
    meta_class=ComputedRadiographyImageStorage,
    dataset_class=ComputedRadiographyImageStorage,
) -> Path:
    """A CR file streamed to disk: a chest header, then ``pixel_bytes`` of zero pixel data, deflated when
    ``syntax`` says so (1 GiB of zeros deflates to about 1 MiB)."""
    uid = generate_uid()
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = dataset_class, uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.BodyPartExamined, ds.PatientID = "CR", "CHEST", "ATTACK"
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16384, 16384, 16, 12, 11
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PixelRepresentation = 1, "MONOCHROME2", 0
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    head = body.getvalue() + b"\xe0\x7f\x10\x00OW\x00\x00" + pixel_bytes.to_bytes(4, "little")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, meta.TransferSyntaxUID = meta_class, uid, syntax
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS) if syntax == DeflatedExplicitVRLittleEndian else None
    zeros = bytes(16 * MIB)
    with open(path, "wb") as f:
        f.write(b"\0" * 128 + b"DICM")
        write_file_meta_info(f, meta)
        f.write(deflater.compress(head) if deflater else head)
        for start in range(0, pixel_bytes, len(zeros)):
            chunk = zeros[: min(len(zeros), pixel_bytes - start)]
            f.write(deflater.compress(chunk) if deflater else chunk)
        if deflater:
            f.write(deflater.flush())
    return path


def send_file(port: int, path: Path, calling: str = "MODALITY", called: str = "CHEXNET"):
    """C-STORE the file's data set as it is on disk (pynetdicom's chunked send; no parse, no inflate);
    returns the response status dataset, or None when the node ended the association."""
    meta = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"]).file_meta
    ae = AE(ae_title=calling)
    ae.add_requested_context(meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID)
    previous, _config.STORE_SEND_CHUNKED_DATASET = _config.STORE_SEND_CHUNKED_DATASET, True
    try:
        assoc = ae.associate("127.0.0.1", port, ae_title=called)
        assert assoc.is_established, "the node did not accept the association"
        try:
            status = assoc.send_c_store(path)
        finally:
            if assoc.is_established:
                assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous
    return status if status else None


def memory_limit(pid: int, limit: int) -> None:
    """Put ``pid`` into a new memory cgroup of this process's own (v2 or v1) capped at ``limit`` bytes, as
    compose's mem_limit does. Where this machine lets no process make one, the tests' peak-memory (VmHWM)
    assertions still hold the node to its bound; only the kernel's enforcement is missing."""
    try:
        _join_cgroup(pid, limit)
    except OSError as exc:
        print(f"no memory cgroup could be made ({exc}); the peak-memory assertions alone bound the node")


def _join_cgroup(pid: int, limit: int) -> None:
    own = Path("/proc/self/cgroup").read_text().splitlines()
    v2 = next((line.split(":", 2)[2] for line in own if line.startswith("0::")), None)
    v1 = next((line.split(":", 2)[2] for line in own if ":memory:" in line), None)
    if v1 is not None and Path("/sys/fs/cgroup/memory").is_dir():
        group, limit_file = (
            Path("/sys/fs/cgroup/memory", v1.lstrip("/"), f"chexnet-test-{pid}"),
            "memory.limit_in_bytes",
        )
    else:
        group, limit_file = Path("/sys/fs/cgroup", (v2 or "/").lstrip("/"), f"chexnet-test-{pid}"), "memory.max"
    group.mkdir()
    (group / limit_file).write_text(str(limit))
    (group / "cgroup.procs").write_text(str(pid))


def audit_rows(tmp_path: Path) -> list[dict]:
    path = tmp_path / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def started_with_limit(node) -> int:
    """Start the node under the shipped memory limit; returns its resident memory (kB) once it answers and its
    model has loaded (the node answers C-ECHO while its models load, and what they take is not the attack's)."""
    node.start(wait=False)
    memory_limit(node.process.pid, SHIPPED_MEMORY_LIMIT)
    wait_until(lambda: node.echo() == 0, 120, "the node to answer C-ECHO")
    wait_until(lambda: "model ready" in node.log.read_text(), 120, "the node's model to load")
    return node.status("VmRSS")


# --- 1. nothing inflates outside the core's bounded reader; the poison guard ------------------------
def test_a_deflate_bomb_is_refused_while_receiving_and_memory_stays_bounded(dicom_site, dicom_dir, tmp_path):
    env, node, destination = dicom_site
    bomb = crafted(tmp_path / "bomb.dcm", 1024 * MIB, DeflatedExplicitVRLittleEndian)
    assert bomb.stat().st_size < 2 * MIB
    before = started_with_limit(node)
    destination.start()
    status = send_file(node.port, bomb)
    assert status is not None and status.Status == 0xA700, "out of resources, answered on the association"
    assert "larger" in status.ErrorComment
    assert node.process.poll() is None and node.files("incoming") == [] and not list(node.spool.glob("receiving/*"))
    assert node.status("VmHWM") - before < 400 * 1024, "the bomb must not inflate beyond the core's cap"
    sent = storescu(node.port, "MODALITY", "CHEXNET", dicom_dir / CHEST[0])  # a real modality is still served
    assert sent.returncode == 0, sent.stderr
    wait_until(lambda: len(destination.received) >= 2, 120, "the chest image's results")
    assert node.metric('chexnet_dicom_store_refused_total{reason="too_large"}') == 1


@pytest.mark.parametrize("dicom_site", [{"CHEXNET_DICOM_ASIDE_MAX_MB": "1"}], indirect=True)
def test_files_a_crash_left_behind_are_set_aside_and_what_is_aside_stays_bounded(dicom_site, dicom_dir, tmp_path):
    env, node, destination = dicom_site
    incoming, rejected = node.spool / "incoming", node.spool / "rejected"
    incoming.mkdir(parents=True)
    rejected.mkdir(parents=True)
    # What an older node accepted before it was OOM-killed: a bomb, and an instance whose processing was
    # started three times without finishing (each start leaves its count; only a death leaves it there).
    crafted(incoming / "00000000000000000001-bomb.dcm", 1024 * MIB, DeflatedExplicitVRLittleEndian)
    shutil.copy(dicom_dir / CHEST[0], incoming / "00000000000000000002-killer.dcm")
    (incoming / "00000000000000000002-killer.attempts").write_text("3")
    old = rejected / "00000000000000000000-old.dcm"
    old.write_bytes(b"x" * 1000)
    os.utime(old, (time.time() - 40 * 86400,) * 2)
    big = [rejected / f"0000000000000000001{i}-big.dcm" for i in range(3)]
    for i, path in enumerate(big):
        path.write_bytes(b"x" * (400 * 1024))
        os.utime(path, (time.time() - 3600 + i,) * 2)
    before = started_with_limit(node)
    wait_until(lambda: node.files("incoming") == [], 120, "the spool's leftovers to be handled")
    codes = {row["code"] for row in audit_rows(tmp_path) if row.get("event") == "dicom_rejected"}
    assert codes == {"payload_too_large", "poison"}
    assert node.status("VmHWM") - before < 400 * 1024
    assert "its processing was started 3 times" in node.log.read_text()
    kept = node.files("rejected")
    assert not old.exists() and not big[0].exists(), "older than the age bound, then the oldest beyond 1 MiB"
    assert sum(p.stat().st_size for p in kept) <= MIB
    assert node.metric('chexnet_dicom_rejected_total{code="poison"}') == 1


# --- 2. associations: capped overall and per peer address, idle peers dropped -----------------------
@pytest.mark.parametrize(
    "dicom_site",
    [
        {
            "CHEXNET_DICOM_ASSOCIATE_TIMEOUT_S": "2",
            "CHEXNET_DICOM_NETWORK_TIMEOUT_S": "5",
            "CHEXNET_DICOM_BIND": "127.0.0.1",
        }
    ],
    indirect=True,
)
def test_a_flood_of_idle_connections_does_not_lock_out_a_modality(dicom_site, dicom_dir):
    env, node, destination = dicom_site
    node.start()
    destination.start()
    flood = []
    for i in range(200):  # plain TCP connects from two other addresses that never associate
        s = socket.create_connection(("127.0.0.1", node.port), timeout=30, source_address=(f"127.0.0.{2 + i % 2}", 0))
        flood.append(s)
    held = [raw.connect(node.port, "MODALITY", source="127.0.0.4") for _ in range(2)]  # associated, then silent
    sent = storescu(node.port, "MODALITY", "CHEXNET", dicom_dir / CHEST[0])
    assert sent.returncode == 0, sent.stderr
    assert node.status("Threads") < 80, "refused connections start no thread"
    wait_until(lambda: len(destination.received) >= 2, 120, "the modality's results during the flood")
    for s in flood + held:  # the node closes every one: at once, or when its ARTIM or network timer ends
        s.settimeout(30)
        try:
            assert s.recv(1024)[:1] in (b"", b"\x07"), "closed, or an A-ABORT"
        except ConnectionResetError:
            pass
        s.close()
    # At most 4 from one address are admitted at a time; the idle ones free their slot after the 2 s ARTIM timer.
    refused = node.metric('chexnet_dicom_connections_refused_total{limit="per_peer"}')
    assert refused >= 50
    log = node.log.read_text()
    assert "Traceback" not in log and "can't start new thread" not in log
    assert log.count("refused a connection") < refused / 10, "a flood logs once per interval, not per connection"


@pytest.mark.parametrize("dicom_site", [{"CHEXNET_DICOM_ASSOCIATE_TIMEOUT_S": "2"}], indirect=True)
def test_a_pdu_too_long_or_trickling_in_is_not_waited_for(dicom_site):
    env, node, destination = dicom_site
    before = started_with_limit(node)
    with socket.create_connection(("127.0.0.1", node.port), timeout=30) as s:
        s.sendall(b"\x01\x00" + (200).to_bytes(4, "big"))  # a 200-byte A-ASSOCIATE-RQ, one byte each 0.5 s
        trickled = raw.send_until_closed(s, b"\x00", 60, pause_s=0.5)
    assert trickled < 60, "a PDU that trickles in must not hold a connection slot"
    assert "a PDU slower than the node waits for" in node.log.read_text()

    with socket.create_connection(("127.0.0.1", node.port), timeout=30) as s:
        s.sendall(b"\x01\x00" + (2**30).to_bytes(4, "big"))  # an A-ASSOCIATE-RQ "of 1 GiB", before associating
        assert raw.send_until_closed(s, bytes(MIB), 300 * MIB) < 300 * MIB, "the node must not read on"
    with socket.create_connection(("127.0.0.1", node.port), timeout=30) as s:  # 128 contexts x 600 syntaxes
        contexts = [(2 * i + 1, raw.CR, [f"1.2.3.{n}" for n in range(600)]) for i in range(128)]
        s.sendall(raw.associate_rq("MODALITY", contexts=contexts))
        assert raw.read_pdu(s) == (None, b""), "an A-ASSOCIATE-RQ of megabytes is not parsed"
    with socket.create_connection(("127.0.0.1", node.port), timeout=30) as s:  # a PDU of no known type, then
        s.sendall(b"\x09\x00" + bytes(4) + b"\x04\x00" + (700 * MIB).to_bytes(4, "big"))  # a P-DATA "of 700 MiB"
        assert raw.send_until_closed(s, bytes(MIB), 300 * MIB) < 300 * MIB, "the node must not read on"
    with socket.create_connection(("127.0.0.1", node.port), timeout=30) as s:  # unknown PDUs, as fast as it goes
        assert raw.send_until_closed(s, (b"\x09\x00" + bytes(4)) * 10000, 600 * MIB) < 600 * MIB
    assert node.status("VmHWM") - before < 100 * 1024
    wait_until(lambda: node.echo() == 0, 60, "the node to answer once the closed connections' threads end")
    log = node.log.read_text()
    assert log.count("a PDU longer than the node reads") >= 2 and log.count("a PDU of an unknown type") >= 2
    assert len(log.splitlines()) < 100, "a peer cannot make the node log a line per PDU it sends"


@pytest.mark.parametrize("message", ["endless command", "data set of a C-ECHO", "data set without a command"])
def test_a_connection_cannot_make_the_node_hold_a_message_in_memory(dicom_site, message):
    env, node, destination = dicom_site
    before = started_with_limit(node)
    echo = raw.command(
        AffectedSOPClassUID=raw.VERIFICATION, CommandField=0x0030, MessageID=1, CommandDataSetType=0x0000
    )
    pdu = {
        "endless command": raw.p_data(1, raw.COMMAND, bytes(512 * 1024)),
        "data set of a C-ECHO": raw.p_data(1, 0, bytes(512 * 1024)),
        "data set without a command": raw.p_data(1, 0, bytes(512 * 1024)),
    }[message]
    with raw.connect(node.port, "MODALITY", contexts=((1, raw.VERIFICATION, (raw.IMPLICIT_LE,)),)) as s:
        if message == "data set of a C-ECHO":
            s.sendall(raw.p_data(1, raw.COMMAND | raw.LAST, echo))
        assert raw.send_until_closed(s, pdu, 1024 * MIB) < 1024 * MIB
    assert node.status("VmHWM") - before < 100 * 1024
    wait_until(lambda: node.echo() == 0, 60, "the node to answer once the closed connection's threads end")
    assert "a DIMSE message larger than the node holds in memory" in node.log.read_text()


def test_data_sets_a_store_leaves_behind_do_not_stay_in_receiving(dicom_site):
    env, node, destination = dicom_site
    node.start()
    receiving = node.spool / "receiving"
    context = ((1, raw.CR, (raw.IMPLICIT_LE,)),)
    with raw.connect(node.port, "MODALITY", contexts=context) as s:  # stores naming the Verification class
        for _ in range(3):
            s.sendall(raw.p_data(1, raw.COMMAND | raw.LAST, raw.store_rq(raw.VERIFICATION, "1.2.3.4")))
            for _ in range(20):
                s.sendall(raw.p_data(1, 0, bytes(16000)))
            s.sendall(raw.p_data(1, raw.LAST, bytes(16000)))
            kind, body = raw.read_pdu(s)
            assert kind == 0x04 and raw.status_of(body) != 0x0000, "not stored, so not success"
            assert len(list(receiving.iterdir())) <= 1
    with raw.connect(node.port, "MODALITY", contexts=context) as s:  # a store whose data set never ends
        s.sendall(raw.p_data(1, raw.COMMAND | raw.LAST, raw.store_rq(raw.CR, "1.2.3.5")))
        for _ in range(64):
            s.sendall(raw.p_data(1, 0, bytes(16000)))
        wait_until(lambda: list(receiving.iterdir()), 30, "the data set on disk")
    wait_until(lambda: not list(receiving.iterdir()), 60, "the unfinished data set deleted")
    assert node.files("incoming") == []


@pytest.mark.parametrize("dicom_site", [{"CHEXNET_DICOM_NETWORK_TIMEOUT_S": "5"}], indirect=True)
def test_malformed_command_sets_and_borrowed_titles_are_contained(dicom_site, dicom_dir):
    env, node, destination = dicom_site
    node.start()
    destination.start()
    malformed = [  # command sets pynetdicom's reader or state machine fails on
        raw.command(MessageID=1, CommandDataSetType=0x0101),  # no CommandField
        raw.command(AffectedSOPClassUID=raw.VERIFICATION, CommandField=0x0030, MessageID=1),  # no data set type
        raw.command(AffectedSOPClassUID=raw.CR, CommandField=0x0FFF, MessageID=1, CommandDataSetType=0x0101),
        raw.command(
            AffectedSOPClassUID=raw.CR,
            CommandField=0x0001,
            MessageID=1,
            Priority=0,
            CommandDataSetType=0x0101,
            AffectedSOPInstanceUID="1.2.3",
        ),  # a store without its data set
        struct.pack("<HHII", 0, 0, 4, 12)
        + struct.pack("<HHI", 0, 0x0100, 0xFFFFFFF0)
        + b"1.2",  # a length past the end
        b"\xff" * 64,
    ]
    for i in range(3 * len(malformed)):
        with raw.connect(
            node.port,
            "MODALITY",
            source=f"127.0.1.{i % 10 + 1}",
            contexts=((1, raw.VERIFICATION, (raw.IMPLICIT_LE,)), (3, raw.CR, (raw.IMPLICIT_LE,))),
        ) as s:
            s.sendall(raw.p_data(1, raw.COMMAND | raw.LAST, malformed[i % len(malformed)]))
            s.settimeout(30)
            assert raw.read_pdu(s)[0] in (0x04, 0x07, None), "an answer, an A-ABORT or a closed connection"
    elsewhere = raw.local_address()
    if elsewhere:  # the node's own title is the healthcheck's: from another machine it is aborted
        with socket.create_connection(("127.0.0.1", node.port), timeout=30, source_address=(elsewhere, 0)) as s:
            s.sendall(raw.associate_rq("CHEXNET", contexts=((1, raw.VERIFICATION, (raw.IMPLICIT_LE,)),)))
            kind = raw.read_pdu(s)[0]
            if kind == 0x02:  # accepted, then aborted at once
                kind = raw.read_pdu(s)[0]
            assert kind in (0x07, None), "an A-ABORT or a closed connection"
        assert "the node's own AE title from another machine" in node.log.read_text()
    assert storescu(node.port, "MODALITY", "CHEXNET", dicom_dir / CHEST[0]).returncode == 0
    wait_until(lambda: len(destination.received) >= 2, 120, "the modality's results")
    log = node.log.read_text()
    assert "Traceback" not in log and all(line.startswith("{") for line in log.splitlines() if line.strip())
    assert node.echo() == 0


# --- 3. size cap and disk floor ----------------------------------------------------------------------
@pytest.mark.parametrize("dicom_site", [{"CHEXNET_MAX_UPLOAD_MB": "8"}], indirect=True)
def test_an_instance_over_the_size_cap_is_refused_while_receiving_and_nothing_is_kept(dicom_site, tmp_path):
    env, node, destination = dicom_site
    big = crafted(tmp_path / "big.dcm", 300 * MIB)
    before = started_with_limit(node)
    status = send_file(node.port, big)
    assert status is not None and status.Status == 0xA700 and "larger" in status.ErrorComment
    assert node.files("incoming") == [] and not list(node.spool.glob("receiving/*"))
    assert node.status("VmHWM") - before < 200 * 1024, "received data streams to disk, not memory"


@pytest.mark.parametrize("dicom_site", [{"CHEXNET_DICOM_MIN_FREE_MB": "1000000"}], indirect=True)
def test_below_the_disk_floor_a_store_is_answered_out_of_resources(dicom_site, dicom_dir):
    env, node, destination = dicom_site
    node.start()
    status = send_file(node.port, dicom_dir / CHEST[0])
    assert status is not None and status.Status == 0xA700 and "disk" in status.ErrorComment
    assert node.files("incoming") == [] and node.metric("chexnet_dicom_received_total") == 0


# --- 4. I/O errors never end the worker; the healthcheck tells when the queue stops moving ----------
@pytest.mark.parametrize("dicom_site", [{"CHEXNET_DICOM_STALL_S": "10"}], indirect=True)
def test_the_worker_survives_io_errors_and_the_healthcheck_says_when_nothing_moves(dicom_site, dicom_dir):
    env, node, destination = dicom_site
    node.start()
    destination.start()
    outgoing = node.spool / "outgoing"
    outgoing.rmdir()
    outgoing.write_text("not a folder")  # every write of a result now fails with an OSError
    sent = storescu(node.port, "MODALITY", "CHEXNET", dicom_dir / CHEST[0])
    assert sent.returncode == 0, sent.stderr
    wait_until(lambda: node.metric("chexnet_dicom_io_errors_total") >= 2, 60, "I/O errors survived")
    unhealthy = wait_until(lambda: (r := node.healthcheck()).returncode == 1 and r, 60, "the healthcheck to fail")
    assert "incoming/ has not moved" in unhealthy.stdout
    outgoing.unlink()
    outgoing.mkdir()
    wait_until(lambda: len(destination.received) >= 3, 120, "the results once the disk is writable again")
    assert node.process.poll() is None and node.echo() == 0
    assert sorted(ds.SOPClassUID for ds in destination.received) == sorted(
        [ComprehensiveSRStorage, SecondaryCaptureImageStorage, ParametricMapStorage]
    ), "an SR never goes out without its capture and map"


# --- 5. one refused object does not block the others -------------------------------------------------
def test_results_the_pacs_refuses_do_not_hold_back_the_others(dicom_site, dicom_dir, tmp_path):
    env, node, destination = dicom_site
    destination.answers[ComprehensiveSRStorage] = 0xA700  # transient: out of resources
    node.start()
    destination.start()
    assert storescu(node.port, "MODALITY", "CHEXNET", dicom_dir / CHEST[0]).returncode == 0
    wait_until(lambda: len(destination.received) == 2, 120, "the capture and map despite their SR failing")
    wait_until(lambda: destination.asked.count(ComprehensiveSRStorage) >= 3, 60, "the SR retried")
    assert len(node.files("outgoing")) == 1, "a transient failure keeps the SR for later"

    refusal = Dataset()
    refusal.Status, refusal.ErrorComment = 0xA900, "no\nINJECTED log line"
    destination.answers[ComprehensiveSRStorage] = refusal  # permanent: does not match the SOP class
    assert storescu(node.port, "MODALITY", "CHEXNET", dicom_dir / CHEST[1]).returncode == 0
    wait_until(
        lambda: len(node.files("refused")) == 2 and len(destination.received) == 4 and node.files("outgoing") == [],
        120,  # the PACS counts an object when it receives it; the node clears it from outgoing/ once answered
        "both SRs set aside, both captures and maps delivered and cleared from outgoing/",
    )
    assert [row["status"] for row in audit_rows(tmp_path) if row.get("event") == "dicom_result_refused"] == [
        "0xA900"
    ] * 2
    log = node.log.read_text()
    assert "\\x0aINJECTED" in log and "\nINJECTED" not in log


def test_a_pacs_that_takes_no_parametric_maps_gets_the_rest_and_the_maps_are_set_aside(dicom_site, dicom_dir, tmp_path):
    env, node, destination = dicom_site
    destination.classes = [ComprehensiveSRStorage, SecondaryCaptureImageStorage]  # Parametric Map not accepted
    node.start()
    destination.start()
    assert storescu(node.port, "MODALITY", "CHEXNET", dicom_dir / CHEST[0]).returncode == 0
    wait_until(
        lambda: len(destination.received) == 2 and len(node.files("refused")) == 1,
        120,
        "the SR and capture delivered, the map set aside",
    )
    assert sorted(ds.SOPClassUID for ds in destination.received) == sorted(
        [ComprehensiveSRStorage, SecondaryCaptureImageStorage]
    )
    assert pydicom.dcmread(node.files("refused")[0]).SOPClassUID == ParametricMapStorage
    assert ParametricMapStorage not in destination.asked, "never sent on an association that did not accept it"
    refused = [row for row in audit_rows(tmp_path) if row.get("event") == "dicom_result_refused"]
    assert [row["status"] for row in refused] == ["0x0122"]
    assert "CHEXNET_DICOM_MAPS=sc" in node.log.read_text()


# --- 6. identity: the called AE title, the SOP class the data set really has -------------------------
def test_a_wrong_called_title_and_a_data_set_of_another_class_are_refused(dicom_site, dicom_dir, tmp_path):
    env, node, destination = dicom_site
    node.start()
    wrong_title = storescu(node.port, "MODALITY", "SOMEONE", dicom_dir / CHEST[0])
    assert wrong_title.returncode != 0
    disguised = crafted(
        tmp_path / "disguised.dcm",
        2 * 64 * 64,
        meta_class=ComputedRadiographyImageStorage,
        dataset_class=DigitalXRayImageStorageForPresentation,
    )
    status = send_file(node.port, disguised)
    assert status is not None and status.Status == 0xA900
    (tmp_path / "elements.dcm").write_bytes(hostile_files.element_bomb())
    status = send_file(node.port, tmp_path / "elements.dcm")
    assert status is not None and status.Status == 0xC000, "ten million tiny elements are not walked"
    assert node.files("incoming") == [] and node.metric("chexnet_dicom_received_total") == 0
    assert node.metric('chexnet_dicom_store_refused_total{reason="class_mismatch"}') == 1
