"""The routing decision made at ingest: ``route_matches`` rows committed with the instance row.

``RouteHolder`` is the store's ``Decisions`` (``storage.rows``): it holds the current route set
(swapped whole on reload), tells the scan which extra tags the routes read, and turns a scanned
instance into its rows: one per destination, state ``pending``. It costs the receive path a few
dictionary and set lookups per route (patterns were compiled when the routes were loaded) and
no database round trip: the rows go into the instance row's transaction, all rows of a group
commit in one driver-level ``executemany`` (``storage.rows.PreparedInsert``).
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
from ctnode.routing.match import InstanceFacts, decide, number_text
from ctnode.routing.rules import Route, RouteSet
from ctnode.storage.values import StoreRequest

log = get_logger("ctnode.routing")

PENDING = "pending"


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


def match_row(
    route: Route,
    destination: str,
    sop_instance_uid: str,
    study: str,
    series: str,
    node: str,
    now: datetime | None = None,
) -> dict[str, Any]:
    """A ``route_matches`` row in state pending, matched *now*; the columns that start empty
    (``batch``, ``job_id``, ``error``) are left to their NULL default."""
    now = now or utcnow()
    return {
        "route": route.name,
        "destination": destination,
        "sop_instance_uid": sop_instance_uid,
        "study_instance_uid": study,
        "series_instance_uid": series,
        "trigger": route.trigger,
        "stable_after": route.wait_seconds,
        "commit": route.config.commit,
        "node_name": node,
        "state": PENDING,
        "matched_at": now,
        "updated_at": now,
    }


class RouteHolder:
    """The current route set and what the receive path needs of it (``storage.rows.Decisions``)."""

    def __init__(self, routes: RouteSet, node_name: str) -> None:
        self.node_name = node_name
        self._lock = threading.Lock()
        self._install(routes)

    def _install(self, routes: RouteSet) -> None:
        # Assigned together under the lock; readers take one consistent snapshot per call.
        wanted = tags.INDEX_TAGS | routes.wanted_tags
        self._state = (routes, routes.active, tags_read(routes), wanted)

    def __call__(self) -> RouteSet:
        return self._state[0]

    def replace(self, routes: RouteSet) -> None:
        """Swap in a new, already validated route set."""
        with self._lock:
            self._install(routes)

    @property
    def wanted(self) -> frozenset[int]:
        """The index's tags and those the routes read."""
        return self._state[3]

    def decide(self, request: StoreRequest, scan: ScanResult) -> list[dict[str, Any]]:
        """The rows of a new instance: one per (route, destination) it is to be forwarded to."""
        _, active, read, _ = self._state
        if not active:
            return []
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
                return []
            study = scan.text(tags.STUDY_INSTANCE_UID) or ""
            series = scan.text(tags.SERIES_INSTANCE_UID) or ""
            uid, now = request.sop_instance_uid, utcnow()
            return [
                match_row(route, dest, uid, study, series, self.node_name, now)
                for route, dest in chosen
            ]
        except Exception as exc:  # a routing bug must never refuse an instance
            log.exception(
                "route.decide_failed",
                sop_instance_uid=request.sop_instance_uid,
                error=str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
            )
            return []
