"""The routing decision made at ingest: a ``route_arrivals`` row committed with the instance row.

``RouteHolder`` is the store's ``Decisions`` (``storage.rows``): it holds the current route set
(swapped whole on reload), tells the scan which extra tags the routes read, and turns a scanned
instance into its arrival: one row listing every destination it goes to (``routing.arrivals``;
the forwarder expands it into ``route_matches`` rows, state ``pending``, off the receive path).
It costs the receive path a few dictionary and set lookups per route (patterns were compiled
when the routes were loaded) and no database round trip: the row goes into the instance row's
transaction, all arrivals of a group commit in one driver-level ``executemany``
(``storage.rows.PreparedInsert``).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from ctnode.db.types import utcnow
from ctnode.dicom import scan as tags
from ctnode.dicom.scan import ScanResult
from ctnode.dicom.text import decode_text
from ctnode.logs import get_logger
from ctnode.routing import arrivals
from ctnode.routing.arrivals import Decision
from ctnode.routing.match import InstanceFacts, decide, number_text
from ctnode.routing.rules import Route, RouteSet
from ctnode.storage.values import StoreRequest

log = get_logger("ctnode.routing")

#: Outcomes whose ``decisions`` column a route set keeps encoded.
_ENCODED_MAX = 256


def facts_from_values(
    values: Mapping[int, bytes],
    *,
    calling_ae: str | None,
    sop_class_uid: str,
    retrieved: bool,
    read: tuple[tuple[int, str | None], ...],
) -> InstanceFacts:
    """The facts routing matches on, from a scan's raw top-level values; *read* lists the tags
    the routes read with the VR of the binary numbers among them (None: text)."""
    charset = values.get(tags.SPECIFIC_CHARACTER_SET)
    found: dict[int, str] = {}
    for tag, numeric in read:
        raw = values.get(tag)
        if raw is None:
            continue
        if numeric is not None:
            found[tag] = number_text(raw, numeric)
        elif raw.isascii() and b"\x1b" not in raw:
            # ASCII without ISO 2022 escapes reads the same in every DICOM character set
            found[tag] = raw.decode("ascii").strip("\x00 ")
        else:
            found[tag] = decode_text(raw, charset) or ""
    modality = values.get(tags.MODALITY)
    return InstanceFacts(
        calling_ae=calling_ae,
        sop_class_uid=sop_class_uid,
        modality=modality.decode("ascii", "replace").strip("\x00 ") if modality else None,
        retrieved=retrieved,
        values=found,
    )


def tags_read(routes: RouteSet, *, everything: bool = False) -> tuple[tuple[int, str | None], ...]:
    """(tag, numeric VR or None) of every tag the enabled routes (*everything*: all) read."""
    seen: dict[int, str | None] = {}
    for route in routes if everything else routes.active:
        for condition in route.tags:
            seen[condition.tag] = condition.numeric
    return tuple(seen.items())


def decision(route: Route, destination: str) -> Decision:
    """The decision to forward to *destination* by *route*, as the route is now."""
    return Decision(route.name, destination, route.trigger, route.wait_seconds, route.config.commit)


def match_row(
    route: Route,
    destination: str,
    sop_instance_uid: str,
    study: str,
    series: str,
    node: str,
    now: datetime | None = None,
) -> dict[str, Any]:
    """A ``route_matches`` row in state pending, matched *now* (``routes replay``)."""
    return arrivals.match_row(
        decision(route, destination), sop_instance_uid, study, series, node, now or utcnow()
    )


class RouteHolder:
    """The current route set and what the receive path needs of it (``storage.rows.Decisions``)."""

    def __init__(self, routes: RouteSet, node_name: str) -> None:
        self.node_name = node_name
        self._lock = threading.Lock()
        self._shortest = float("inf")
        self._install(routes)

    def _install(self, routes: RouteSet) -> None:
        # Assigned together under the lock; readers take one consistent snapshot per call. The
        # last item caches the ``decisions`` column of each outcome ((route, destination)
        # pairs): a route set has few, and encoding one cost a quarter of deciding.
        wanted = tags.INDEX_TAGS | routes.wanted_tags
        encoded: dict[tuple[tuple[str, str], ...], str] = {}
        # Never raised again: arrivals decided by an earlier set may still wait unexpanded.
        waits = [route.wait_seconds for route in routes.active]
        self._shortest = min([self._shortest, *waits])
        self._state = (routes, routes.active, tags_read(routes), wanted, encoded)

    def __call__(self) -> RouteSet:
        return self._state[0]

    def replace(self, routes: RouteSet) -> None:
        """Swap in a new, already validated route set."""
        with self._lock:
            self._install(routes)

    def shortest_wait(self) -> float:
        """The shortest wait (``stable_after``, or the instance window) of any enabled route
        of any set this holder has held (inf: none yet): no decision made here becomes due
        sooner than this after it was made (``Forwarder.deferrable``)."""
        return self._shortest

    @property
    def wanted(self) -> frozenset[int]:
        """The index's tags and those the routes read."""
        return self._state[3]

    def decide(self, request: StoreRequest, scan: ScanResult) -> dict[str, Any] | None:
        """The ``route_arrivals`` row of a new instance (every destination it is to be
        forwarded to, one route each), or None when no route matches it."""
        _, active, read, _, encoded = self._state
        if not active:
            return None
        try:
            facts = facts_from_values(
                scan.values,
                calling_ae=request.calling_ae,
                sop_class_uid=request.sop_class_uid,
                retrieved=request.retrieved,
                read=read,
            )
            chosen = decide(active, facts)
            if not chosen:
                return None
            outcome = tuple((route.name, dest) for route, dest in chosen)
            text = encoded.get(outcome)
            if text is None:
                text = arrivals.encode([decision(route, dest) for route, dest in chosen])
                if len(encoded) < _ENCODED_MAX:
                    encoded[outcome] = text
            return arrivals.arrival_row(
                request.sop_instance_uid,
                scan.text(tags.STUDY_INSTANCE_UID) or "",
                scan.text(tags.SERIES_INSTANCE_UID) or "",
                self.node_name,
                text,
                utcnow(),
            )
        except Exception as exc:  # a routing bug must never refuse an instance
            log.exception(
                "route.decide_failed",
                sop_instance_uid=request.sop_instance_uid,
                error=str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
            )
            return None
