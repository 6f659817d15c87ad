"""Which routes an instance matches, and for those it does not, the first condition that failed.

Pure: the facts come from what the receive path already read (``facts_from_values``); the
route's patterns were compiled when the route set was loaded. ``decide`` is the hot path (a few
set lookups and at most one regular expression per ``tags:`` entry); ``explain`` is the same
evaluation with the reasons spelled out (``ctnode routes test``).

Conditions are checked in this order: enabled, retrieved (``include_retrieved``), calling_ae,
modality, sop_class, tags (in the file's order). Values: Modality and AE titles compare exactly
(Modality upper-cased); ``tags:`` patterns are case-insensitive, ``*`` any run, ``?`` one
character, matched against the whole value or any one of its backslash-separated values; an
attribute the instance lacks has the empty value (only ``*`` matches it).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ctnode.routing.rules import Route, TagCondition

_NUMBER_FORMATS = {"US": "<H", "SS": "<h", "UL": "<L", "SL": "<l", "FL": "<f", "FD": "<d"}


@dataclass(frozen=True, slots=True)
class InstanceFacts:
    """What routing knows about a stored instance."""

    calling_ae: str | None
    sop_class_uid: str
    modality: str | None
    #: Arrived as a sub-operation of one of ctnode's own move jobs.
    retrieved: bool
    #: Values of the tags the routes read (absent: the instance lacks the attribute).
    values: Mapping[int, str]


@dataclass(frozen=True, slots=True)
class Verdict:
    """One route's answer for one instance (``explain``)."""

    route: str
    matched: bool
    #: Why not (the first failed condition), or None.
    reason: str | None
    #: Destinations it would be forwarded to (the sender excluded).
    destinations: tuple[str, ...]
    #: Destinations left out because the instance came from them.
    skipped_senders: tuple[str, ...] = ()


def number_text(raw: bytes, vr: str) -> str:
    """A binary number value (little endian) as text; several values joined by backslashes."""
    fmt = _NUMBER_FORMATS[vr]
    size = struct.calcsize(fmt)
    values = [struct.unpack_from(fmt, raw, off)[0] for off in range(0, len(raw) - size + 1, size)]
    return "\\".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def _tag_holds(condition: TagCondition, value: str) -> bool:
    if condition.regex.fullmatch(value):
        return True
    return "\\" in value and any(condition.regex.fullmatch(v) for v in value.split("\\"))


def first_failure(route: Route, facts: InstanceFacts) -> str | None:
    """The first condition of *route* that *facts* fail, said for an admin; None if all hold."""
    config = route.config
    if not config.enabled:
        return "the route is disabled (enabled: false)"
    if facts.retrieved and not config.include_retrieved:
        return "retrieved by one of ctnode's move jobs (include_retrieved: false)"
    if route.calling_ae and facts.calling_ae not in route.calling_ae:
        return (
            f"calling_ae: {facts.calling_ae or '(none)'} is not one of "
            f"{', '.join(config.match.calling_ae)}"
        )
    if route.modality and (facts.modality or "").upper() not in route.modality:
        return f"modality: {facts.modality or '(none)'} is not one of {', '.join(route.modality)}"
    if route.sop_class and facts.sop_class_uid not in route.sop_class:
        return f"sop_class: {facts.sop_class_uid} is not one of {', '.join(config.match.sop_class)}"
    for condition in route.tags:
        value = facts.values.get(condition.tag, "")
        if not _tag_holds(condition, value):
            shown = repr(value) if value else "(absent or empty)"
            return (
                f"tags.{condition.key}: {shown} matches none of "
                f"{', '.join(repr(p) for p in condition.patterns)}"
            )
    return None


def _accepts(route: Route, facts: InstanceFacts) -> bool:
    """``first_failure(...) is None`` without building any message (the receive path)."""
    config = route.config
    if facts.retrieved and not config.include_retrieved:
        return False
    if route.calling_ae and facts.calling_ae not in route.calling_ae:
        return False
    if route.modality and (facts.modality or "").upper() not in route.modality:
        return False
    if route.sop_class and facts.sop_class_uid not in route.sop_class:
        return False
    return all(_tag_holds(c, facts.values.get(c.tag, "")) for c in route.tags)


def _split_senders(route: Route, calling_ae: str | None) -> tuple[list[str], list[str]]:
    keep: list[str] = []
    senders: list[str] = []
    for dest in route.destinations:
        (senders if route.destination_aes.get(dest) == calling_ae else keep).append(dest)
    return keep, senders


def decide(routes: Sequence[Route], facts: InstanceFacts) -> list[tuple[Route, str]]:
    """(route, destination) pairs to forward the instance to: *routes* are the enabled ones,
    by name; a destination already served by an earlier route is not added again, and the
    peer the instance came from never is."""
    out: list[tuple[Route, str]] = []
    taken: set[str] = set()
    for route in routes:
        if not _accepts(route, facts):
            continue
        for dest in route.destinations:
            if dest in taken or route.destination_aes.get(dest) == facts.calling_ae:
                continue
            taken.add(dest)
            out.append((route, dest))
    return out


def explain(routes: Sequence[Route], facts: InstanceFacts) -> list[Verdict]:
    """Every route's verdict on *facts* (disabled routes included), by name."""
    verdicts: list[Verdict] = []
    for route in routes:
        reason = first_failure(route, facts)
        if reason is not None:
            verdicts.append(Verdict(route.name, False, reason, ()))
            continue
        keep, senders = _split_senders(route, facts.calling_ae)
        verdicts.append(Verdict(route.name, True, None, tuple(keep), tuple(senders)))
    return verdicts
