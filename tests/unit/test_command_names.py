"""Every DIMSE Command Field ctnode defines has its PS3.7 name (logs never show ``0x8010``)."""

from __future__ import annotations

import re

from ctnode.ul import dimse

#: PS3.7 Annex E.1, Table E.1-1: every command and its Command Field value.
PS3_7_E1 = {
    "C-STORE-RQ": 0x0001,
    "C-STORE-RSP": 0x8001,
    "C-GET-RQ": 0x0010,
    "C-GET-RSP": 0x8010,
    "C-FIND-RQ": 0x0020,
    "C-FIND-RSP": 0x8020,
    "C-MOVE-RQ": 0x0021,
    "C-MOVE-RSP": 0x8021,
    "C-ECHO-RQ": 0x0030,
    "C-ECHO-RSP": 0x8030,
    "N-EVENT-REPORT-RQ": 0x0100,
    "N-EVENT-REPORT-RSP": 0x8100,
    "N-GET-RQ": 0x0110,
    "N-GET-RSP": 0x8110,
    "N-SET-RQ": 0x0120,
    "N-SET-RSP": 0x8120,
    "N-ACTION-RQ": 0x0130,
    "N-ACTION-RSP": 0x8130,
    "N-CREATE-RQ": 0x0140,
    "N-CREATE-RSP": 0x8140,
    "N-DELETE-RQ": 0x0150,
    "N-DELETE-RSP": 0x8150,
    "C-CANCEL-RQ": 0x0FFF,
}


def _defined_fields() -> dict[str, int]:
    """The module's ``C_..._RQ`` / ``N_..._RSP`` constants: name -> value."""
    return {
        name: value
        for name, value in vars(dimse).items()
        if re.fullmatch(r"[CN]_[A-Z_]+_(RQ|RSP)", name) and isinstance(value, int)
    }


def test_every_defined_command_field_has_its_name() -> None:
    """Each Command Field constant in ``ul.dimse`` is named in COMMAND_NAMES, and the name is
    the constant's own (``C_GET_RSP`` -> ``C-GET-RSP``)."""
    fields = _defined_fields()
    assert fields, "no command field constants found"
    for name, value in fields.items():
        assert dimse.COMMAND_NAMES.get(value) == name.replace("_", "-"), name


def test_command_names_cover_ps3_7_annex_e() -> None:
    """COMMAND_NAMES is exactly PS3.7 Annex E.1: every request and response, right values."""
    assert {name: value for value, name in dimse.COMMAND_NAMES.items()} == PS3_7_E1


def test_command_name_of_a_c_get_rsp() -> None:
    """A decoded C-GET-RSP calls itself ``C-GET-RSP``; an unknown field shows in hex."""
    rsp = dimse.decode_command(dimse.encode_command({"CommandField": dimse.C_GET_RSP}))
    assert rsp.name == "C-GET-RSP"
    odd = dimse.decode_command(dimse.encode_command({"CommandField": 0x0042}))
    assert odd.name == "0x0042"
