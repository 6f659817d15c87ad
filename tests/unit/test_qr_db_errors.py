"""An index database error while answering C-FIND/C-MOVE/C-GET: the ErrorComment and the log
reason carry the driver's short message, never the SQL or its bound parameters (the peer's key
values: patient data)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import Any

import pytest
from pydicom.dataset import Dataset
from sqlalchemy.exc import OperationalError, ProgrammingError
from structlog.testing import capture_logs

from ctnode.config import NodeSettings
from ctnode.dicom.contexts import EXPLICIT_VR_LE, STUDY_ROOT_FIND, STUDY_ROOT_MOVE
from ctnode.peers import PeerRegistry
from ctnode.scp.qr_common import database_error_reason
from ctnode.scp.qr_find import FindService
from ctnode.scp.qr_retrieve import RetrieveService
from ctnode.scu.identifier import encode_identifier
from ctnode.ul import dimse
from ctnode.ul.acceptor import AcceptedContext, AssociationInfo
from ctnode.ul.peer_requests import Dataset as Data
from ctnode.ul.peer_requests import PeerRequests

SECRET = "Doe^Jane"
PATIENT_ID = "PID-4711"


def _error() -> OperationalError:
    return OperationalError(
        "SELECT instances.id FROM instances WHERE instances.patient_name = ? AND patient_id = ?",
        (SECRET, PATIENT_ID),
        sqlite3.OperationalError("database is locked"),
    )


class _Index:
    """A QrIndex whose database fails."""

    def entities(self, level: str, keys: Any) -> Iterator[Any]:
        raise _error()

    def instances(self, filters: Any) -> list[Any]:
        raise _error()


class _Link:
    def send_dimse(self, context_id: int, command: bytes, dataset: Data | None) -> None:
        pass

    def read_next(self, timeout: float) -> None:
        pass

    def has_input(self) -> bool:
        return False

    def stopping(self) -> bool:
        return False


def _identifier(level: str) -> bytes:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    ds.PatientName = SECRET
    ds.PatientID = PATIENT_ID
    ds.StudyInstanceUID = "1.2.3.4"
    return encode_identifier(ds, EXPLICIT_VR_LE)


def _info() -> AssociationInfo:
    info = AssociationInfo(id="t", address="127.0.0.1", port=1, calling_ae="VIEWER")
    info.requests = PeerRequests(_Link(), 5)
    return info


def _assert_clean(reply_fields: dict[str, Any], logs: list[dict[str, Any]], code: int) -> None:
    assert reply_fields["Status"] == code
    comment = reply_fields["ErrorComment"]
    assert comment == "index database error: database is locked"
    reasons = [str(entry.get("reason")) for entry in logs]
    assert "index database error: database is locked" in reasons
    for text in [comment, *map(str, logs)]:
        assert SECRET not in text and PATIENT_ID not in text
        assert "SELECT" not in text and "parameters" not in text


def test_find_database_error_has_no_sql_or_parameters() -> None:
    service = FindService(_Index(), "CTNODE")  # type: ignore[arg-type]
    ctx = AcceptedContext(1, STUDY_ROOT_FIND, EXPLICIT_VR_LE, None)
    cmd = dimse.Command(
        {"MessageID": 7, "AffectedSOPClassUID": STUDY_ROOT_FIND, "CommandField": 0x0020}
    )
    with capture_logs() as logs:
        reply = service(_info(), ctx, cmd, _identifier("STUDY"))
    _assert_clean(reply.fields, logs, 0xA700)


def test_retrieve_database_error_has_no_sql_or_parameters() -> None:
    service = RetrieveService(
        _Index(),  # type: ignore[arg-type]
        NodeSettings(),
        lambda: PeerRegistry({}),
    )
    ctx = AcceptedContext(1, STUDY_ROOT_MOVE, EXPLICIT_VR_LE, None)
    cmd = dimse.Command(
        {"MessageID": 7, "AffectedSOPClassUID": STUDY_ROOT_MOVE, "CommandField": 0x0021}
    )
    with capture_logs() as logs:
        reply = service.get(_info(), ctx, cmd, _identifier("STUDY"))
    _assert_clean(reply.fields, logs, 0xA701)


@pytest.mark.parametrize(
    ("orig", "expected"),
    [
        (
            Exception('invalid input syntax for type date: "Doe^Jane"\nLINE 1: SELECT x'),
            "index database error: invalid input syntax for type date: '?'",
        ),
        (Exception(""), "index database error: Exception"),
    ],
)
def test_reason_is_the_first_line_with_literals_masked(orig: Exception, expected: str) -> None:
    exc = ProgrammingError("SELECT 1 WHERE a = %(a)s", {"a": SECRET}, orig)
    assert database_error_reason(exc) == expected
