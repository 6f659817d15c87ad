"""The strict reader of the Part 10 file meta group, and probing files for a push."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import pytest

from ctnode.dicom.filemeta import (
    PREAMBLE,
    PROBE_BYTES,
    FileMeta,
    IrregularMeta,
    NotPart10,
    file_meta,
    parse_file_meta,
    read_file_meta,
)
from ctnode.scu.files import NO_UIDS, NOT_PART10, Skipped, collect_files, probe_file
from tests.helpers.dicomgen import make_dataset, write, write_series

CT = "1.2.840.10008.5.1.4.1.1.2"
INSTANCE = "1.2.3.4.5.6.7"
EXPLICIT = "1.2.840.10008.1.2.1"


def _element(element: int, vr: bytes, value: bytes) -> bytes:
    if vr in (b"OB", b"UN", b"UT", b"SQ"):
        return struct.pack("<HH2sHL", 0x0002, element, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", 0x0002, element, vr, len(value)) + value


def _meta(*elements: bytes, group_length: int | None = None) -> bytes:
    body = b"".join(elements)
    length = len(body) if group_length is None else group_length
    return PREAMBLE + struct.pack("<HH2sHL", 0x0002, 0x0000, b"UL", 4, length) + body


DATASET = struct.pack("<HH2sH", 0x0008, 0x0016, b"UI", 2) + b"1\x00"


def test_reads_what_file_meta_writes() -> None:
    """The encoder's output (with a data set after it) reads back with the data set offset."""
    head = file_meta(CT, INSTANCE, EXPLICIT, "SCANNER")
    meta = parse_file_meta(head + DATASET)
    assert meta == FileMeta(CT, INSTANCE, EXPLICIT, len(head))


def test_padding_is_removed_and_odd_lengths_are_read_as_given() -> None:
    """Trailing NUL/space padding goes; an odd (non-conformant) length is taken as it is."""
    data = _meta(
        _element(0x0001, b"OB", b"\x00\x01"),
        _element(0x0002, b"UI", CT.encode() + b"\x00"),
        _element(0x0003, b"UI", b"1.2.3"),  # odd length, no padding
        _element(0x0010, b"UI", EXPLICIT.encode() + b" "),
        _element(0x0013, b"SH", b"ODD"),
    )
    meta = parse_file_meta(data + DATASET)
    assert (meta.sop_class_uid, meta.sop_instance_uid, meta.transfer_syntax_uid) == (
        CT,
        "1.2.3",
        EXPLICIT,
    )


def test_missing_elements_are_empty() -> None:
    """Absent UIDs read as empty strings (the caller decides)."""
    meta = parse_file_meta(_meta(_element(0x0002, b"UI", CT.encode() + b"\x00")))
    assert meta.sop_instance_uid == "" and meta.transfer_syntax_uid == ""


@pytest.mark.parametrize(
    "data",
    [b"", bytes(131), bytes(128) + b"DICX" + bytes(20), b"DICM" + bytes(200)],
    ids=["empty", "short", "wrong-magic", "no-preamble"],
)
def test_no_dicm_is_not_part10(data: bytes) -> None:
    """Without the preamble and DICM the file is not Part 10 (no lenient retry needed)."""
    with pytest.raises(NotPart10):
        parse_file_meta(data)


@pytest.mark.parametrize(
    "data",
    [
        PREAMBLE + b"\x02\x00",  # truncated before the group length
        file_meta(CT, INSTANCE, EXPLICIT)[:-5],  # truncated inside the group
        _meta(_element(0x0002, b"UI", CT.encode()), group_length=100),  # group length too long
        _meta(_element(0x0002, b"UI", b"1.2"), group_length=6),  # element overruns the group
        # no group length element
        PREAMBLE + _element(0x0002, b"UI", CT.encode() + b"\x00") + DATASET,
        # undefined length
        _meta(struct.pack("<HH2sHL", 0x0002, 0x0001, b"OB", 0, 0xFFFFFFFF)),
        # an element of another group inside the group length
        _meta(_element(0x0002, b"UI", b"1.2"), DATASET),
        # implicit VR
        _meta(struct.pack("<HHL", 0x0002, 0x0002, 4) + b"1.2\x00"),
    ],
    ids=[
        "truncated-head",
        "truncated-group",
        "group-length-beyond-data",
        "element-overruns",
        "no-group-length",
        "undefined-length",
        "foreign-element",
        "implicit-vr",
    ],
)
def test_irregular_meta_is_refused(data: bytes) -> None:
    """Anything but the plain explicit-VR form is IrregularMeta (the prober then asks pydicom)."""
    with pytest.raises(IrregularMeta):
        parse_file_meta(data)


