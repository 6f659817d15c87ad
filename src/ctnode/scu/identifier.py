"""Query/Retrieve identifiers on the wire: the data set of a C-FIND or C-MOVE request or
response, encoded in the accepted (uncompressed little endian) transfer syntax, decoded
strictly, and shown as DICOM JSON. Pure: bytes in, bytes out."""

from __future__ import annotations

import warnings
from typing import Any

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset

from ctnode.dicom.contexts import IMPLICIT_VR_LE


def encode_identifier(ds: Dataset, transfer_syntax: str) -> bytes:
    """*ds* encoded in the accepted (uncompressed little endian) transfer syntax."""
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = transfer_syntax == IMPLICIT_VR_LE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_dataset(fp, ds)
    return bytes(fp.getvalue())


def decode_identifier(data: bytes, transfer_syntax: str) -> Dataset:
    """A response identifier as a Dataset (ValueError if it cannot be decoded)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = read_dataset(
                DicomBytesIO(data),  # type: ignore[arg-type]
                transfer_syntax == IMPLICIT_VR_LE,
                True,
                len(data),
            )
            for tag in list(ds.keys()):
                raw = ds.get_item(tag)
                if (
                    isinstance(raw, RawDataElement)
                    and raw.value is not None
                    and raw.length != 0xFFFFFFFF
                    and len(raw.value) != raw.length
                ):
                    raise ValueError(f"element {tag} is truncated")
            # Convert every raw element now, so a malformed value fails here and not later.
            for _ in ds:
                pass
    except Exception as exc:
        raise ValueError(f"undecodable identifier: {exc}") from exc
    return ds


def to_dicom_json(ds: Dataset) -> dict[str, Any]:
    """PS3.18 Annex F (DICOM JSON) form of a response identifier."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dict(ds.to_json_dict(bulk_data_element_handler=lambda _elem: ""))
