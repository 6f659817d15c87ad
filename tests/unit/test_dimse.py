"""Command set codec: agreement with pydicom, strictness on malformed input."""

from __future__ import annotations

import struct

import pytest
from pydicom.dataset import Dataset

from ctnode.ul.dimse import (
    C_STORE_RQ,
    CommandError,
    decode_command,
    encode_command,
    response_fields,
)
from tests.helpers.dicomgen import encode_dataset


def _pydicom_command() -> bytes:
    ds = Dataset()
    ds.CommandGroupLength = 0
    ds.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.CommandField = C_STORE_RQ
    ds.MessageID = 7
    ds.Priority = 0
    ds.CommandDataSetType = 0
    ds.AffectedSOPInstanceUID = "1.2.3.4.5"
    ds.MoveOriginatorApplicationEntityTitle = "PACS"
    ds.MoveOriginatorMessageID = 3
    return encode_dataset(ds, explicit=False)


def test_decodes_a_pydicom_encoded_command() -> None:
    """An implicit VR LE command set written by pydicom decodes to its values."""
    cmd = decode_command(_pydicom_command())
    assert cmd.field == C_STORE_RQ
    assert cmd["MessageID"] == 7
    assert cmd["AffectedSOPInstanceUID"] == "1.2.3.4.5"
    assert cmd["MoveOriginatorApplicationEntityTitle"] == "PACS"
    assert cmd.has_dataset


def test_encode_decode_round_trip() -> None:
    """Encoding computes the group length; decoding gives the values back."""
    raw = encode_command(
        {
            "AffectedSOPClassUID": "1.2.3",
            "CommandField": 0x8001,
            "MessageIDBeingRespondedTo": 9,
            "CommandDataSetType": 0x0101,
            "Status": 0xA700,
            "AffectedSOPInstanceUID": "1.2.3.4",
            "OffendingElement": (0x00100010,),
        }
    )
    group, element, length, value = struct.unpack_from("<HHLL", raw)
    assert (group, element, length, value) == (0, 0, 4, len(raw) - 12)
    cmd = decode_command(raw)
    assert cmd["Status"] == 0xA700 and not cmd.has_dataset
    assert cmd["OffendingElement"] == (0x00100010,)


def test_response_fields_echo_the_request() -> None:
    """A response names the request's SOP class/instance and message ID."""
    cmd = decode_command(_pydicom_command())
    fields = response_fields(cmd, 0x8001, 0)
    assert fields["MessageIDBeingRespondedTo"] == 7
    assert fields["AffectedSOPInstanceUID"] == "1.2.3.4.5"


@pytest.mark.parametrize(
    "raw",
    [
        b"\x00\x00",  # truncated header
        struct.pack("<HHL", 0, 0x0100, 4) + b"\x01\x00\x00\x00",  # US with 4 bytes
        struct.pack("<HHL", 8, 0x0016, 2) + b"1\x00",  # not group 0000
        struct.pack("<HHL", 0, 0x0110, 100) + b"\x01\x00",  # length past the end
        struct.pack("<HHL", 0, 0x0110, 2) + b"\x01\x00",  # no CommandField
        struct.pack("<HHL", 0, 0x0100, 2)
        + b"\x01\x00"
        + struct.pack("<HHL", 0, 0x1000, 2)
        + b"\xff\xfe",  # UID not ASCII
    ],
)
def test_malformed_commands_raise_command_error(raw: bytes) -> None:
    """Missing elements, wrong VR lengths and overruns are CommandError."""
    with pytest.raises(CommandError):
        decode_command(raw)
