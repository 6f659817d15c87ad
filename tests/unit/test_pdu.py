"""PDU codec: round trips, malformed input, and agreement with pynetdicom's encoder."""

from __future__ import annotations

import struct

import pytest
from pynetdicom.pdu import A_ASSOCIATE_RQ as PynetdicomRQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
)
from pynetdicom.presentation import build_context
from pynetdicom.transport import AddressInformation

from ctnode.ul import pdu as P


def _pynetdicom_rq() -> bytes:
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = "MODALITY"
    primitive.called_ae_title = "CTNODE"
    primitive.calling_presentation_address = AddressInformation("127.0.0.1", 1)
    primitive.called_presentation_address = AddressInformation("127.0.0.1", 2)
    ctx = build_context("1.2.840.10008.1.20.1", ["1.2.840.10008.1.2"])
    ctx.context_id = 1
    ctx2 = build_context("1.2.840.10008.5.1.4.1.1.2", ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    ctx2.context_id = 3
    primitive.presentation_context_definition_list = [ctx, ctx2]
    ml = MaximumLengthNotification()
    ml.maximum_length_received = 32768
    role = SCP_SCU_RoleSelectionNegotiation()
    role.sop_class_uid = "1.2.840.10008.1.20.1"
    role.scu_role = False
    role.scp_role = True
    primitive.user_information = [ml, role]
    pdu = PynetdicomRQ()
    pdu.from_primitive(primitive)
    return bytes(pdu.encode())


def test_decodes_an_rq_made_by_pynetdicom() -> None:
    """An A-ASSOCIATE-RQ from an independent encoder decodes to the same values."""
    raw = _pynetdicom_rq()
    pdu_type, length = P.parse_header(raw[:6])
    assert pdu_type == P.A_ASSOCIATE_RQ and length == len(raw) - 6
    rq = P.decode_associate_rq(raw[6:])
    assert rq.calling_ae == "MODALITY" and rq.called_ae == "CTNODE"
    assert rq.application_context == P.APPLICATION_CONTEXT
    assert [c.context_id for c in rq.contexts] == [1, 3]
    assert rq.contexts[1].transfer_syntaxes == ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")
    assert rq.user.max_pdu_length == 32768
    assert rq.user.roles == [P.RoleSelection("1.2.840.10008.1.20.1", False, True)]


def test_rq_round_trip() -> None:
    """What we encode, we decode identically."""
    rq = P.AssociateRQ(
        called_ae="PACS",
        calling_ae="CTNODE",
        contexts=[P.PresentationContextRQ(1, "1.2.840.10008.1.1", ("1.2.840.10008.1.2",))],
        user=P.UserInformation(
            max_pdu_length=65536,
            implementation_class_uid="1.2.3",
            implementation_version_name="X",
            roles=[P.RoleSelection("1.2.3.4", True, False)],
        ),
    )
    raw = P.encode_associate_rq(rq)
    back = P.decode_associate_rq(raw[6:])
    assert back.contexts == rq.contexts
    assert back.user.max_pdu_length == 65536
    assert back.user.roles == rq.user.roles
    assert back.user.implementation_class_uid == "1.2.3"


def test_ac_round_trip() -> None:
    """A-ASSOCIATE-AC keeps context results and syntaxes."""
    ac = P.AssociateAC(
        called_ae="CTNODE",
        calling_ae="MOD",
        contexts=[
            P.PresentationContextAC(1, 0, "1.2.840.10008.1.2"),
            P.PresentationContextAC(3, 4, "1.2.840.10008.1.2"),
        ],
        user=P.UserInformation(max_pdu_length=16384, implementation_class_uid="1.2"),
    )
    back = P.decode_associate_ac(P.encode_associate_ac(ac)[6:])
    assert back.contexts == ac.contexts and back.user.max_pdu_length == 16384


def test_rj_abort_release_encodings() -> None:
    """Fixed-size PDUs have the PS3.8 layout."""
    assert P.encode_associate_rj(1, 1, 7) == b"\x03\x00\x00\x00\x00\x04\x00\x01\x01\x07"
    assert P.decode_associate_rj(b"\x00\x02\x03\x02") == P.AssociateRJ(2, 3, 2)
    assert P.encode_abort(2, 6)[-2:] == b"\x02\x06"
    assert P.encode_release_rq() == b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00"


@pytest.mark.parametrize(
    "mutate",
    [
        lambda b: b[:40],  # shorter than fixed fields
        lambda b: b + b"\x20\x00\xff\xff",  # item runs past the PDU
        lambda b: b + b"\x99\x00\x00\x05",  # unknown item whose length runs past the PDU
    ],
)
def test_malformed_rq_raises_pdu_error(mutate: object) -> None:
    """Truncated or nonsensical A-ASSOCIATE-RQs raise PDUError, never something else."""
    raw = _pynetdicom_rq()[6:]
    with pytest.raises(P.PDUError):
        P.decode_associate_rq(mutate(raw))  # type: ignore[operator]


def _item(item_type: int, value: bytes) -> bytes:
    return struct.pack(">BxH", item_type, len(value)) + value


def _rq_body(*context_ids: int, extra_items: bytes = b"", context_extra: bytes = b"") -> bytes:
    """An A-ASSOCIATE-RQ body proposing Verification under each of *context_ids*."""
    fixed = struct.pack(">HH", 1, 0) + b"CTNODE".ljust(16) + b"MODALITY".ljust(16) + bytes(32)
    contexts = b"".join(
        _item(
            0x20,
            bytes([cid, 0, 0, 0])
            + _item(0x30, b"1.2.840.10008.1.1")
            + _item(0x40, b"1.2.840.10008.1.2")
            + context_extra,
        )
        for cid in context_ids
    )
    user = _item(0x50, _item(0x51, struct.pack(">L", 16384)) + _item(0x52, b"1.2.3"))
    return fixed + _item(0x10, P.APPLICATION_CONTEXT.encode()) + contexts + user + extra_items


def test_unknown_items_and_sub_items_are_skipped() -> None:
    """PS3.8 9.3.1: items and sub-items of unrecognised type are ignored and skipped, by their
    length, wherever they appear (RQ items, presentation context and user information
    sub-items); the rest decodes as without them."""
    plain = P.decode_associate_rq(_rq_body(1, 3))
    unknown = _item(0x99, b"\x01\x02\x03")
    body = _rq_body(1, 3, extra_items=unknown, context_extra=unknown)
    body = body[:68] + unknown + body[68:]
    rq = P.decode_associate_rq(body)
    assert rq.contexts == plain.contexts
    assert rq.application_context == P.APPLICATION_CONTEXT
    assert rq.user.max_pdu_length == 16384
    ac = P.encode_associate_ac(P.AssociateAC(called_ae="A", calling_ae="B"))
    assert P.decode_associate_ac(ac[6:] + unknown).called_ae == "A"


@pytest.mark.parametrize("ids", [(0,), (2,), (1, 254), (1, 1), (3, 5, 3)])
def test_invalid_context_ids_raise_invalid_parameter(ids: tuple[int, ...]) -> None:
    """PS3.8 9.3.2.2: presentation context IDs are odd, 1-255, one per context; ID 0, an even
    ID or a repeated ID is a PDUError with A-ABORT reason 6 (invalid parameter value)."""
    with pytest.raises(P.PDUError) as caught:
        P.decode_associate_rq(_rq_body(*ids))
    assert caught.value.abort_reason == P.ABORT_INVALID_PARAMETER


def test_context_ids_1_to_255_decode() -> None:
    """Every odd ID from 1 to 255, each once, is valid (128 contexts)."""
    ids = tuple(range(1, 256, 2))
    assert [c.context_id for c in P.decode_associate_rq(_rq_body(*ids)).contexts] == list(ids)


@pytest.mark.parametrize("item_type", [0x10, 0x50])
def test_second_application_context_or_user_information_is_unexpected(item_type: int) -> None:
    """PS3.8 9.3.2 Table 9-11: one Application Context and one User Information item; a second
    one is a PDUError with A-ABORT reason 5 (unexpected parameter), never silently used."""
    body = _rq_body(1)
    first = P.decode_associate_rq(body)
    assert first.contexts and first.user.max_pdu_length == 16384
    second = (
        _item(0x10, P.APPLICATION_CONTEXT.encode())
        if item_type == 0x10
        else _item(0x50, _item(0x51, struct.pack(">L", 0)))
    )
    with pytest.raises(P.PDUError) as caught:
        P.decode_associate_rq(body + second)
    assert caught.value.abort_reason == P.ABORT_UNEXPECTED_PARAMETER


def test_pdv_split_and_bounds() -> None:
    """P-DATA bodies split into PDVs; a PDV longer than its PDU is an error."""
    body = struct.pack(">LBB", 5, 1, 3) + b"abc" + struct.pack(">LBB", 3, 1, 0) + b"d"
    pdvs = P.iter_pdvs(memoryview(body))
    assert [(c, m, bytes(d)) for c, m, d in pdvs] == [(1, 3, b"abc"), (1, 0, b"d")]
    with pytest.raises(P.PDUError):
        P.iter_pdvs(memoryview(struct.pack(">LBB", 100, 1, 3) + b"abc"))
    with pytest.raises(P.PDUError):
        P.iter_pdvs(memoryview(b""))


def test_pdata_header() -> None:
    """Header of a one-PDV P-DATA-TF: lengths and message control bits."""
    header = P.pdata_header(5, True, True, 10)
    assert header == b"\x04\x00" + struct.pack(">L", 16) + struct.pack(">LBB", 12, 5, 3)


@pytest.mark.parametrize(
    ("max_pdu", "capacity"),
    [(4097, 4090), (4096, 4090), (4099, 4092), (512, 506), (16383, 16376), (8, 2), (7, 2), (1, 2)],
)
def test_pdv_capacity_is_even_and_within_the_maximum(max_pdu: int, capacity: int) -> None:
    """PS3.8 D.1 and Annex E: data per one-PDV P-DATA-TF is the peer's maximum less the 6-byte
    PDV item header, rounded down to even (odd maxima included); a maximum below 8 still gets
    an even fragment of 2 bytes."""
    assert P.pdv_capacity(max_pdu) == capacity


def test_pdv_capacity_unlimited() -> None:
    """A maximum of 0 (no limit, PS3.8 D.1) still fragments, at an even 16 MiB."""
    assert P.pdv_capacity(0) == 1 << 24
