"""The data set walker: agrees with pydicom on valid data, refuses malformed or deep data."""

from __future__ import annotations

import struct
import zlib

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import JPEG2000Lossless, RLELossless

from ctnode.dicom import scan as tags
from ctnode.dicom.scan import DatasetError, DatasetTooDeep, scan_dataset
from tests.helpers.dicomgen import SIX_CLASSES, encode_dataset, make_dataset


def _encode(ds: Dataset, explicit: bool = True) -> bytes:
    return encode_dataset(ds, explicit)


@pytest.mark.parametrize("name", sorted(SIX_CLASSES))
@pytest.mark.parametrize("explicit", [True, False])
def test_valid_datasets_scan_and_yield_index_values(name: str, explicit: bool) -> None:
    """Each of the six classes, explicit and implicit VR, walks and yields its UIDs."""
    ds = make_dataset(SIX_CLASSES[name])
    result = scan_dataset(_encode(ds, explicit), explicit_vr=explicit)
    assert result.text(tags.SOP_INSTANCE_UID) == ds.SOPInstanceUID
    assert result.text(tags.STUDY_INSTANCE_UID) == ds.StudyInstanceUID
    assert result.text(tags.SERIES_INSTANCE_UID) == ds.SeriesInstanceUID
    assert result.text(tags.MODALITY) == ds.Modality
    assert result.values[tags.PATIENT_NAME].rstrip(b" ") == b"Doe^Jane"


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless])
def test_encapsulated_pixel_data_is_walked(syntax: str) -> None:
    """Compressed pixel data (undefined length, fragments) is structurally checked."""
    ds = make_dataset(SIX_CLASSES["CT"], transfer_syntax=syntax)
    data = _encode(ds)
    assert scan_dataset(data, explicit_vr=True).text(tags.SOP_INSTANCE_UID) == ds.SOPInstanceUID
    with pytest.raises(DatasetError):
        scan_dataset(data[:-8], explicit_vr=True)  # sequence delimiter missing


def test_deflated_dataset_is_inflated_then_walked() -> None:
    """Deflated explicit VR data sets are inflated (bounded) before the walk."""
    ds = make_dataset(SIX_CLASSES["SR"])
    raw = _encode(ds)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    deflated = compressor.compress(raw) + compressor.flush()
    assert (
        scan_dataset(deflated, explicit_vr=True, deflated=True).text(tags.SOP_INSTANCE_UID)
        == ds.SOPInstanceUID
    )
    with pytest.raises(DatasetError, match="inflates to more than"):
        scan_dataset(deflated, explicit_vr=True, deflated=True, max_inflated=100)
    with pytest.raises(DatasetError):
        scan_dataset(b"\x00garbage" * 10, explicit_vr=True, deflated=True)


def _nested(depth: int) -> Dataset:
    ds = Dataset()
    ds.SOPInstanceUID = "1.2.3"
    inner = ds
    for _ in range(depth):
        item = Dataset()
        item.CodeValue = "X"
        inner.ContentSequence = Sequence([item])
        inner = item
    return ds


@pytest.mark.parametrize("explicit", [True, False])
def test_nesting_limit(explicit: bool) -> None:
    """64 levels of sequences are fine; 65 are refused as too deep."""
    scan_dataset(_encode(_nested(64), explicit), explicit_vr=explicit)
    with pytest.raises(DatasetTooDeep):
        scan_dataset(_encode(_nested(65), explicit), explicit_vr=explicit)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x08\x00\x18\x00UI\x40\x00" + b"1" * 10,  # value runs past the end
        b"\x08\x00\x18\x00\x00\x01\x02\x00" + b"12",  # invalid VR bytes
        b"\x08\x00\x18\x00UI",  # truncated header
        b"\xfe\xff\x0d\xe0\x00\x00\x00\x00",  # stray item delimiter
        b"\x08\x00\x05\x11SQ\x00\x00\xff\xff\xff\xff"
        + b"\xfe\xff\x00\xe0\xff\xff\xff\xff",  # sequence never closed
        bytes(range(256)) * 4,
    ],
)
def test_garbage_is_refused(data: bytes) -> None:
    """Garbage and truncated data sets raise DatasetError (never another exception)."""
    with pytest.raises(DatasetError):
        scan_dataset(data, explicit_vr=True)


def test_file_meta_in_dataset_is_reported() -> None:
    """Group 0002 inside a network data set is flagged."""
    data = struct.pack("<HH2sH", 2, 0x10, b"UI", 4) + b"1.2\x00" + _encode(make_dataset())
    assert scan_dataset(data, explicit_vr=True).has_file_meta
