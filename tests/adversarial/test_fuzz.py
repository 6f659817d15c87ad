"""Fuzz stage: the suite's own valid PDU sequences, mutated deterministically (byte flips,
truncations, length-field corruption, insertions, deletions, duplications), sent to one node.

Each case sends its bytes, half-closes, and reads whatever comes back until the node closes the
connection. The reply must be well-formed (only PDU types an acceptor may send, RJ and A-ABORT
values from PS3.8, nothing after a final PDU, P-DATA only after A-ASSOCIATE-AC) and arrive in
bounded time; C-STORE-RSP Success answers are recorded so the index can be checked against them.
The suite's invariants are checked every ``CHECK_EVERY`` cases and at the end.

A failing case is reproducible from its number alone: ``run_case(node, N)``. The default run
is bounded (``DEFAULT_CASES``); ``pytest tests/adversarial --ondemand`` runs many more.
"""

from __future__ import annotations

import random
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from ctnode.dicom.contexts import (
    CT_IMAGE,
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    STORAGE_COMMITMENT_PUSH,
    STORAGE_COMMITMENT_PUSH_INSTANCE,
    VERIFICATION,
)
from ctnode.ul import dimse
from ctnode.ul import pdu as P
from tests.adversarial.harness import HostileNode
from tests.helpers import rawclient as raw
from tests.helpers.dicomgen import Ids, encode_dataset, make_dataset

DEFAULT_CASES = 200
ONDEMAND_CASES = 3000
CHECK_EVERY = 20
#: Seconds a case may take until the node has answered and closed (it sees EOF at once).
CASE_DEADLINE = 15.0

VALID_RJ = (
    {(r, 1, reason) for r in (1, 2) for reason in (1, 2, 3, 7)}
    | {(r, 2, reason) for r in (1, 2) for reason in (1, 2)}
    | {(r, 3, reason) for r in (1, 2) for reason in (1, 2)}
)
PROVIDER_ABORT_REASONS = {0, 1, 2, 4, 5, 6}


def _uid(case: int, kind: int) -> str:
    return f"1.2.826.0.1.3680043.10.1405.77.{case}.{kind}"


def _command_pdu(context_id: int, fields: dict[str, dimse.CommandValue | None]) -> bytes:
    return raw.pdata(context_id, dimse.encode_command(fields), command=True)


def seed_echo(case: int) -> list[bytes]:
    """A-ASSOCIATE-RQ, C-ECHO-RQ, A-RELEASE-RQ."""
    return [
        raw.associate_rq([(VERIFICATION, [IMPLICIT_VR_LE])]),
        _command_pdu(
            1,
            {
                "AffectedSOPClassUID": VERIFICATION,
                "CommandField": dimse.C_ECHO_RQ,
                "MessageID": 1,
                "CommandDataSetType": dimse.NO_DATASET,
            },
        ),
        P.encode_release_rq(),
    ]


def seed_store(case: int) -> list[bytes]:
    """A-ASSOCIATE-RQ, C-STORE-RQ command, its data set in two fragments, A-RELEASE-RQ."""
    ids = Ids(_uid(case, 1), _uid(case, 2))
    ds = make_dataset(CT_IMAGE, ids, sop_instance=_uid(case, 3), size=8, number=case % 1000 + 1)
    data = encode_dataset(ds)
    half = len(data) // 2
    return [
        raw.associate_rq([(CT_IMAGE, [EXPLICIT_VR_LE]), (VERIFICATION, [IMPLICIT_VR_LE])]),
        _command_pdu(
            1,
            {
                "AffectedSOPClassUID": CT_IMAGE,
                "CommandField": dimse.C_STORE_RQ,
                "MessageID": 2,
                "Priority": 0,
                "CommandDataSetType": dimse.HAS_DATASET,
                "AffectedSOPInstanceUID": _uid(case, 3),
            },
        ),
        raw.pdata(1, data[:half], command=False, last=False),
        raw.pdata(1, data[half:], command=False, last=True),
        P.encode_release_rq(),
    ]


