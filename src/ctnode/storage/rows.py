"""Index rows of the receive path: the row a stored object gets, and the two statements that
look it up and insert it (``GroupCommit`` shares one transaction among concurrent inserts).

The statements are SQLAlchemy Core, built and compiled once: the ORM's unit of work cost more
than the SQLite commit itself per object (``bench/PROFILE.md``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import Engine, Table, bindparam, insert, select
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.exc import DBAPIError, IntegrityError

from ctnode.db.models import Instance, RouteArrival
from ctnode.db.types import utcnow
from ctnode.dicom import scan as tags
from ctnode.dicom.scan import ScanResult
from ctnode.dicom.text import decode_text
from ctnode.storage.spool import SpoolFile
from ctnode.storage.values import StoreRequest

_INSTANCES = Instance.__table__
assert isinstance(_INSTANCES, Table)
_SELECT_EXISTING = select(
    _INSTANCES.c.id,
    _INSTANCES.c.sha256,
    _INSTANCES.c.path,
    _INSTANCES.c.deleted_at,
    _INSTANCES.c.study_instance_uid,
    _INSTANCES.c.series_instance_uid,
).where(_INSTANCES.c.sop_instance_uid == bindparam("uid"))
_INSTANCES_TABLE: Table = _INSTANCES
_ROUTE_ARRIVALS_TABLE = RouteArrival.__table__
assert isinstance(_ROUTE_ARRIVALS_TABLE, Table)
_ROUTE_ARRIVALS: Table = _ROUTE_ARRIVALS_TABLE


class PreparedInsert:
    """An INSERT of fixed columns compiled once for a dialect and run as one driver-level
    ``executemany``; values go through the columns' own bind processors, so rows are given
    as for Core. Routing's rows use it: Core's per-execution work cost more than the rows."""

    def __init__(self, table: Table, keys: Sequence[str], dialect: Dialect) -> None:
        compiled = insert(table).compile(dialect=dialect, column_keys=list(keys))
        self.sql = compiled.string
        self.positional = bool(compiled.positional)
        names = list(compiled.positiontup or ()) if self.positional else list(keys)
        self.columns: list[tuple[str, Callable[[Any], Any] | None]] = [
            (name, table.c[name].type.bind_processor(dialect)) for name in names
        ]

    def execute(self, conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
        """Insert *rows* (dicts with exactly the prepared keys) in one statement."""
        converted = [
            tuple(row[n] if p is None else p(row[n]) for n, p in self.columns) for row in rows
        ]
        if self.positional:
            conn.exec_driver_sql(self.sql, converted)
        else:
            names = [n for n, _ in self.columns]
            conn.exec_driver_sql(self.sql, [dict(zip(names, r, strict=True)) for r in converted])


@dataclass(frozen=True, slots=True)
class ExistingRow:
    """The index row already holding an incoming SOP Instance UID."""

    id: int
    sha256: str
    path: str
    deleted_at: datetime | None
    study_instance_uid: str
    series_instance_uid: str


class ExistingLookup:
    """The row holding an incoming SOP Instance UID (removed or not), or None.

    One compiled statement run on a pooled driver connection, outside any transaction (one
    SELECT is atomic by itself; on SQLite it neither takes nor waits for the write lock): the
    receive path asks this for every object, and SQLAlchemy's per-execution work cost more
    than the query. Driver errors are raised as SQLAlchemy's (``is_unavailable`` applies).
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        dialect = engine.dialect
        compiled = _SELECT_EXISTING.compile(dialect=dialect)
        self._sql = compiled.string
        self._positional = bool(compiled.positional)
        self._deleted_at = _INSTANCES.c.deleted_at.type.result_processor(dialect, None)

    def __call__(self, sop_instance_uid: str) -> ExistingRow | None:
        params: Any = (sop_instance_uid,) if self._positional else {"uid": sop_instance_uid}
        dbapi = self.engine.dialect.loaded_dbapi
        try:
            conn = self.engine.raw_connection()
            try:
                cursor = conn.cursor()
                try:
                    cursor.execute(self._sql, params)
                    row = cursor.fetchone()
                finally:
                    cursor.close()
            finally:
                conn.close()  # back to the pool (which rolls back what a driver began)
        except dbapi.Error as exc:
            raise DBAPIError.instance(
                self._sql, params, exc, dbapi.Error, dialect=self.engine.dialect
            ) from exc
        if row is None:
            return None
        deleted_at = row[3] if self._deleted_at is None else self._deleted_at(row[3])
        return ExistingRow(row[0], row[1], row[2], deleted_at, row[4], row[5])


