"""A scripted Study Root Q/R SCP (pynetdicom) for faults no real PACS produces on demand:
sub-operations that fail (0xB000), pending responses that never end.

C-FIND answers from the data sets it holds (STUDY, SERIES, IMAGE levels; the identifier's
UID keys filter, every other key is returned from the data set). C-MOVE sends the matching data
sets to the destination (from ``destinations``), with two faults it can inject:

* ``broken(call, sop_instance_uid)`` true: that instance is sent without its Series Instance UID,
  which ctnode refuses (0xA900), so the sub-operation fails and the move ends 0xB000;
* ``stall_calls``: on those C-MOVE calls (1-based) it keeps sending the first instance again,
  one pending response every ``stall_interval`` seconds, until it receives C-CANCEL.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from tests.helpers.procs import free_port


class FakeQRSCP:
    """A pynetdicom Q/R SCP holding *datasets* (see the module docstring)."""

    def __init__(
        self,
        datasets: list[Dataset],
        destinations: dict[str, tuple[str, int]],
        *,
        ae_title: str = "FAKEQR",
        broken: Callable[[int, str], bool] = lambda call, uid: False,
        stall_calls: frozenset[int] = frozenset(),
        stall_interval: float = 0.2,
    ) -> None:
        self.datasets = datasets
        self.destinations = destinations
        self.broken = broken
        self.stall_calls = stall_calls
        self.stall_interval = stall_interval
        self.port = free_port()
        self.move_calls: list[dict[str, Any]] = []
        self.find_calls: list[str] = []
        self.cancelled_moves = 0
        self._lock = threading.Lock()
        ae = AE(ae_title=ae_title)
        ae.network_timeout = 10
        ae.add_supported_context(Verification)
        ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
        ae.add_supported_context(StudyRootQueryRetrieveInformationModelMove)
        for sop_class in sorted({str(ds.SOPClassUID) for ds in datasets}):
            ae.add_requested_context(sop_class)
        self.ae = ae
        self.server: Any = None

    # -- matching ----------------------------------------------------------------------

    @staticmethod
    def _uids(identifier: Dataset, keyword: str) -> set[str] | None:
        value = identifier.get(keyword)
        if value in (None, "", "*"):
            return None
        return {str(v) for v in (value if not isinstance(value, str) else value.split("\\"))}

    def _matching(self, identifier: Dataset) -> list[Dataset]:
        studies = self._uids(identifier, "StudyInstanceUID")
        series = self._uids(identifier, "SeriesInstanceUID")
        instances = self._uids(identifier, "SOPInstanceUID")
        return [
            ds
            for ds in self.datasets
            if (studies is None or ds.StudyInstanceUID in studies)
            and (series is None or ds.SeriesInstanceUID in series)
            and (instances is None or ds.SOPInstanceUID in instances)
        ]

    # -- handlers ----------------------------------------------------------------------

    def _on_find(self, event: Any) -> Iterator[tuple[int, Dataset | None]]:
        identifier = event.identifier
        level = str(identifier.QueryRetrieveLevel)
        with self._lock:
            self.find_calls.append(level)
        unique = {"STUDY": "StudyInstanceUID", "SERIES": "SeriesInstanceUID"}.get(
            level, "SOPInstanceUID"
        )
        seen: set[str] = set()
        for ds in self._matching(identifier):
            key = str(ds[unique].value)
            if key in seen:
                continue
            seen.add(key)
            if event.is_cancelled:
                yield 0xFE00, None
                return
            out = Dataset()
            out.QueryRetrieveLevel = level
            for element in identifier:
                if element.keyword == "QueryRetrieveLevel":
                    continue
                if element.keyword in ds:
                    out[element.tag] = ds[element.tag]
                else:
                    out.add_new(element.tag, element.VR, "")
            yield 0xFF00, out
        yield 0x0000, None

    def _on_move(self, event: Any) -> Iterator[Any]:
        identifier = event.identifier
        with self._lock:
            call = len(self.move_calls) + 1
            self.move_calls.append(
                {
                    "level": str(identifier.QueryRetrieveLevel),
                    "instances": sorted(self._uids(identifier, "SOPInstanceUID") or []),
                    "destination": event.request.MoveDestination,
                }
            )
        destination = self.destinations.get(str(event.request.MoveDestination).strip())
        if destination is None:
            yield None, None
            return
        yield destination
        matches = self._matching(identifier)
        if call in self.stall_calls:
            yield 60000
            while True:
                if event.is_cancelled:
                    with self._lock:
                        self.cancelled_moves += 1
                    yield 0xFE00, None
                    return
                time.sleep(self.stall_interval)
                yield 0xFF00, matches[0]
        yield len(matches)
        for ds in matches:
            if event.is_cancelled:
                yield 0xFE00, None
                return
            if self.broken(call, str(ds.SOPInstanceUID)):
                bad = copy.deepcopy(ds)
                del bad.SeriesInstanceUID
                yield 0xFF00, bad
            else:
                yield 0xFF00, ds

    # -- life cycle ----------------------------------------------------------------------

    def start(self) -> FakeQRSCP:
        """Serve on 127.0.0.1:port in background threads."""
        self.server = self.ae.start_server(
            ("127.0.0.1", self.port),
            block=False,
            evt_handlers=[(evt.EVT_C_FIND, self._on_find), (evt.EVT_C_MOVE, self._on_move)],
        )
        return self

    def stop(self) -> None:
        """Shut the server down."""
        if self.server is not None:
            self.server.shutdown()
            self.server = None

    def __enter__(self) -> FakeQRSCP:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
