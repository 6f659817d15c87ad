"""What a retried move asks for again (pure): after a partial move towards ctnode, the instances
the request covers (listed with C-FIND at SERIES, then IMAGE level) minus those that arrived
before and those the local index holds, moved again at IMAGE level, per series, in requests of
at most ``UIDS_PER_MOVE`` SOP Instance UIDs."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from pydicom.dataset import Dataset

from ctnode.dicom.uids import is_valid_uid
from ctnode.scu.move_request import MoveRequest

#: SOP Instance UIDs per IMAGE-level C-MOVE when only the missing instances are moved again.
UIDS_PER_MOVE = 200


def listing_identifier(study: str, level: str, series: str | None) -> Dataset:
    """The C-FIND identifier that lists a study's series (SERIES) or a series' instances
    (IMAGE)."""
    identifier = Dataset()
    identifier.QueryRetrieveLevel = level
    identifier.StudyInstanceUID = study
    identifier.SeriesInstanceUID = series or ""
    if level == "IMAGE":
        identifier.SOPInstanceUID = ""
    return identifier


def listed_uids(matches: Iterable[Dataset], level: str) -> list[str]:
    """The valid series (SERIES) or SOP Instance (IMAGE) UIDs of a listing, once each, in order."""
    keyword = "SOPInstanceUID" if level == "IMAGE" else "SeriesInstanceUID"
    uids = [str(ds.get(keyword, "")) for ds in matches]
    return [u for u in dict.fromkeys(uids) if is_valid_uid(u)]


def missing_instances(
    expected: Mapping[str, Sequence[str]], have: set[str], here: set[str]
) -> dict[str, list[str]]:
    """Per series, the *expected* instances neither in *have* (arrived) nor *here* (stored);
    series with none missing are left out."""
    missing = {
        series: [u for u in uids if u not in have and u not in here]
        for series, uids in expected.items()
    }
    return {s: u for s, u in missing.items() if u}


def image_moves(request: MoveRequest, missing: Mapping[str, Sequence[str]]) -> list[MoveRequest]:
    """IMAGE-level requests for the *missing* instances of *request*, per series, at most
    ``UIDS_PER_MOVE`` each."""
    plan = []
    for series, uids in missing.items():
        for start in range(0, len(uids), UIDS_PER_MOVE):
            plan.append(
                MoveRequest(
                    request.study,
                    series,
                    tuple(uids[start : start + UIDS_PER_MOVE]),
                    request.destination,
                )
            )
    return plan
