"""A pynetdicom scanner asking ctnode for storage commitment (ctnode as the SCP): it stores
instances, sends the N-ACTION, and takes the N-EVENT-REPORT on the same association or on a new
one (its own SCP, accepting the SCU role of N-EVENT-REPORT for ctnode through role selection)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import StorageCommitmentPushModel  # type: ignore[attr-defined]

from tests.helpers.procs import free_port
from tests.helpers.waiting import wait_until

INSTANCE = "1.2.840.10008.1.20.1.1"


@dataclass
class Received:
    """A report the scanner received."""

    event_type: int
    transaction_uid: str
    committed: list[str]
    failed: dict[str, int]
    #: True if it came on the N-ACTION's association; False on a new one.
    same_association: bool
    #: The roles on the new association (ctnode as SCP of the SOP class: (False, True)).
    requestor_roles: tuple[bool, bool] | None = None


def action_dataset(transaction_uid: str, refs: list[tuple[str, str]]) -> Dataset:
    """N-ACTION Action Information for *refs* (SOP class, SOP instance)."""
    ds = Dataset()
    ds.TransactionUID = transaction_uid
    items = []
    for sop_class, sop_instance in refs:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop_instance
        items.append(item)
    ds.ReferencedSOPSequence = Sequence(items)
    return ds


def _decode(ds: Dataset, same: bool, roles: tuple[bool, bool] | None, event: int) -> Received:
    return Received(
        event,
        str(ds.TransactionUID),
        [str(i.ReferencedSOPInstanceUID) for i in ds.get("ReferencedSOPSequence") or []],
        {
            str(i.ReferencedSOPInstanceUID): int(i.FailureReason)
            for i in ds.get("FailedSOPSequence") or []
        },
        same,
        roles,
    )


@dataclass
class Scanner:
    """The scanner: ``ae_title`` calling ctnode at ``port``; its own SCP on ``listen_port``."""

    ctnode_port: int
    ae_title: str = "SCANNER"
    listen_port: int = field(default_factory=free_port)
    reports: list[Received] = field(default_factory=list)
    server: Any = None

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def peer_file(self, **extra: Any) -> dict[str, Any]:
        """ctnode's peer file for this scanner."""
        return {
            "ae_title": self.ae_title,
            "host": "127.0.0.1",
            "port": self.listen_port,
            "accept": ["echo", "store", "commit"],
            "timeouts": {"connect": 2, "acse": 5, "dimse": 10, "network": 10},
            **extra,
        }

    # -- its SCP, for reports on a new association -----------------------------------------

    def listen(self) -> Scanner:
        """Take reports on a new association (accepting ctnode in the SCP role)."""
        ae = AE(ae_title=self.ae_title)
        ae.add_supported_context(StorageCommitmentPushModel, scu_role=False, scp_role=True)
        ae.network_timeout = ae.acse_timeout = ae.dimse_timeout = 10

        def on_report(event: Any) -> tuple[int, None]:
            cx = next(
                c for c in event.assoc.accepted_contexts if c.context_id == event.context.context_id
            )
            roles = (bool(cx.as_scp), bool(cx.as_scu))  # the requestor's (ctnode's) roles
            self._note(_decode(event.event_information, False, roles, event.event_type))
            return 0x0000, None

        self.server = ae.start_server(
            ("127.0.0.1", self.listen_port),
            block=False,
            evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)],
        )
        return self

    def stop(self) -> None:
        """Stop its SCP."""
        if self.server is not None:
            self.server.shutdown()
            self.server = None

    def _note(self, received: Received) -> None:
        with self._lock:
            self.reports.append(received)

    def wait_report(self, transaction_uid: str, timeout: float = 30) -> Received:
        """The report for *transaction_uid* (waits for it)."""

        def found() -> Received | None:
            with self._lock:
                return next((r for r in self.reports if r.transaction_uid == transaction_uid), None)

        return wait_until(found, timeout, message=f"report for {transaction_uid}")

    # -- as SCU ------------------------------------------------------------------------------

    def store(self, paths: list[Path]) -> None:
        """C-STORE the files to ctnode."""
        ae = AE(ae_title=self.ae_title)
        datasets = [pydicom.dcmread(p) for p in paths]
        for sop_class in {str(ds.SOPClassUID) for ds in datasets}:
            ae.add_requested_context(sop_class)
        assoc = ae.associate("127.0.0.1", self.ctnode_port, ae_title="CTNODE")
        assert assoc.is_established, "ctnode refused the store association"
        try:
            for ds in datasets:
                status = assoc.send_c_store(ds)
                assert status.Status == 0x0000
        finally:
            assoc.release()

    def request(
        self,
        transaction_uid: str,
        refs: list[tuple[str, str]],
        *,
        keep_open: float = 0.0,
        action_type: int = 1,
        dataset: Dataset | None = None,
        role: tuple[bool, bool] | None = None,
    ) -> tuple[int | None, Dataset | None]:
        """Send the N-ACTION; returns (status, response command status data set). With
        *keep_open*, waits that long on the association for a report sent on it."""
        ae = AE(ae_title=self.ae_title)
        ae.add_requested_context(StorageCommitmentPushModel)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
        got = threading.Event()

        def on_report(event: Any) -> tuple[int, None]:
            self._note(_decode(event.event_information, True, None, event.event_type))
            got.set()
            return 0x0000, None

        roles = (
            [build_role(StorageCommitmentPushModel, scu_role=role[0], scp_role=role[1])]
            if role
            else []
        )
        assoc = ae.associate(
            "127.0.0.1",
            self.ctnode_port,
            ae_title="CTNODE",
            ext_neg=roles,
            evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)],
        )
        if not assoc.is_established:
            return None, None
        try:
            status, _reply = assoc.send_n_action(
                dataset if dataset is not None else action_dataset(transaction_uid, refs),
                action_type,
                StorageCommitmentPushModel,
                INSTANCE,
            )
            code = int(status.Status) if status is not None and "Status" in status else None
            if keep_open and code == 0:
                got.wait(keep_open)
            return code, status
        finally:
            if assoc.is_established:
                assoc.release()
