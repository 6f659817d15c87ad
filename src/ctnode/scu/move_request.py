"""What a move job moves (pure): the Study Root C-MOVE request — a study, a series, or instances
of one series, and the destination — validated from the CLI's keys or a job payload, and its
C-MOVE identifier."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset

from ctnode.dicom.uids import ae_title_problem, is_valid_uid
from ctnode.errors import UsageError


@dataclass(frozen=True, slots=True)
class MoveRequest:
    """What to move (Study Root: a study, a series, or instances of one series) and where."""

    study: str
    series: str | None = None
    instances: tuple[str, ...] = ()
    #: Move destination AE title; None = this node.
    destination: str | None = None

    @property
    def level(self) -> str:
        """QueryRetrieveLevel of the request."""
        if self.instances:
            return "IMAGE"
        return "SERIES" if self.series else "STUDY"

    def describe(self) -> str:
        """``study 1.2.3`` / ``series 1.2.3.4`` / ``3 instance(s) of series 1.2.3.4``."""
        if self.instances:
            return f"{len(self.instances)} instance(s) of series {self.series}"
        if self.series:
            return f"series {self.series}"
        return f"study {self.study}"

    def identifier(self) -> Dataset:
        """The C-MOVE identifier (unique keys down to the request's level)."""
        ds = Dataset()
        ds.QueryRetrieveLevel = self.level
        ds.StudyInstanceUID = self.study
        if self.series:
            ds.SeriesInstanceUID = self.series
        if self.instances:
            ds.SOPInstanceUID = list(self.instances)
        return ds

    def to_payload(self) -> dict[str, Any]:
        """The ``move`` job payload."""
        return {
            "level": self.level,
            "study": self.study,
            "series": self.series,
            "instances": list(self.instances),
            "destination": self.destination,
        }

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> MoveRequest:
        """Inverse of ``to_payload`` (validated again: payloads may be written by integrators)."""
        return make_request(
            payload.get("study"),
            payload.get("series"),
            payload.get("instances") or (),
            payload.get("destination"),
        )


def make_request(
    study: Any, series: Any = None, instances: Sequence[Any] = (), destination: Any = None
) -> MoveRequest:
    """A validated MoveRequest; UsageError names what is wrong."""
    if not isinstance(study, str) or not is_valid_uid(study):
        raise UsageError(f"StudyInstanceUID {study!r} is missing or not a valid UID")
    if series is not None and (not isinstance(series, str) or not is_valid_uid(series)):
        raise UsageError(f"SeriesInstanceUID {series!r} is not a valid UID")
    uids = tuple(str(u) for u in instances)
    bad = [u for u in uids if not is_valid_uid(u)]
    if bad:
        raise UsageError(f"SOPInstanceUID {bad[0]!r} is not a valid UID")
    if uids and not series:
        raise UsageError("moving instances (SOPInstanceUID) needs their SeriesInstanceUID")
    if destination is not None:
        if not isinstance(destination, str):
            raise UsageError("the move destination must be an AE title")
        problem = ae_title_problem(destination)
        if problem:
            raise UsageError(f"move destination {destination!r} {problem}")
        destination = destination.strip()
    return MoveRequest(study, series, uids, destination)


_MOVE_KEYS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


def request_from_cli(
    keys: Sequence[str], study: str | None, series: str | None, destination: str | None
) -> MoveRequest:
    """``-k StudyInstanceUID=…`` / ``--study`` … as a MoveRequest (UsageError if inconsistent)."""
    aliases = {"0020,000D": _MOVE_KEYS[0], "0020,000E": _MOVE_KEYS[1], "0008,0018": _MOVE_KEYS[2]}
    given: dict[str, str] = {}
    for key in keys:
        name, sep, value = key.partition("=")
        name = name.strip()
        name = aliases.get(name.upper().strip("()"), name)
        if name == "QueryRetrieveLevel":
            continue  # implied by the keys given
        if name not in _MOVE_KEYS:
            raise UsageError(
                f"-k {name}: a C-MOVE names what to move by UID only "
                "(StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID); find it first with "
                "`ctnode query`"
            )
        if not sep or not value:
            raise UsageError(f"-k {name} needs a value (-k {name}=UID)")
        given[name] = value.strip()
    for name, option, uid in (
        (_MOVE_KEYS[0], "--study", study),
        (_MOVE_KEYS[1], "--series", series),
    ):
        if uid is not None:
            if name in given and given[name] != uid:
                raise UsageError(f"-k {name} and {option} disagree")
            given[name] = uid
    if _MOVE_KEYS[0] not in given:
        raise UsageError("give the study to move: --study UID or -k StudyInstanceUID=UID")
    instances = given[_MOVE_KEYS[2]].split("\\") if _MOVE_KEYS[2] in given else []
    return make_request(given[_MOVE_KEYS[0]], given.get(_MOVE_KEYS[1]), instances, destination)