def seed_report(case: int) -> list[bytes]:
    """A-ASSOCIATE-RQ from PACS (SCP role), N-EVENT-REPORT-RQ with its data set, release."""
    report = Dataset()
    report.TransactionUID = _uid(case, 4)
    item = Dataset()
    item.ReferencedSOPClassUID = CT_IMAGE
    item.ReferencedSOPInstanceUID = _uid(case, 3)
    report.ReferencedSOPSequence = Sequence([item])
    return [
        raw.associate_rq(
            [(STORAGE_COMMITMENT_PUSH, [IMPLICIT_VR_LE])],
            calling="PACS",
            roles=[P.RoleSelection(STORAGE_COMMITMENT_PUSH, False, True)],
        ),
        _command_pdu(
            1,
            {
                "AffectedSOPClassUID": STORAGE_COMMITMENT_PUSH,
                "CommandField": dimse.N_EVENT_REPORT_RQ,
                "MessageID": 3,
                "CommandDataSetType": dimse.HAS_DATASET,
                "AffectedSOPInstanceUID": STORAGE_COMMITMENT_PUSH_INSTANCE,
                "EventTypeID": 1,
            },
        ),
        raw.pdata(1, encode_dataset(report, explicit=False), command=False),
        P.encode_release_rq(),
    ]


SEEDS: list[Callable[[int], list[bytes]]] = [seed_echo, seed_store, seed_report]

# ---------------------------------------------------------------- mutations (pure)


def flip_bytes(rng: random.Random, pdus: list[bytes]) -> list[bytes]:
    """XOR 1-4 random bytes of one PDU with random values."""
    i = rng.randrange(len(pdus))
    pdu = bytearray(pdus[i])
    for _ in range(rng.randint(1, 4)):
        pdu[rng.randrange(len(pdu))] ^= rng.randint(1, 255)
    return [*pdus[:i], bytes(pdu), *pdus[i + 1 :]]


def truncate(rng: random.Random, pdus: list[bytes]) -> list[bytes]:
    """Cut the stream at a random byte."""
    stream = b"".join(pdus)
    return [stream[: rng.randrange(len(stream))]]


def corrupt_length(rng: random.Random, pdus: list[bytes]) -> list[bytes]:
    """Replace a PDU length, or a 2- or 4-byte window inside a PDU (item, PDV or element
    lengths), with a boundary value."""
    i = rng.randrange(len(pdus))
    pdu = bytearray(pdus[i])
    if rng.random() < 0.5 or len(pdu) < 12:
        true = len(pdu) - 6
        value = rng.choice([0, 1, true - 1, true + 1, true * 2, 0xFFFFFFFF, rng.getrandbits(32)])
        pdu[2:6] = struct.pack(">L", max(value, 0) & 0xFFFFFFFF)
    else:
        pos = rng.randrange(6, len(pdu) - 4)
        width = rng.choice([2, 4])
        value = rng.choice([0, 1, 0xFFFF, 0xFFFFFFFF, rng.getrandbits(8 * width)])
        pdu[pos : pos + width] = (value & ((1 << (8 * width)) - 1)).to_bytes(width, "big")
    return [*pdus[:i], bytes(pdu), *pdus[i + 1 :]]


def insert_bytes(rng: random.Random, pdus: list[bytes]) -> list[bytes]:
    """Insert 1-64 random bytes at a random position of one PDU (lengths left as they were)."""
    i = rng.randrange(len(pdus))
    pdu = pdus[i]
    pos = rng.randrange(len(pdu) + 1)
    junk = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 64)))
    return [*pdus[:i], pdu[:pos] + junk + pdu[pos:], *pdus[i + 1 :]]


def reorder(rng: random.Random, pdus: list[bytes]) -> list[bytes]:
    """Drop, duplicate or swap whole PDUs."""
    out = list(pdus)
    i = rng.randrange(len(out))
    choice = rng.randrange(3)
    if choice == 0 and len(out) > 1:
        del out[i]
    elif choice == 1:
        out.insert(rng.randrange(len(out) + 1), out[i])
    else:
        j = rng.randrange(len(out))
        out[i], out[j] = out[j], out[i]
    return out


MUTATIONS = [flip_bytes, truncate, corrupt_length, insert_bytes, reorder]


def mutate(case: int) -> tuple[str, list[bytes]]:
    """The byte sequence of fuzz case *case* (deterministic) and a description of it."""
    rng = random.Random(case)
    seed = SEEDS[case % len(SEEDS)]
    pdus = seed(case)
    applied = []
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        mutation = rng.choice(MUTATIONS)
        pdus = mutation(rng, pdus) or pdus
        applied.append(mutation.__name__)
    return f"case {case}: {seed.__name__} + {', '.join(applied)}", pdus


# ---------------------------------------------------------------- sending and judging


@dataclass
class Reply:
    """What the node sent back in one case."""

    pdu_types: list[int] = field(default_factory=list)
    stored: list[str] = field(default_factory=list)


