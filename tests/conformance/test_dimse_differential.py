"""Differential tests of ctnode's DIMSE command set codec against pynetdicom's (PS3.7 9.3, 10.3).

Every command ctnode sends or receives, with generated field values, goes both ways: built by
pynetdicom from a DIMSE primitive (its own send path) and decoded by ctnode, and encoded by
ctnode and taken apart by pynetdicom's receive path (``DIMSEMessage.decode_msg`` then
``message_to_primitive``). The decoded values must be the ones generated.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from io import BytesIO
from typing import Any, cast

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydicom.multival import MultiValue
from pynetdicom import dimse_messages as dm
from pynetdicom import dimse_primitives as dp
from pynetdicom.pdu_primitives import P_DATA

from ctnode.ul import dimse
from tests.conformance import strategies as S

#: pynetdicom's primitive class of each message (its service parameters, PS3.7 9.1 and 10.1).
_PRIMITIVES: dict[str, type[Any]] = {
    "C-ECHO": dp.C_ECHO,
    "C-STORE": dp.C_STORE,
    "C-FIND": dp.C_FIND,
    "C-GET": dp.C_GET,
    "C-MOVE": dp.C_MOVE,
    "C-CANCEL": dp.C_CANCEL,
    "N-ACTION": dp.N_ACTION,
    "N-EVENT-REPORT": dp.N_EVENT_REPORT,
}
_DATASET_PARAMETER = {
    "C-STORE-RQ": "DataSet",
    "C-FIND-RQ": "Identifier",
    "C-FIND-RSP": "Identifier",
    "C-GET-RQ": "Identifier",
    "C-GET-RSP": "Identifier",
    "C-MOVE-RQ": "Identifier",
    "C-MOVE-RSP": "Identifier",
    "N-ACTION-RQ": "ActionInformation",
    "N-ACTION-RSP": "ActionReply",
    "N-EVENT-REPORT-RQ": "EventInformation",
    "N-EVENT-REPORT-RSP": "EventReply",
}
_TEXT = {"MoveDestination", "MoveOriginatorApplicationEntityTitle", "ErrorComment"}


def _normal(keyword: str, value: object) -> object:
    """A value as it compares: AE and LO without their insignificant edge spaces (PS3.5 6.2),
    AT as a tuple of tags, UIDs as plain strings."""
    if keyword == "OffendingElement":
        values = value if isinstance(value, list | tuple | MultiValue) else [value]
        return tuple(int(tag) for tag in cast(Iterable[Any], values))
    if isinstance(value, str):
        return value.strip() if keyword in _TEXT else str(value)
    return value


def _expected(fields: Mapping[str, object]) -> dict[str, object]:
    return {k: _normal(k, v) for k, v in fields.items()}


def _ids(spec: S.CommandSpec) -> str:
    return spec.name


# ------------------------------------------------------------ ctnode encodes


@pytest.mark.parametrize("spec", S.COMMANDS, ids=_ids)
@given(data=st.data())
@S.budget(60)
def test_ctnode_command_decodes_in_pynetdicom(spec: S.CommandSpec, data: st.DataObject) -> None:
    """A command set encoded by ctnode (Implicit VR Little Endian, group length computed) is
    taken by pynetdicom's receive path as the same message type with the same values, both as
    its decoded command set and as the DIMSE primitive it hands to a service (PS3.7 6.3.1,
    9.3, 10.3, E.1)."""
    fields = data.draw(S.command_fields(spec))
    encoded = dimse.encode_command(fields)
    message = dm.DIMSEMessage()
    pdata = P_DATA()
    # pynetdicom annotates (ID, PDV) tuples but its setter insists on [ID, PDV] lists
    pdata.presentation_data_value_list = [[1, b"\x03" + encoded]]  # type: ignore[list-item]
    complete = message.decode_msg(pdata)
    assert complete == (fields["CommandDataSetType"] == dimse.NO_DATASET)
    assert type(message).__name__ == spec.name.replace("-", "_")
    command_set = message.command_set
    assert command_set.CommandGroupLength == len(encoded) - 12
    decoded = {elem.keyword: _normal(elem.keyword, elem.value) for elem in command_set}
    del decoded["CommandGroupLength"]
    assert decoded == _expected(fields)
    primitive = message.message_to_primitive()
    for keyword, value in _expected(fields).items():
        if keyword not in ("CommandField", "CommandDataSetType"):
            assert _normal(keyword, getattr(primitive, keyword)) == value, keyword


# ------------------------------------------------------------ pynetdicom encodes


@pytest.mark.parametrize("spec", S.COMMANDS, ids=_ids)
@given(data=st.data())
@S.budget(60)
def test_pynetdicom_command_decodes_in_ctnode(spec: S.CommandSpec, data: st.DataObject) -> None:
    """A command set pynetdicom builds from a DIMSE primitive and fragments into PDVs decodes in
    ctnode to the same values (command field, data set presence, every parameter), and ctnode
    encodes those values to the same bytes (PS3.7 6.3.1, 9.3, 10.3, E.1; PS3.5 7.1.2 padding)."""
    fields = data.draw(S.command_fields(spec))
    kind = spec.name.rpartition("-")[0]
    primitive = _PRIMITIVES[kind]()
    for keyword, value in fields.items():
        if keyword not in ("CommandField", "CommandDataSetType"):
            setattr(primitive, keyword, list(value) if isinstance(value, tuple) else value)
    has_dataset = fields["CommandDataSetType"] != dimse.NO_DATASET
    if has_dataset:
        setattr(primitive, _DATASET_PARAMETER[spec.name], BytesIO(b"\x08\x00\x52\x00"))
    message = getattr(dm, spec.name.replace("-", "_"))()
    message.primitive_to_message(primitive)
    encoded = b"".join(
        pdv[1:]
        for pdata in message.encode_msg(1, 16384)
        for _, pdv in pdata.presentation_data_value_list
        if pdv[0] & 1
    )
    decoded = dimse.decode_command(encoded)
    same_values = {**fields, "CommandDataSetType": decoded["CommandDataSetType"]}
    assert dimse.encode_command(same_values) == encoded, "ctnode encodes them to other bytes"
    assert decoded.name == spec.name
    assert decoded.has_dataset == has_dataset
    assert decoded.pop("CommandGroupLength") == len(encoded) - 12
    expected = _expected(fields)
    del expected["CommandDataSetType"]
    assert decoded.pop("CommandDataSetType") != dimse.NO_DATASET or not has_dataset
    assert {k: _normal(k, v) for k, v in decoded.items()} == expected
