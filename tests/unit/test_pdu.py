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
        lambda b: b + b"\x99\x00\x00\x00",  # unknown item type
    ],
)
def test_malformed_rq_raises_pdu_error(mutate: object) -> None:
    """Truncated or nonsensical A-ASSOCIATE-RQs raise PDUError, never something else."""
    raw = _pynetdicom_rq()[6:]
    with pytest.raises(P.PDUError):
        P.decode_associate_rq(mutate(raw))  # type: ignore[operator]


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