def _int_or_none(raw: str | None) -> int | None:
    if raw is None:
        return None
    try:
        return int(raw.strip())
    except ValueError:
        return None


def _us_or_none(raw: bytes | None) -> int | None:
    """A US value (Rows, Columns): little endian in every syntax ctnode stores."""
    if raw is None or len(raw) < 2:
        return None
    return int.from_bytes(raw[:2], "little")


def _clip(text: str | None, size: int) -> str | None:
    return (text or "")[:size] or None


#: ``instances.index_version`` of rows written now (None: before revision 0005).
INDEX_VERSION = 1


def query_values(scan: ScanResult) -> dict[str, Any]:
    """The query/retrieve keys of a scanned data set (revision 0005 columns)."""
    charset = scan.values.get(tags.SPECIFIC_CHARACTER_SET)
    return {
        "patient_birth_date": _clip(scan.text(tags.PATIENT_BIRTH_DATE), 8),
        "patient_sex": _clip(scan.text(tags.PATIENT_SEX), 16),
        "study_id": _clip(decode_text(scan.values.get(tags.STUDY_ID), charset), 16),
        "referring_physician_name": _clip(
            decode_text(scan.values.get(tags.REFERRING_PHYSICIAN_NAME), charset), 324
        ),
        "body_part_examined": _clip(scan.text(tags.BODY_PART_EXAMINED), 16),
        "series_date": _clip(scan.text(tags.SERIES_DATE), 8),
        "series_time": _clip(scan.text(tags.SERIES_TIME), 16),
        "rows": _us_or_none(scan.values.get(tags.ROWS)),
        "columns": _us_or_none(scan.values.get(tags.COLUMNS)),
        "number_of_frames": _int_or_none(scan.text(tags.NUMBER_OF_FRAMES)),
        "index_version": INDEX_VERSION,
    }


def row_values(spool: SpoolFile, scan: ScanResult, rel: str, node_name: str) -> dict[str, Any]:
    """The ``instances`` row of a scanned spool file stored at *rel* (under ``store/``)."""
    request = spool.request
    charset = scan.values.get(tags.SPECIFIC_CHARACTER_SET)
    return {
        "sop_instance_uid": request.sop_instance_uid,
        "sop_class_uid": request.sop_class_uid,
        "study_instance_uid": scan.text(tags.STUDY_INSTANCE_UID),
        "series_instance_uid": scan.text(tags.SERIES_INSTANCE_UID),
        "patient_id": decode_text(scan.values.get(tags.PATIENT_ID), charset),
        "patient_name": decode_text(scan.values.get(tags.PATIENT_NAME), charset),
        "study_date": (scan.text(tags.STUDY_DATE) or "")[:8] or None,
        "study_time": (scan.text(tags.STUDY_TIME) or "")[:16] or None,
        "accession_number": (decode_text(scan.values.get(tags.ACCESSION_NUMBER), charset) or "")[
            :16
        ]
        or None,
        "study_description": (decode_text(scan.values.get(tags.STUDY_DESCRIPTION), charset) or "")[
            :64
        ]
        or None,
        "series_description": (
            decode_text(scan.values.get(tags.SERIES_DESCRIPTION), charset) or ""
        )[:64]
        or None,
        "modality": (scan.text(tags.MODALITY) or "")[:16] or None,
        "series_number": _int_or_none(scan.text(tags.SERIES_NUMBER)),
        "instance_number": _int_or_none(scan.text(tags.INSTANCE_NUMBER)),
        "transfer_syntax_uid": request.transfer_syntax_uid,
        "size_bytes": spool.size,
        "sha256": spool.sha256,
        "calling_ae": request.calling_ae,
        "source_address": request.source_address,
        "received_at": utcnow(),
        "path": rel,
        "node_name": node_name,
        "deleted_at": None,
        **query_values(scan),
    }


