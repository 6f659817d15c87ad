"""An incoming N-ACTION-RQ (Request Storage Commitment) checked against PS3.4 J.3.2. Pure.

N-ACTION-RSP failure statuses (PS3.7 10.1.4.1.10; the Error Comment says what is wrong):

* 0x0118 no such SOP class — Requested SOP Class UID is not Storage Commitment Push Model
* 0x0112 no such SOP instance — Requested SOP Instance UID is not the well-known instance
  1.2.840.10008.1.20.1.1
* 0x0123 no such action — Action Type ID other than 1
* 0x0115 invalid argument value — no valid Transaction UID; no, an empty, or an item without
  valid UIDs in the Referenced SOP Sequence
* 0x0110 processing failure — the action information cannot be decoded
* 0x0213 resource limitation — more instances than ctnode takes in one request
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ctnode.dicom.commitment_messages import (
    ACTION_REQUEST_COMMITMENT,
    ActionError,
    CommitmentAction,
    parse_action,
)
from ctnode.dicom.contexts import STORAGE_COMMITMENT_PUSH, STORAGE_COMMITMENT_PUSH_INSTANCE

NO_SUCH_SOP_CLASS = 0x0118
NO_SUCH_SOP_INSTANCE = 0x0112
NO_SUCH_ACTION = 0x0123


@dataclass(frozen=True, slots=True)
class Refusal:
    """The N-ACTION-RSP failure to answer, and why (the Error Comment and the log)."""

    status: int
    reason: str


def check_command(fields: Mapping[str, object]) -> Refusal | None:
    """Why the N-ACTION command cannot be a storage commitment request (None: it can)."""
    if fields.get("RequestedSOPClassUID") != STORAGE_COMMITMENT_PUSH:
        return Refusal(
            NO_SUCH_SOP_CLASS,
            f"Requested SOP Class UID {fields.get('RequestedSOPClassUID')!r} is not Storage "
            f"Commitment Push Model ({STORAGE_COMMITMENT_PUSH})",
        )
    if fields.get("RequestedSOPInstanceUID") != STORAGE_COMMITMENT_PUSH_INSTANCE:
        return Refusal(
            NO_SUCH_SOP_INSTANCE,
            f"Requested SOP Instance UID {fields.get('RequestedSOPInstanceUID')!r} is not the "
            f"well-known instance {STORAGE_COMMITMENT_PUSH_INSTANCE}",
        )
    if fields.get("ActionTypeID") != ACTION_REQUEST_COMMITMENT:
        return Refusal(
            NO_SUCH_ACTION,
            f"Action Type ID {fields.get('ActionTypeID')!r} is not 1 (Request Storage Commitment)",
        )
    return None


def read_request(
    fields: Mapping[str, object], dataset: bytes, transfer_syntax: str
) -> CommitmentAction | Refusal:
    """The request an N-ACTION carries, or the failure to answer it with."""
    refusal = check_command(fields)
    if refusal is not None:
        return refusal
    try:
        return parse_action(dataset, transfer_syntax)
    except ActionError as exc:
        return Refusal(exc.status, str(exc))
