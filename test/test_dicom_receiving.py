"""Where the DICOM node writes a C-STORE data set while it arrives (chexnet/dicom_node/receiving.py), as
pynetdicom drives it: the instance cap, and the disk floor checked while the data set is written (many
connections writing at once must not run the spool's disk past the floor)."""

from chexnet.dicom_node.receiving import CappedFile, ReceivedFiles

MIB = 2**20


def test_writes_stop_at_the_cap_and_the_file_is_emptied(tmp_path):
    received = ReceivedFiles(tmp_path, cap_bytes=3 * MIB, min_free_bytes=0)
    file = received.open(delete=False, mode="wb", suffix=".dcm")
    for _ in range(8):
        file.write(bytes(MIB))
    file.file.flush()
    assert received.refusal(file.name) == "too_large" and (tmp_path / file.name).stat().st_size == 0


def test_the_disk_floor_is_checked_while_a_data_set_is_written(tmp_path):
    received = ReceivedFiles(tmp_path, cap_bytes=1024 * MIB, min_free_bytes=0)
    file = received.open(delete=False, mode="wb", suffix=".dcm")
    file.write(bytes(MIB))
    received.min_free_bytes = received.free_bytes() + 2**40  # the disk has filled meanwhile
    for _ in range(2 * CappedFile.DISK_CHECK_BYTES // MIB):
        file.write(bytes(MIB))
    file.file.flush()
    assert received.refusal(file.name) == "disk_full" and (tmp_path / file.name).stat().st_size == 0


def test_below_the_floor_nothing_is_written_at_all(tmp_path):
    received = ReceivedFiles(tmp_path, cap_bytes=1024 * MIB, min_free_bytes=2**60)
    file = received.open(delete=False, mode="wb", suffix=".dcm")
    file.write(bytes(MIB))
    file.file.flush()
    assert received.refusal(file.name) == "disk_full" and (tmp_path / file.name).stat().st_size == 0