def _read_until_closed(sock: socket.socket, deadline: float) -> bytes:
    out = bytearray()
    while True:
        left = deadline - time.monotonic()
        assert left > 0, "the node neither answered nor closed in time"
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return bytes(out)
        if not chunk:
            return bytes(out)
        out += chunk


def judge(data: bytes) -> Reply:
    """Check the node's reply stream is well-formed; returns what it contained."""
    reply = Reply()
    pos = 0
    associated = final = False
    command = bytearray()
    while pos < len(data):
        assert not final, "the node sent a PDU after a final one (RJ, RP or A-ABORT)"
        assert pos + 6 <= len(data), "truncated PDU header from the node"
        pdu_type, length = struct.unpack_from(">BxL", data, pos)
        body = data[pos + 6 : pos + 6 + length]
        assert len(body) == length, "truncated PDU from the node"
        pos += 6 + length
        reply.pdu_types.append(pdu_type)
        assert pdu_type in (2, 3, 4, 6, 7), f"the node sent PDU type 0x{pdu_type:02X}"
        if pdu_type == P.A_ASSOCIATE_AC:
            assert not associated
            P.decode_associate_ac(body)
            associated = True
        elif pdu_type == P.A_ASSOCIATE_RJ:
            assert not associated and (body[1], body[2], body[3]) in VALID_RJ, body
            final = True
        elif pdu_type == P.A_ABORT:
            assert body[2] == P.ABORT_SOURCE_PROVIDER, body
            assert body[3] in PROVIDER_ABORT_REASONS, body
            final = True
        elif pdu_type == P.A_RELEASE_RP:
            assert associated
            final = True
        else:  # P-DATA-TF
            assert associated, "P-DATA-TF before A-ASSOCIATE-AC"
            for _, control, pdv in P.iter_pdvs(memoryview(body)):
                assert control & 1, "the node sent a data set"
                command += pdv
                if control & 2:
                    rsp = dimse.decode_command(bytes(command))
                    command.clear()
                    if rsp.field == dimse.C_STORE_RSP and rsp.get("Status") == 0:
                        reply.stored.append(rsp.get_str("AffectedSOPInstanceUID"))
    return reply


def run_case(node: HostileNode, case: int) -> Reply:
    """Send fuzz case *case* and judge the reply; Success answers are recorded on *node*."""
    description, pdus = mutate(case)
    stream = b"".join(pdus)
    rng = random.Random(-case)
    try:
        with raw.connect(node.port) as sock:
            pos = 0
            try:
                while pos < len(stream):  # arbitrary TCP segmentation
                    step = rng.choice([len(stream), 1, 7, 100, 4096])
                    sock.sendall(stream[pos : pos + step])
                    pos += step
                sock.shutdown(socket.SHUT_WR)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the node already answered and closed: read what it said
            reply = judge(_read_until_closed(sock, time.monotonic() + CASE_DEADLINE))
    except AssertionError as exc:
        raise AssertionError(f"{description}: {exc}") from exc
    node.stored.update(reply.stored)
    return reply


def _run(node: HostileNode, cases: range) -> dict[int, int]:
    seen: dict[int, int] = {}
    for n, case in enumerate(cases, start=1):
        reply = run_case(node, case)
        for pdu_type in reply.pdu_types:
            seen[pdu_type] = seen.get(pdu_type, 0) + 1
        if n % CHECK_EVERY == 0:
            node.check()
    return seen


def test_mutations_are_deterministic() -> None:
    """The same case number always yields the same bytes (failures are reproducible)."""
    assert [mutate(c)[1] for c in range(30)] == [mutate(c)[1] for c in range(30)]
    assert len({b"".join(mutate(c)[1]) for c in range(30)}) == 30


@pytest.mark.slow
def test_fuzz_bounded(node: HostileNode) -> None:
    """A bounded number of mutated cases (the CI run): every reply well-formed and in time,
    invariants every 20 cases; the mutations reach both the association and DIMSE levels."""
    started = time.monotonic()
    seen = _run(node, range(DEFAULT_CASES))
    assert seen.get(P.A_ASSOCIATE_AC, 0) > 0 and seen.get(P.A_ABORT, 0) > 0, seen
    assert seen.get(P.P_DATA_TF, 0) > 0, seen
    assert time.monotonic() - started < 90


@pytest.mark.ondemand
@pytest.mark.timeout(3600)
def test_fuzz_long(node: HostileNode) -> None:
    """Many more mutated cases (on demand: --ondemand), same judgement and invariants."""
    _run(node, range(DEFAULT_CASES, DEFAULT_CASES + ONDEMAND_CASES))
