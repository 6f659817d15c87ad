"""Hypothesis strategies for the differential conformance suite (ctnode vs pynetdicom's codec).

Values are *valid* per PS3.8 section 9.3 and PS3.7 Annex D / section 9.3: the suite checks that
both codecs agree on what a conformant peer sends, not how they treat garbage (that is
``tests/adversarial``). Presentation context IDs are odd and unique (PS3.8 9.3.2.2).

The sub-items ctnode does not model (SOP class extended and common extended negotiation, user
identity) are described by the small values below and encoded here by hand, field by field from
PS3.7 D.3.3.5-D.3.3.7, so neither codec under test is the reference for them.
"""

from __future__ import annotations

import string
import struct
from dataclasses import dataclass

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from ctnode.ul import pdu as P
from ctnode.ul.dimse import HAS_DATASET, NO_DATASET, CommandValue

# ----------------------------------------------------------------- budget

_SCALE = {"factor": 1}


def set_ondemand(on: bool) -> None:
    """Called by the conftest: ``--ondemand`` runs ten times as many examples."""
    _SCALE["factor"] = 10 if on else 1


def budget(max_examples: int) -> settings:
    """Settings of one differential test: deterministic, no example database, no deadline
    (the machine is shared and loaded; a slow example is not a wrong one)."""
    return settings(
        max_examples=max_examples * _SCALE["factor"],
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# ----------------------------------------------------------------- values

#: PS3.5 AE: 1-16 characters of the default repertoire, no control characters, no backslash.
_AE_CHARS = "".join(c for c in string.printable if c.isprintable() and c != "\\")


@st.composite
def ae_titles(draw: st.DrawFn) -> str:
    """An AE title; leading and trailing spaces are allowed and not significant (PS3.5 6.2)."""
    return draw(
        st.text(alphabet=_AE_CHARS, min_size=1, max_size=16).filter(lambda s: bool(s.strip()))
    )


_COMPONENT = st.one_of(
    st.just("0"),
    st.integers(min_value=1, max_value=10**12).map(str),
)


@st.composite
def uids(draw: st.DrawFn) -> str:
    """A valid UID (PS3.5 9.1): digit components without leading zeros, 64 characters at most."""
    parts = draw(st.lists(_COMPONENT, min_size=2, max_size=12))
    uid = ".".join(parts)
    while len(uid) > 64:
        parts.pop()
        uid = ".".join(parts)
    return uid


#: Transfer syntaxes a peer typically proposes, plus arbitrary valid UIDs.
transfer_syntax_uids = st.one_of(
    st.sampled_from(
        [
            "1.2.840.10008.1.2",
            "1.2.840.10008.1.2.1",
            "1.2.840.10008.1.2.2",
            "1.2.840.10008.1.2.4.50",
            "1.2.840.10008.1.2.4.70",
            "1.2.840.10008.1.2.4.90",
            "1.2.840.10008.1.2.5",
        ]
    ),
    uids(),
)

#: Implementation Version Name (PS3.7 D.3.3.2.3): 1-16 characters of the AE repertoire. Edge
#: spaces are left out: both codecs treat the value like an AE title, where they are not
#: significant, so a trimmed value is the same name.
version_names = st.text(alphabet=_AE_CHARS, min_size=1, max_size=16).map(str.strip).filter(bool)

u16 = st.integers(min_value=0, max_value=0xFFFF)
u32 = st.integers(min_value=0, max_value=0xFFFFFFFF)


def context_ids(count: int) -> st.SearchStrategy[list[int]]:
    """*count* unique odd presentation context IDs 1-255, in any order."""
    return st.lists(
        st.integers(min_value=0, max_value=127).map(lambda n: 2 * n + 1),
        min_size=count,
        max_size=count,
        unique=True,
    )


# ------------------------------------------------- sub-items ctnode keeps raw


@dataclass(frozen=True, slots=True)
class ExtendedNegotiation:
    """SOP Class Extended Negotiation sub-item 0x56 (PS3.7 D.3.3.5)."""

    sop_class_uid: str
    application_information: bytes

    def raw(self) -> bytes:
        uid = self.sop_class_uid.encode("ascii")
        return struct.pack(">H", len(uid)) + uid + self.application_information


@dataclass(frozen=True, slots=True)
class CommonExtendedNegotiation:
    """SOP Class Common Extended Negotiation sub-item 0x57 (PS3.7 D.3.3.6), version 0."""

    sop_class_uid: str
    service_class_uid: str
    related_general: tuple[str, ...]

    def raw(self) -> bytes:
        def field(uid: str) -> bytes:
            return struct.pack(">H", len(uid)) + uid.encode("ascii")

        related = b"".join(field(uid) for uid in self.related_general)
        return (
            field(self.sop_class_uid)
            + field(self.service_class_uid)
            + struct.pack(">H", len(related))
            + related
        )


@dataclass(frozen=True, slots=True)
class UserIdentityRQ:
    """User Identity Negotiation sub-item 0x58 of an A-ASSOCIATE-RQ (PS3.7 D.3.3.7.1)."""

    identity_type: int
    positive_response_requested: bool
    primary: bytes
    secondary: bytes

    def raw(self) -> bytes:
        return (
            bytes([self.identity_type, int(self.positive_response_requested)])
            + struct.pack(">H", len(self.primary))
            + self.primary
            + struct.pack(">H", len(self.secondary))
            + self.secondary
        )


@dataclass(frozen=True, slots=True)
class UserIdentityAC:
    """User Identity Negotiation sub-item 0x59 of an A-ASSOCIATE-AC (PS3.7 D.3.3.7.2)."""

    server_response: bytes

    def raw(self) -> bytes:
        return struct.pack(">H", len(self.server_response)) + self.server_response


Unmodelled = ExtendedNegotiation | CommonExtendedNegotiation | UserIdentityRQ | UserIdentityAC

#: Sub-item type of each unmodelled value.
SUB_ITEM_TYPE: dict[type, int] = {
    ExtendedNegotiation: 0x56,
    CommonExtendedNegotiation: 0x57,
    UserIdentityRQ: 0x58,
    UserIdentityAC: 0x59,
}

extended_negotiations = st.builds(ExtendedNegotiation, uids(), st.binary(min_size=1, max_size=32))
common_extended_negotiations = st.builds(
    CommonExtendedNegotiation,
    uids(),
    uids(),
    st.lists(uids(), max_size=3).map(tuple),
)


@st.composite
def user_identities_rq(draw: st.DrawFn) -> UserIdentityRQ:
    """Types 1-5; the secondary field only with type 2 (username and passcode)."""
    identity_type = draw(st.integers(min_value=1, max_value=5))
    secondary = draw(st.binary(min_size=1, max_size=32)) if identity_type == 2 else b""
    return UserIdentityRQ(
        identity_type, draw(st.booleans()), draw(st.binary(min_size=1, max_size=64)), secondary
    )


user_identities_ac = st.builds(UserIdentityAC, st.binary(min_size=1, max_size=64))


# ------------------------------------------------------ A-ASSOCIATE-RQ / AC


@dataclass(slots=True)
class Negotiation:
    """One generated A-ASSOCIATE-RQ or -AC: ctnode's value plus what ctnode does not model.

    ``sub_item_order`` is a permutation of the user information sub-items as pynetdicom lays
    them out (the order is not fixed by PS3.8 9.3.2.3 beyond the listing; a decoder must not
    depend on it): indexes into ``[max length, class UID, async, *roles, version, *unmodelled]``.
    """

    rq: P.AssociateRQ | P.AssociateAC
    unmodelled: list[Unmodelled]
    sub_item_order: list[int]


def _sop_class(value: ExtendedNegotiation | CommonExtendedNegotiation) -> str:
    """One extended negotiation sub-item per SOP class (PS3.7 D.3.3.5, D.3.3.6)."""
    return value.sop_class_uid


@st.composite
def user_information(
    draw: st.DrawFn, *, request: bool
) -> tuple[P.UserInformation, list[Unmodelled]]:
    """A user information item with every sub-item PS3.7 Annex D defines, each optional
    except maximum length and implementation class UID."""
    roles = draw(st.lists(uids(), max_size=4, unique=True))
    info = P.UserInformation(
        max_pdu_length=draw(u32),
        implementation_class_uid=draw(uids()),
        implementation_version_name=draw(st.one_of(st.just(""), version_names)),
        roles=[P.RoleSelection(uid, draw(st.booleans()), draw(st.booleans())) for uid in roles],
        async_ops=draw(st.one_of(st.none(), st.tuples(u16, u16))),
    )
    extended: list[ExtendedNegotiation] = draw(
        st.lists(extended_negotiations, max_size=2, unique_by=_sop_class)
    )
    unmodelled: list[Unmodelled] = list(extended)
    if request:
        common: list[CommonExtendedNegotiation] = draw(
            st.lists(common_extended_negotiations, max_size=2, unique_by=_sop_class)
        )
        unmodelled += common
        unmodelled += draw(st.lists(user_identities_rq(), max_size=1))
    else:
        unmodelled += draw(st.lists(user_identities_ac, max_size=1))
    info.other = [(SUB_ITEM_TYPE[type(x)], x.raw()) for x in unmodelled]
    return info, unmodelled


def _sub_item_count(info: P.UserInformation) -> int:
    return (
        2
        + (info.async_ops is not None)
        + len(info.roles)
        + bool(info.implementation_version_name)
        + len(info.other)
    )


@st.composite
def associate_rqs(draw: st.DrawFn, max_contexts: int = 24) -> Negotiation:
    """An A-ASSOCIATE-RQ (PS3.8 9.3.2) with 1..max_contexts presentation contexts."""
    count = draw(st.integers(min_value=1, max_value=max_contexts))
    contexts = [
        P.PresentationContextRQ(
            context_id,
            draw(uids()),
            tuple(draw(st.lists(transfer_syntax_uids, min_size=1, max_size=5, unique=True))),
        )
        for context_id in draw(context_ids(count))
    ]
    info, unmodelled = draw(user_information(request=True))
    rq = P.AssociateRQ(
        called_ae=draw(ae_titles()),
        calling_ae=draw(ae_titles()),
        protocol_version=draw(st.one_of(st.just(1), st.integers(1, 0xFFFF))),
        application_context=draw(st.one_of(st.just(P.APPLICATION_CONTEXT), uids())),
        contexts=contexts,
        user=info,
    )
    order = draw(st.permutations(range(_sub_item_count(info))))
    return Negotiation(rq, unmodelled, list(order))


@st.composite
def associate_acs(draw: st.DrawFn, max_contexts: int = 24) -> Negotiation:
    """An A-ASSOCIATE-AC (PS3.8 9.3.3): each context accepted (0) or refused (1-4). A refused
    context's transfer syntax is not significant (PS3.8 9.3.3.2); ``""`` stands for a peer that
    leaves the sub-item out."""
    count = draw(st.integers(min_value=1, max_value=max_contexts))
    contexts = []
    for context_id in draw(context_ids(count)):
        result = draw(st.integers(min_value=0, max_value=4))
        absent = st.just("") if result else st.nothing()
        syntax = draw(st.one_of(transfer_syntax_uids, absent))
        contexts.append(P.PresentationContextAC(context_id, result, syntax))
    info, unmodelled = draw(user_information(request=False))
    ac = P.AssociateAC(
        called_ae=draw(ae_titles()),
        calling_ae=draw(ae_titles()),
        protocol_version=draw(st.one_of(st.just(1), st.integers(1, 0xFFFF))),
        application_context=draw(st.one_of(st.just(P.APPLICATION_CONTEXT), uids())),
        contexts=contexts,
        user=info,
    )
    order = draw(st.permutations(range(_sub_item_count(info))))
    return Negotiation(ac, unmodelled, list(order))


# ------------------------------------------------------ RJ, ABORT, P-DATA

#: (result, source, reason) combinations of PS3.8 Table 9-21.
associate_rjs = st.tuples(
    st.sampled_from([P.RJ_PERMANENT, P.RJ_TRANSIENT]),
    st.sampled_from([(1, r) for r in (1, 2, 3, 7)] + [(2, 1), (2, 2), (3, 1), (3, 2)]),
).map(lambda t: (t[0], t[1][0], t[1][1]))

#: (source, reason) of PS3.8 Table 9-26: the reason is significant only from the provider.
aborts = st.one_of(
    st.just((P.ABORT_SOURCE_USER, 0)),
    st.tuples(st.just(P.ABORT_SOURCE_PROVIDER), st.sampled_from([0, 1, 2, 4, 5, 6])),
)

#: One PDV (PS3.8 9.3.5.1 and Annex E): (context ID, is command, is last, data).
pdvs = st.tuples(
    st.integers(min_value=0, max_value=127).map(lambda n: 2 * n + 1),
    st.booleans(),
    st.booleans(),
    st.binary(max_size=256),
)


# ------------------------------------------------------ DIMSE command sets

uid_values = uids()
ae_values = ae_titles()
#: LO (PS3.5 6.2): up to 64 characters, no backslash, no control characters; edge spaces are
#: not significant.
error_comments = st.text(alphabet=_AE_CHARS, min_size=1, max_size=64).filter(
    lambda s: bool(s.strip())
)
tags = st.integers(min_value=0, max_value=0xFFFFFFFF)

#: keyword -> strategy of its value, for every element a command of PS3.7 section 9.3/10.3 uses.
ELEMENT_VALUES: dict[str, st.SearchStrategy[CommandValue]] = {
    "AffectedSOPClassUID": uid_values,
    "RequestedSOPClassUID": uid_values,
    "MessageID": u16,
    "MessageIDBeingRespondedTo": u16,
    "MoveDestination": ae_values,
    "Priority": st.sampled_from([0, 1, 2]),
    "Status": u16,
    "OffendingElement": st.lists(tags, min_size=1, max_size=3).map(tuple),
    "ErrorComment": error_comments,
    "ErrorID": u16,
    "AffectedSOPInstanceUID": uid_values,
    "RequestedSOPInstanceUID": uid_values,
    "EventTypeID": u16,
    "ActionTypeID": u16,
    "NumberOfRemainingSuboperations": u16,
    "NumberOfCompletedSuboperations": u16,
    "NumberOfFailedSuboperations": u16,
    "NumberOfWarningSuboperations": u16,
    "MoveOriginatorApplicationEntityTitle": ae_values,
    "MoveOriginatorMessageID": u16,
}


@dataclass(frozen=True, slots=True)
class CommandSpec:
    """A DIMSE message ctnode sends or receives: its required and optional elements (beyond
    CommandField and CommandDataSetType) and whether it may carry a data set."""

    name: str
    field: int
    required: tuple[str, ...]
    optional: tuple[str, ...] = ()
    dataset: bool | None = None  # None: either


_RSP_ERRORS = ("OffendingElement", "ErrorComment")
_SUBOPS = (
    "NumberOfRemainingSuboperations",
    "NumberOfCompletedSuboperations",
    "NumberOfFailedSuboperations",
    "NumberOfWarningSuboperations",
)

#: PS3.7 Tables 9.3-1 to 9.3-20 and 10.3-1 to 10.3-4, as far as ctnode uses them.
COMMANDS: tuple[CommandSpec, ...] = (
    CommandSpec("C-ECHO-RQ", 0x0030, ("AffectedSOPClassUID", "MessageID"), dataset=False),
    CommandSpec(
        "C-ECHO-RSP",
        0x8030,
        ("AffectedSOPClassUID", "MessageIDBeingRespondedTo", "Status"),
        ("ErrorComment",),
        dataset=False,
    ),
    CommandSpec(
        "C-STORE-RQ",
        0x0001,
        ("AffectedSOPClassUID", "MessageID", "Priority", "AffectedSOPInstanceUID"),
        ("MoveOriginatorApplicationEntityTitle", "MoveOriginatorMessageID"),
        dataset=True,
    ),
    CommandSpec(
        "C-STORE-RSP",
        0x8001,
        ("AffectedSOPClassUID", "MessageIDBeingRespondedTo", "Status", "AffectedSOPInstanceUID"),
        _RSP_ERRORS,
        dataset=False,
    ),
    CommandSpec(
        "C-FIND-RQ", 0x0020, ("AffectedSOPClassUID", "MessageID", "Priority"), dataset=True
    ),
    CommandSpec(
        "C-FIND-RSP",
        0x8020,
        ("AffectedSOPClassUID", "MessageIDBeingRespondedTo", "Status"),
        _RSP_ERRORS,
    ),
    CommandSpec("C-GET-RQ", 0x0010, ("AffectedSOPClassUID", "MessageID", "Priority"), dataset=True),
    CommandSpec(
        "C-GET-RSP",
        0x8010,
        ("AffectedSOPClassUID", "MessageIDBeingRespondedTo", "Status"),
        _SUBOPS + _RSP_ERRORS,
    ),
    CommandSpec(
        "C-MOVE-RQ",
        0x0021,
        ("AffectedSOPClassUID", "MessageID", "Priority", "MoveDestination"),
        dataset=True,
    ),
    CommandSpec(
        "C-MOVE-RSP",
        0x8021,
        ("AffectedSOPClassUID", "MessageIDBeingRespondedTo", "Status"),
        _SUBOPS + _RSP_ERRORS,
    ),
    CommandSpec("C-CANCEL-RQ", 0x0FFF, ("MessageIDBeingRespondedTo",), dataset=False),
    CommandSpec(
        "N-ACTION-RQ",
        0x0130,
        ("MessageID", "RequestedSOPClassUID", "RequestedSOPInstanceUID", "ActionTypeID"),
    ),
    CommandSpec(
        "N-ACTION-RSP",
        0x8130,
        ("MessageIDBeingRespondedTo", "Status"),
        (
            "AffectedSOPClassUID",
            "AffectedSOPInstanceUID",
            "ActionTypeID",
            "ErrorComment",
            "ErrorID",
        ),
    ),
    CommandSpec(
        "N-EVENT-REPORT-RQ",
        0x0100,
        ("MessageID", "AffectedSOPClassUID", "AffectedSOPInstanceUID", "EventTypeID"),
    ),
    CommandSpec(
        "N-EVENT-REPORT-RSP",
        0x8100,
        ("MessageIDBeingRespondedTo", "Status"),
        ("AffectedSOPClassUID", "AffectedSOPInstanceUID", "EventTypeID", "ErrorComment", "ErrorID"),
    ),
)


@st.composite
def command_fields(draw: st.DrawFn, spec: CommandSpec) -> dict[str, CommandValue]:
    """The fields of one *spec* command, as ctnode's ``encode_command`` takes them."""
    fields: dict[str, CommandValue] = {"CommandField": spec.field}
    for keyword in spec.required:
        fields[keyword] = draw(ELEMENT_VALUES[keyword])
    for keyword in spec.optional:
        if draw(st.booleans()):
            fields[keyword] = draw(ELEMENT_VALUES[keyword])
    has_dataset = spec.dataset if spec.dataset is not None else draw(st.booleans())
    # Any value but 0x0101 means a data set follows (PS3.7 E.1-1): ctnode sends 0x0000,
    # pynetdicom 0x0001.
    fields["CommandDataSetType"] = (
        draw(st.sampled_from([HAS_DATASET, 0x0001, 0xFEFE])) if has_dataset else NO_DATASET
    )
    return fields
