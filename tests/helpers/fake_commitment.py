"""A scripted Storage Commitment Push Model SCP (pynetdicom) for what Orthanc cannot show on
demand: a report on the N-ACTION's own association, no report at all, a report sent later (after
ctnode restarted), from an AE that was not asked, or for a Transaction UID nobody issued."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pynetdicom import AE, AllStoragePresentationContexts, build_role, evt
from pynetdicom.sop_class import StorageCommitmentPushModel, Verification

from tests.helpers.procs import free_port
from tests.helpers.waiting import wait_until

#: The well-known SOP Instance of the Storage Commitment Push Model.
WELL_KNOWN_INSTANCE = "1.2.840.10008.1.20.1.1"
NO_SUCH_OBJECT = 0x0112

Mode = Literal["new_association", "same_association", "never"]


@dataclass
class Action:
    """One N-ACTION the fake received."""

    transaction_uid: str
    refs: list[tuple[str, str]]
    calling_ae: str
    at: float = field(default_factory=time.monotonic)


def report_dataset(
    transaction_uid: str,
    committed: Iterable[tuple[str, str]],
    failed: Iterable[tuple[str, str, int]] = (),
) -> Dataset:
    """The Event Information of an N-EVENT-REPORT (Referenced / Failed SOP Sequences)."""
    ds = Dataset()
    ds.TransactionUID = transaction_uid
    ok = []
    for sop_class, sop_instance in committed:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop_instance
        ok.append(item)
    if ok:
        ds.ReferencedSOPSequence = Sequence(ok)
    bad = []
    for sop_class, sop_instance, reason in failed:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop_instance
        item.FailureReason = reason
        bad.append(item)
    if bad:
        ds.FailedSOPSequence = Sequence(bad)
    return ds


class FakeCommitmentSCP:
    """Storage Commitment SCP (and storage SCP, for re-pushes) with a scripted report.

    *mode*: ``new_association`` reports like Orthanc (a new association to ``target``, proposing
    the SCP role); ``same_association`` reports on the N-ACTION's association right after the
    N-ACTION-RSP; ``never`` does not report (``send_report`` can be called by the test later).
    *holds*: the SOP Instance UIDs it commits (None: all); others fail with 0x0112. Instances it
    receives by C-STORE are held from then on.
    """

    def __init__(
        self,
        *,
        ae_title: str = "FAKECOMMIT",
        mode: Mode = "new_association",
        holds: set[str] | None = None,
        report_delay: float = 0.1,
        action_status: int = 0x0000,
    ) -> None:
        self.ae_title = ae_title
        self.mode = mode
        self.holds = holds
        self.report_delay = report_delay
        self.action_status = action_status
        self.port = free_port()
        #: Where reports on a new association go: (host, port, called AE title).
        self.target: tuple[str, int, str] | None = None
        self.actions: list[Action] = []
        self.stored: list[str] = []
        #: (transaction UID, status ctnode answered to the N-EVENT-REPORT, or None).
        self.reports: list[tuple[str, int | None]] = []
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        ae = AE(ae_title=ae_title)
        ae.network_timeout = 10
        ae.acse_timeout = 10
        ae.dimse_timeout = 10
        ae.add_supported_context(StorageCommitmentPushModel)
        ae.add_supported_context(Verification)
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, cx.transfer_syntax)
        self.ae = ae
        self.server: Any = None

    # -- server ----------------------------------------------------------------------------

    def start(self) -> FakeCommitmentSCP:
        """Serve on 127.0.0.1:port in background threads."""
        self.server = self.ae.start_server(
            ("127.0.0.1", self.port),
            block=False,
            evt_handlers=[(evt.EVT_N_ACTION, self._on_action), (evt.EVT_C_STORE, self._on_store)],
        )
        return self

    def stop(self) -> None:
        """Shut the server down (after report threads finished)."""
        for thread in self._threads:
            thread.join(timeout=20)
        if self.server is not None:
            self.server.shutdown()
            self.server = None

    def __enter__(self) -> FakeCommitmentSCP:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _on_store(self, event: Any) -> int:
        uid = str(event.request.AffectedSOPInstanceUID)
        with self._lock:
            self.stored.append(uid)
            if self.holds is not None:
                self.holds.add(uid)
        return 0x0000

    def _on_action(self, event: Any) -> tuple[int, Dataset | None]:
        ds = event.action_information
        refs = [
            (str(i.ReferencedSOPClassUID), str(i.ReferencedSOPInstanceUID))
            for i in ds.ReferencedSOPSequence
        ]
        action = Action(str(ds.TransactionUID), refs, event.assoc.requestor.ae_title)
        with self._lock:
            self.actions.append(action)
        if self.action_status == 0x0000 and self.mode != "never":
            if self.mode == "same_association":
                target = self._report_on_same_association
                args: tuple[Any, ...] = (event.assoc, action)
            else:
                target = self._report_later
                args = (action,)
            thread = threading.Thread(target=target, args=args, daemon=True)
            self._threads.append(thread)
            thread.start()
        return self.action_status, None

    # -- reports -------------------------------------------------------------------------

    def verdict(
        self, refs: Iterable[tuple[str, str]]
    ) -> tuple[list[tuple[str, str]], list[tuple[str, str, int]]]:
        """(committed, failed) for *refs* given what the fake holds."""
        with self._lock:
            held = None if self.holds is None else set(self.holds)
        committed = [r for r in refs if held is None or r[1] in held]
        failed = [(c, i, NO_SUCH_OBJECT) for c, i in refs if held is not None and i not in held]
        return committed, failed

    def _report_on_same_association(self, assoc: Any, action: Action) -> None:
        time.sleep(self.report_delay)
        committed, failed = self.verdict(action.refs)
        status, _ = assoc.send_n_event_report(
            report_dataset(action.transaction_uid, committed, failed),
            2 if failed else 1,
            StorageCommitmentPushModel,
            WELL_KNOWN_INSTANCE,
        )
        with self._lock:
            self.reports.append((action.transaction_uid, _status(status)))

    def _report_later(self, action: Action) -> None:
        time.sleep(self.report_delay)
        self.send_report(action.transaction_uid, action.refs)

    def send_report(
        self,
        transaction_uid: str,
        refs: Iterable[tuple[str, str]],
        *,
        calling_ae: str | None = None,
        committed: Iterable[tuple[str, str]] | None = None,
        failed: Iterable[tuple[str, str, int]] | None = None,
        event_type: int | None = None,
    ) -> int | None:
        """Report on a new association to ``target``, proposing the SCP role (like a PACS).

        Returns the status ctnode answered (None if the association or the message failed).
        """
        assert self.target is not None, "set .target to ctnode's (host, port, AE title) first"
        host, port, called_ae = self.target
        if committed is None and failed is None:
            committed, failed = self.verdict(list(refs))
        committed = list(committed or [])
        failed = list(failed or [])
        ae = AE(ae_title=calling_ae or self.ae_title)
        ae.network_timeout = 10
        ae.acse_timeout = 10
        ae.dimse_timeout = 20
        ae.add_requested_context(StorageCommitmentPushModel)
        role = build_role(StorageCommitmentPushModel, scp_role=True)
        code: int | None = None
        assoc = ae.associate(host, port, ae_title=called_ae, ext_neg=[role])
        if assoc.is_established:
            status, _ = assoc.send_n_event_report(
                report_dataset(transaction_uid, committed, failed),
                event_type if event_type is not None else (2 if failed else 1),
                StorageCommitmentPushModel,
                WELL_KNOWN_INSTANCE,
            )
            code = _status(status)
            assoc.release()
        with self._lock:
            self.reports.append((transaction_uid, code))
        return code

    def wait_actions(self, count: int, timeout: float = 60) -> list[Action]:
        """Wait until *count* N-ACTIONs arrived; returns them."""

        def arrived() -> list[Action] | None:
            with self._lock:
                return list(self.actions) if len(self.actions) >= count else None

        return wait_until(
            arrived, timeout, message=lambda: f"{count} N-ACTION(s); {len(self.actions)} arrived"
        )


def _status(status: Dataset) -> int | None:
    value = status.get("Status") if status is not None else None
    return int(value) if value is not None else None