class Decisions(Protocol):
    """A row decided at ingest and committed with the instance's row (routing: its
    ``route_arrivals`` row, see ``ctnode.routing.decisions``): a crash after the Success cannot
    lose it."""

    @property
    def wanted(self) -> frozenset[int]:
        """The top-level tags the scan must extract (the index's and the decisions')."""

    def decide(self, request: StoreRequest, scan: ScanResult) -> dict[str, Any] | None:
        """The ``route_arrivals`` row of a new instance, or None (no route matches it); must
        not raise."""


@dataclass(slots=True)
class _PendingRow:
    values: dict[str, Any]
    decided: dict[str, Any] | None
    done: bool = False
    error: BaseException | None = None


class GroupCommit:
    """Inserts index rows; rows of concurrent callers share one transaction (one log flush).

    A caller that finds no commit in progress commits its row at once (a lone association pays
    nothing for this). Callers arriving while a commit is in progress queue their rows; when it
    ends, one of them commits the whole queue in one transaction. Each caller returns only once
    *its* row is committed, or raises what committing it raised: an IntegrityError fails only
    the row that caused it (the batch is retried row by row); any other error fails the batch.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._cond = threading.Condition()
        self._queue: list[_PendingRow] = []
        self._busy = False
        self._inserts: dict[tuple[str, ...], PreparedInsert] = {}

    def insert(self, values: dict[str, Any], decided: dict[str, Any] | None = None) -> None:
        """Insert one row (and its *decided* ``route_arrivals`` row) and commit it (durably,
        as the engine commits)."""
        mine = _PendingRow(values, decided)
        with self._cond:
            self._queue.append(mine)
            while self._busy and not mine.done:
                self._cond.wait()
            if not mine.done:
                batch, self._queue = self._queue, []
                self._busy = True
        if not mine.done:
            try:
                self._commit(batch)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()
        if mine.error is not None:
            raise mine.error

    def _commit(self, batch: list[_PendingRow]) -> None:
        try:
            self._transaction(batch)
        except IntegrityError as exc:
            if len(batch) == 1:
                batch[0].error = exc
            else:
                for row in batch:
                    try:
                        self._transaction([row])
                    except Exception as row_exc:  # handed to that row's caller
                        row.error = row_exc
        except BaseException as exc:
            for row in batch:
                row.error = exc
        for row in batch:
            row.done = True

    def _transaction(self, rows: list[_PendingRow]) -> None:
        with self.engine.begin() as conn:
            values = [row.values for row in rows]
            self._insert(_INSTANCES_TABLE, values).execute(conn, values)
            decided = [row.decided for row in rows if row.decided is not None]
            if decided:
                self._insert(_ROUTE_ARRIVALS, decided).execute(conn, decided)

    def _insert(self, table: Table, rows: list[dict[str, Any]]) -> PreparedInsert:
        """The prepared insert into *table* for *rows* (all with the keys of the first: every
        row of a table here is built by one function), compiled once per table and keys."""
        key = (table.name, *rows[0])
        prepared = self._inserts.get(key)
        if prepared is None:
            prepared = PreparedInsert(table, tuple(rows[0]), self.engine.dialect)
            self._inserts[key] = prepared
        return prepared