def test_meta_continuing_past_the_group_length_is_irregular() -> None:
    """A group length shorter than the group: the next element is still group 0002."""
    first = _element(0x0002, b"UI", CT.encode() + b"\x00")
    data = _meta(first, group_length=len(first)) + _element(0x0003, b"UI", b"1.2\x00")
    with pytest.raises(IrregularMeta):
        parse_file_meta(data)


def test_long_meta_group_is_read_beyond_the_first_block() -> None:
    """A meta group longer than the first read is read to its end."""
    big = _element(0x0102, b"OB", bytes(PROBE_BYTES * 2))  # Private Information
    data = _meta(
        _element(0x0002, b"UI", CT.encode() + b"\x00"),
        _element(0x0003, b"UI", b"1.2.3\x00"),
        _element(0x0010, b"UI", EXPLICIT.encode() + b"\x00"),
        big,
    )
    meta = read_file_meta(io.BytesIO(data + DATASET))
    assert meta.sop_instance_uid == "1.2.3" and meta.dataset_offset == len(data)


def test_agrees_with_pydicom_on_generated_files(tmp_path: Path) -> None:
    """Files written by pydicom (explicit and implicit syntaxes) read the same as pydicom."""
    from pydicom.filereader import read_file_meta_info

    files = write_series(tmp_path / "a", 3) + write_series(
        tmp_path / "b", 2, transfer_syntax="1.2.840.10008.1.2"
    )
    for path in files:
        with path.open("rb") as fh:
            meta = read_file_meta(fh)
        ref = read_file_meta_info(path)
        assert meta.sop_class_uid == ref.MediaStorageSOPClassUID
        assert meta.sop_instance_uid == ref.MediaStorageSOPInstanceUID
        assert meta.transfer_syntax_uid == ref.TransferSyntaxUID


def test_probe_reasons(tmp_path: Path) -> None:
    """Probing: the same skip reasons as before for non-DICOM files and missing UIDs."""
    good = write(make_dataset(), tmp_path / "good.dcm")
    (tmp_path / "text.txt").write_text("hello")
    (tmp_path / "nouids.dcm").write_bytes(
        _meta(_element(0x0002, b"UI", CT.encode() + b"\x00")) + DATASET
    )
    truncated = good.read_bytes()[:150]
    (tmp_path / "truncated.dcm").write_bytes(truncated)
    items, skipped = collect_files([tmp_path, tmp_path / "missing"])
    assert [Path(i.path or "").name for i in items] == ["good.dcm"]
    reasons = {Path(s.path).name: s.reason for s in skipped}
    assert reasons == {
        "missing": "does not exist",
        "nouids.dcm": NO_UIDS,
        "text.txt": NOT_PART10,
        # pydicom reads what there is of a truncated group, as before: the UIDs are missing
        "truncated.dcm": NO_UIDS,
    }


def test_probe_falls_back_to_pydicom_for_irregular_meta(tmp_path: Path) -> None:
    """A meta group without a group length is still pushed (pydicom reads it)."""
    body = b"".join(
        [
            _element(0x0001, b"OB", b"\x00\x01"),
            _element(0x0002, b"UI", CT.encode() + b"\x00"),
            _element(0x0003, b"UI", b"1.2.3\x00"),
            _element(0x0010, b"UI", EXPLICIT.encode() + b"\x00"),
        ]
    )
    path = tmp_path / "nogl.dcm"
    path.write_bytes(PREAMBLE + body + DATASET)
    probed = probe_file(path)
    assert not isinstance(probed, Skipped)
    assert (probed.sop_class_uid, probed.sop_instance_uid) == (CT, "1.2.3")


def test_probe_unreadable(tmp_path: Path) -> None:
    """A directory given as a file path is unreadable, with the OS's reason."""
    probed = probe_file(tmp_path)
    assert isinstance(probed, Skipped) and probed.reason.startswith("unreadable: ")
