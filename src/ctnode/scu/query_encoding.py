"""Encode and decode identifier data sets (C-FIND/C-MOVE) in a negotiated syntax."""

from __future__ import annotations

import warnings
from io import BytesIO

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset

from ctnode.dicom.contexts import IMPLICIT_VR_LE


def encode_identifier(ds: Dataset, transfer_syntax: str) -> bytes:
    """*ds* encoded in (explicit or implicit VR) little endian, without file meta."""
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = transfer_syntax == IMPLICIT_VR_LE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_dataset(fp, ds)
    return bytes(fp.getvalue())


def decode_identifier(data: bytes, transfer_syntax: str) -> Dataset:
    """Decode a data set received in *transfer_syntax* (ValueError if it is malformed)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = read_dataset(BytesIO(data), transfer_syntax == IMPLICIT_VR_LE, True)
            for _ in ds:  # force decoding of every element now
                pass
        except Exception as exc:
            raise ValueError(f"undecodable identifier: {exc}") from exc
    return ds
