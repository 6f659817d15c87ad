"""Pure storage rules: paths from UIDs, containment, file meta."""

from __future__ import annotations

from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path, PurePosixPath

import pydicom
import pytest

from ctnode.dicom.filemeta import file_meta, read_meta_length
from ctnode.storage import contained_path, instance_relpath, quarantine_name


def test_instance_path_layout() -> None:
    """Files go to <Study>/<Series>/<SOPInstance>.dcm."""
    assert instance_relpath("1.2", "1.2.3", "1.2.3.4") == PurePosixPath("1.2/1.2.3/1.2.3.4.dcm")


@pytest.mark.parametrize("bad", ["..", "../etc", "1.2/../../x", "/etc/passwd", "1.2\x00", "a" * 65])
def test_instance_path_refuses_bad_uids(bad: str) -> None:
    """Traversal-looking or invalid UIDs never become paths."""
    with pytest.raises(ValueError, match="not a valid UID"):
        instance_relpath("1.2", bad, "1.2.3")


@pytest.mark.parametrize("rel", ["../x", "/abs", "a/../../b", "a//b", "./a"])
def test_contained_path_refuses_escapes(tmp_path: Path, rel: str) -> None:
    """Paths that would leave the root are refused."""
    with pytest.raises(ValueError, match=r"not a plain relative path|leaves"):
        contained_path(tmp_path, rel)


def test_contained_path_refuses_symlink_escape(tmp_path: Path) -> None:
    """A symlink inside the root pointing outside does not let a path escape."""
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "link").symlink_to(tmp_path)
    with pytest.raises(ValueError, match="leaves"):
        contained_path(tmp_path / "root", "link/x")


def test_quarantine_name() -> None:
    """Quarantined duplicates are named by UID, time and hash prefix."""
    name = quarantine_name("1.2.3", "ab" * 32, datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    assert name == "1.2.3.20260102T030405000000Z.abababababab.dcm"


def test_file_meta_is_readable_by_pydicom() -> None:
    """The preamble and meta we write make a valid Part 10 file with pydicom."""
    meta = file_meta("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", "1.2.840.10008.1.2", "MODALITY")
    dataset = b"\x08\x00\x18\x00\x08\x00\x00\x001.2.3.4\x00"
    ds = pydicom.dcmread(BytesIO(meta + dataset))
    assert ds.file_meta.MediaStorageSOPInstanceUID == "1.2.3.4"
    assert ds.file_meta.SourceApplicationEntityTitle == "MODALITY"
    assert ds.SOPInstanceUID == "1.2.3.4"
    assert read_meta_length(meta + dataset) == len(meta)
