"""Inbound message reassembly (``ul.reassembly``): which PDV may come when, and the bounds."""

from __future__ import annotations

import pytest

from ctnode.ul import pdu as P
from ctnode.ul.dimse import C_ECHO_RQ, C_STORE_RQ, encode_command
from ctnode.ul.limits import MAX_COMMAND_BYTES
from ctnode.ul.reassembly import DatasetTooLarge, FragmentError, Reassembly


def _command(field: int, *, dataset: bool) -> memoryview:
    return memoryview(
        encode_command(
            {
                "AffectedSOPClassUID": "1.2.840.10008.1.1",
                "CommandField": field,
                "MessageID": 1,
                "CommandDataSetType": 0x0000 if dataset else 0x0101,
            }
        )
    )


def test_a_command_in_fragments_then_its_data_set() -> None:
    """A command split over two fragments decodes at the last one; the data set it announces
    may then come, on the same context, and the assembly is idle again after its last part."""
    raw = _command(C_STORE_RQ, dataset=True)
    messages = Reassembly()
    assert messages.idle
    assert messages.command_fragment(1, raw[:10], last=False) is None
    assert not messages.idle
    command = messages.command_fragment(1, raw[10:], last=True)
    assert command is not None and command.field == C_STORE_RQ and command.has_dataset
    messages.expect_dataset(1, None)
    assert messages.expecting_dataset and not messages.idle
    messages.dataset_fragment(1, 1 << 30, last=False)  # unbounded: a C-STORE streams to disk
    messages.dataset_fragment(1, 10, last=True)
    assert messages.idle and not messages.expecting_dataset


def _play(messages: Reassembly, raw: memoryview, step: str) -> None:
    """One step of a scenario: ``kind:context`` (context 1 if left out)."""
    kind, _, context = step.partition(":")
    context_id = int(context or 1)
    if kind == "data":
        messages.dataset_fragment(context_id, 2, last=True)
    elif kind == "command-first":
        messages.command_fragment(context_id, raw[:10], last=False)
    elif kind == "command-last":
        messages.command_fragment(context_id, raw[10:], last=True)
    else:  # a whole command announcing a data set
        messages.command_fragment(context_id, raw, last=True)
        messages.expect_dataset(context_id, None)


@pytest.mark.parametrize(
    ("steps", "reason"),
    [
        (["data"], P.ABORT_UNEXPECTED_PDU),  # data set without a command
        (["command-first:1", "command-last:3"], P.ABORT_INVALID_PARAMETER),  # two contexts
        (["command+data:1", "command-last:1"], P.ABORT_UNEXPECTED_PDU),  # command inside data
        (["command+data:1", "data:3"], P.ABORT_UNEXPECTED_PDU),  # data on another context
    ],
    ids=["data-first", "command-on-two-contexts", "command-in-data-set", "data-elsewhere"],
)
def test_fragments_out_of_order_are_refused(steps: list[str], reason: int) -> None:
    """PS3.8 Annex E order: command fragments on one context, then its data set on the same
    context; anything else is a FragmentError carrying the A-ABORT reason to send."""
    raw = _command(C_STORE_RQ, dataset=True)
    messages = Reassembly()
    for step in steps[:-1]:
        _play(messages, raw, step)
    with pytest.raises(FragmentError) as caught:
        _play(messages, raw, steps[-1])
    assert caught.value.reason == reason


def test_command_set_bound() -> None:
    """A command set growing past MAX_COMMAND_BYTES is refused at the crossing fragment (2/6),
    before anything is decoded."""
    messages = Reassembly()
    messages.command_fragment(1, memoryview(bytes(MAX_COMMAND_BYTES)), last=False)
    with pytest.raises(FragmentError) as caught:
        messages.command_fragment(1, memoryview(b"\x00\x00"), last=False)
    assert caught.value.reason == P.ABORT_INVALID_PARAMETER
    assert str(MAX_COMMAND_BYTES) in str(caught.value)


def test_data_set_bound() -> None:
    """A bounded data set is refused at the fragment that takes it past the limit."""
    messages = Reassembly()
    messages.command_fragment(1, _command(C_ECHO_RQ, dataset=True), last=True)
    messages.expect_dataset(1, 100)
    messages.dataset_fragment(1, 100, last=False)
    with pytest.raises(DatasetTooLarge) as caught:
        messages.dataset_fragment(1, 2, last=False)
    assert caught.value.limit == 100
    assert caught.value.reason == P.ABORT_INVALID_PARAMETER


def test_a_command_without_data_set_leaves_the_assembly_idle() -> None:
    """A command that announces no data set completes the message: the next one may begin."""
    messages = Reassembly()
    command = messages.command_fragment(3, _command(C_ECHO_RQ, dataset=False), last=True)
    assert command is not None and not command.has_dataset
    assert messages.idle
    assert messages.command_fragment(5, _command(C_ECHO_RQ, dataset=False), last=True)
