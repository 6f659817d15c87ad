"""Pending routing decisions grouped into forwards: by route and destination, and by study
(``trigger: study``) or series (``series``); a group is ready once stable (or, for
``instance``, once gathered long enough). Pure."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any


@dataclass(frozen=True, slots=True)
class Group:
    """Pending matches forwarded together."""

    route: str
    destination: str
    trigger: str
    study: str | None
    series: str | None
    commit: bool
    count: int
    #: Newest and oldest match, and the quiet time the route asked for.
    newest: datetime
    oldest: datetime
    stable_after: float

    @property
    def due(self) -> datetime:
        """When the group becomes ready: its newest match plus ``stable_after`` (instance:
        its oldest plus the gathering window), unless a newer match arrives first."""
        since = self.oldest if self.trigger == "instance" else self.newest
        return since + timedelta(seconds=self.stable_after)

    def ready(self, now: datetime) -> bool:
        """Stable (study/series) or gathered long enough (instance)."""
        return self.due <= now

    def log_context(self) -> dict[str, Any]:
        """Fields of the group's log lines (UIDs, no patient data)."""
        fields: dict[str, Any] = {"route": self.route, "destination": self.destination}
        if self.study:
            fields["study_instance_uid"] = self.study
        if self.series:
            fields["series_instance_uid"] = self.series
        return fields


def group_pending(rows: Sequence[Any]) -> list[Group]:
    """Merge per-(study, series) aggregates into forward groups by the rows' trigger."""
    merged: dict[tuple[Any, ...], Group] = {}
    for row in rows:
        trigger = row.trigger
        study = None if trigger == "instance" else row.study_instance_uid
        series = row.series_instance_uid if trigger == "series" else None
        key = (row.route, row.destination, trigger, study, series, bool(row.commit))
        old = merged.get(key)
        if old is None:
            merged[key] = Group(
                row.route,
                row.destination,
                trigger,
                study,
                series,
                bool(row.commit),
                int(row.count),
                row.newest,
                row.oldest,
                float(row.stable_after),
            )
        else:
            merged[key] = Group(
                old.route,
                old.destination,
                trigger,
                study,
                series,
                old.commit,
                old.count + int(row.count),
                max(old.newest, row.newest),
                min(old.oldest, row.oldest),
                max(old.stable_after, float(row.stable_after)),
            )
    return sorted(merged.values(), key=lambda g: g.oldest)
