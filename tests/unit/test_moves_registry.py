"""The in-process registry that attributes C-STOREs to the C-MOVE that caused them."""

from __future__ import annotations

from types import SimpleNamespace

from ctnode.move_registry import MoveRegistry
from ctnode.ul.dimse import Command


def _cmd(**fields: object) -> Command:
    return Command(CommandField=0x0001, **fields)  # type: ignore[arg-type]


def test_registry_matching_rules() -> None:
    """Arrivals are attributed by originator message ID and AE (or the storing PACS when a
    SCP puts its own AE in the originator field), or by the storing AE when it is the only
    active move to that PACS and the command carries no originator; nothing after `end`."""
    registry = MoveRegistry(seed=1)
    one = registry.begin(1, calling_ae="CTNODE", peer_ae="PACS")
    two = registry.begin(2, calling_ae="CTNODE", peer_ae="OTHER")
    assert one.message_id != two.message_id
    assert registry.match("PACS", "CTNODE", one.message_id) is one
    assert registry.match("PACS", "PACS", one.message_id) is one  # pynetdicom style
    assert registry.match("THIRD", "THIRD", one.message_id) is None
    assert registry.match("PACS", "CTNODE", 0) is None  # IDs are 1..65535
    assert registry.match("OTHER", None, None) is two
    info = SimpleNamespace(calling_ae="PACS")
    registry.note(
        info,
        _cmd(
            AffectedSOPClassUID="1.2.840.10008.5.1.4.1.1.2",
            AffectedSOPInstanceUID="1.2.3.4",
            MoveOriginatorApplicationEntityTitle="CTNODE",
            MoveOriginatorMessageID=one.message_id,
        ),
        "stored",
    )
    arrivals = one.drain()
    assert [(a.sop_instance_uid, a.outcome) for a in arrivals] == [("1.2.3.4", "stored")]
    assert one.drain() == [] and one.total == 1
    registry.end(one)
    assert registry.match("PACS", "CTNODE", one.message_id) is None
    assert registry.active == 1


def test_registry_ambiguous_without_originator() -> None:
    """Two moves from the same PACS and a C-STORE without originator: not attributed."""
    registry = MoveRegistry(seed=2)
    registry.begin(1, calling_ae="CTNODE", peer_ae="PACS")
    registry.begin(2, calling_ae="CTNODE", peer_ae="PACS")
    assert registry.match("PACS", None, None) is None


def test_registry_message_ids_unique_and_wrap() -> None:
    """Message IDs stay in 1..65535 and are unique among active moves."""
    registry = MoveRegistry(seed=3)
    ids = {registry.begin(n, calling_ae="A", peer_ae="B").message_id for n in range(1000)}
    assert len(ids) == 1000 and all(1 <= i <= 65535 for i in ids)


def test_owns_tells_the_receive_path_which_stores_are_retrievals() -> None:
    """`owns` (asked before storing, so routing can skip retrieved instances) is true for a
    C-STORE of an active move and false otherwise, without taking the arrival."""
    registry = MoveRegistry(seed=2)
    info = SimpleNamespace(calling_ae="PACS")
    plain = _cmd(AffectedSOPInstanceUID="1.2.3")
    assert not registry.owns(info, plain)  # no move running
    move = registry.begin(1, calling_ae="CTNODE", peer_ae="PACS")
    ours = _cmd(
        MoveOriginatorApplicationEntityTitle="CTNODE", MoveOriginatorMessageID=move.message_id
    )
    assert registry.owns(info, ours)
    assert registry.owns(info, plain)  # the only move to that PACS, no originator fields
    assert not registry.owns(SimpleNamespace(calling_ae="SCANNER"), plain)
    assert move.drain() == []
    registry.end(move)
    assert not registry.owns(info, ours)
