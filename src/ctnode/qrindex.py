"""Reads the instance index for the Query/Retrieve SCP: the entities a C-FIND looks at, and the
instances a C-MOVE or C-GET sends.

The index is one row per instance, patient, study and series values repeated in each (no
second writer, no extra round trip at ingest). PATIENT, STUDY and SERIES queries are answered
by one grouped statement over the live rows of this node (removed ones never: retention): one
row per patient (Patient ID), study (Study Instance UID) or series (Study and Series Instance
UID) with its counts (``COUNT(*)``, ``COUNT(DISTINCT ...)``) and distinct modalities and SOP
classes (``ModalitiesInStudy``, ``SOPClassesInStudy``), joined to **the entity's first-stored
live instance** (lowest row id), whose values are the entity's (where a study's instances
disagree, the first one stored speaks for it; a value it lacks is absent). IMAGE queries read
the instances' rows, each answering with its own values.

SQL narrows the entities by the matching keys where it can do so soundly (``_condition``):
UID lists, single values, ``*``/``?`` wildcards (``LIKE``) and date ranges on text columns;
never person names or times (PS3.4 component groups and time parsing stay in Python). The
caller still applies ``dicom.matching`` to every entity: SQL only cuts what reaches Python and
never drops an entity the matcher accepts (``tests/integration/test_qr_sql_matching.py``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    ColumnElement,
    Engine,
    Select,
    String,
    Table,
    and_,
    collate,
    distinct,
    func,
    or_,
    select,
)

from ctnode.db.engine import READ_ONLY, is_sqlite
from ctnode.db.models import Instance
from ctnode.dicom import matching as M

_TABLE = Instance.__table__
assert isinstance(_TABLE, Table)

Values = M.Values
Entity = dict[int, Values]
#: A matching key of a query: tag -> (VR, value as received).
Keys = Mapping[int, tuple[str, str]]

#: (column, tag) of each level's own values.
_PATIENT = [
    ("patient_name", 0x00100010),
    ("patient_id", 0x00100020),
    ("patient_birth_date", 0x00100030),
    ("patient_sex", 0x00100040),
]
_STUDY = [
    ("study_instance_uid", 0x0020000D),
    ("study_date", 0x00080020),
    ("study_time", 0x00080030),
    ("accession_number", 0x00080050),
    ("study_id", 0x00200010),
    ("study_description", 0x00081030),
    ("referring_physician_name", 0x00080090),
]
_SERIES = [
    ("series_instance_uid", 0x0020000E),
    ("modality", 0x00080060),
    ("series_number", 0x00200011),
    ("series_description", 0x0008103E),
    ("body_part_examined", 0x00180015),
    ("series_date", 0x00080021),
    ("series_time", 0x00080031),
]
_IMAGE = [
    ("sop_instance_uid", 0x00080018),
    ("sop_class_uid", 0x00080016),
    ("instance_number", 0x00200013),
    ("rows", 0x00280010),
    ("columns", 0x00280011),
    ("number_of_frames", 0x00280008),
]
#: The values each level answers with.
_VALUES_OF = {
    M.PATIENT: _PATIENT,
    M.STUDY: _PATIENT + _STUDY,
    M.SERIES: _PATIENT + _STUDY + _SERIES,
    M.IMAGE: _PATIENT + _STUDY + _SERIES + _IMAGE,
}
_COLUMN_OF = {tag: name for name, tag in _PATIENT + _STUDY + _SERIES + _IMAGE}
#: The columns that identify an entity of each grouped level.
_GROUP_OF = {
    M.PATIENT: ("patient_id",),
    M.STUDY: ("study_instance_uid",),
    M.SERIES: ("study_instance_uid", "series_instance_uid"),
}
_FILTER_COLUMNS = {
    M.PATIENT_ID: "patient_id",
    M.STUDY_UID: "study_instance_uid",
    M.SERIES_UID: "series_instance_uid",
    M.SOP_UID: "sop_instance_uid",
}
#: A study's distinct values: (tag, column).
_DISTINCT_IN_STUDY = [(0x00080061, "modality"), (0x00080062, "sop_class_uid")]


@dataclass(frozen=True, slots=True)
class RetrieveItem:
    """One instance a C-MOVE or C-GET sends."""

    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    path: Path


@dataclass(frozen=True, slots=True)
class _Dialect:
    """Where qrindex's SQL differs between SQLite and PostgreSQL (ARCHITECTURE rule 7): the
    binary collation (date ranges compare as code points, as Python does), and the aggregate
    of a column's distinct values as a JSON array."""

    collation: str
    distinct_values: Callable[[ColumnElement[Any]], ColumnElement[Any]]


def _dialect(engine: Engine) -> _Dialect:
    if is_sqlite(engine):
        return _Dialect("BINARY", lambda col: func.json_group_array(distinct(col), type_=JSON))
    return _Dialect("C", lambda col: func.json_agg(distinct(col), type_=JSON))


#: What each grouped level counts: (tag, column counted distinct; None: the instances).
_COUNTS: dict[str, list[tuple[int, str | None]]] = {
    M.PATIENT: [
        (0x00201200, "study_instance_uid"),
        (0x00201202, "series_instance_uid"),
        (0x00201204, None),
    ],
    M.STUDY: [(0x00201206, "series_instance_uid"), (0x00201208, None)],
    M.SERIES: [(0x00201209, None)],
}
#: The tag a selected column answers, and how its value becomes the tag's values.
_Decoder = tuple[int, Callable[[Any], Values]]


def _text(value: Any) -> Values:
    if value is None or value == "":
        return ()
    return (str(value),)


def _distinct(value: Any) -> Values:
    """The sorted non-empty values of a JSON array aggregate."""
    items = json.loads(value) if isinstance(value, str) else value or []
    return tuple(sorted({str(v) for v in items if v is not None and v != ""}))


def _like_pattern(part: str) -> str:
    """A ``LIKE`` pattern (escape ``\\``) for a wildcard value: ``*`` is ``%``, ``?`` is ``_``."""
    special = {"*": "%", "?": "_", "%": "\\%", "_": "\\_", "\\": "\\\\"}
    return "".join(special.get(ch, ch) for ch in part)


def _date_bound(text: str) -> str:
    return text.replace(".", "") if len(text) == 10 else text


#: VRs whose matching stays in Python alone: person names (component groups, trailing empty
#: components, folding) and times (``1030`` is ``103000``).
_PYTHON_ONLY_VRS = frozenset({"PN", "TM", "DT"})


def _condition(expr: ColumnElement[Any], vr: str, raw: str, collation: str) -> ColumnElement[bool]:
    """A condition on a text value *expr* that every value ``matching.matcher_for(vr, raw)``
    accepts satisfies (*vr* not in ``_PYTHON_ONLY_VRS``). Exact, except ``LIKE`` on SQLite
    (ASCII case-insensitive: a superset) and dates of ten characters (always let through)."""
    text = raw.strip(" \x00")
    if vr == "UI":
        return expr.in_([u.strip(" \x00") for u in text.split("\\") if u.strip(" \x00")])
    alternatives: list[ColumnElement[bool]] = []
    for part in (p.strip(" \x00") for p in text.split("\\")):
        if vr == "DA" and "-" in part:
            low, _, high = (_date_bound(b.strip(" \x00")) for b in part.partition("-"))
            ordered = collate(expr, collation)
            bounds = [ordered >= low] if low else []
            bounds += [ordered <= high] if high else []
            within = and_(*bounds) if bounds else expr.is_not(None)
            alternatives.append(or_(func.length(expr) == 10, within))
        elif vr in M.WILDCARD_VRS and ("*" in part or "?" in part):
            alternatives.append(expr.like(_like_pattern(part), escape="\\"))
        else:
            alternatives.append(expr == part)
    return or_(*alternatives)


class QrIndex:
    """Read-only queries of the index for this node's Q/R SCP."""

    def __init__(self, engine: Engine, store_root: Path, node_name: str, shared: bool) -> None:
        self.engine = engine
        self.store_root = store_root
        self.node_name = node_name
        #: Shared storage: every node's instances are readable here.
        self.shared = shared
        self._dialect = _dialect(engine)

    def _live(self) -> list[ColumnElement[bool]]:
        """This node's live rows (every node's on shared storage)."""
        c = _TABLE.c
        clauses: list[ColumnElement[bool]] = [c.deleted_at.is_(None)]
        if not self.shared:
            clauses.append(c.node_name == self.node_name)
        return clauses

    def _where(self, filters: Mapping[int, Sequence[str]]) -> list[ColumnElement[bool]]:
        c = _TABLE.c
        clauses = self._live()
        for tag, values in filters.items():
            column = c[_FILTER_COLUMNS[tag]]
            clauses.append(column == values[0] if len(values) == 1 else column.in_(values))
        return clauses

    def entities(self, level: str, keys: Keys) -> Iterator[Entity]:
        """Every entity at *level* among the live rows, each with its upper levels' values,
        narrowed (soundly: a superset of the matches) by the query's matching *keys*."""
        statement, decoders = self._rows(keys) if level == M.IMAGE else self._groups(level, keys)
        with self.engine.connect() as conn:
            result = conn.execution_options(
                stream_results=True, yield_per=2000, **{READ_ONLY: True}
            ).execute(statement)
            for row in result:
                entity: Entity = {}
                for (tag, decode), value in zip(decoders, row, strict=True):
                    values = decode(value)
                    if values:
                        entity[tag] = values
                yield entity

    def _narrowing(self, keys: Keys) -> Iterator[tuple[str, str, str]]:
        """(column, VR, value) of each matching key SQL can narrow by: a text column, a VR
        whose matching SQL can express."""
        c = _TABLE.c
        for tag, (vr, raw) in keys.items():
            name = _COLUMN_OF.get(tag)
            if name is None or vr in _PYTHON_ONLY_VRS:
                continue
            if isinstance(c[name].type, String):
                yield name, vr, raw

    def _groups(self, level: str, keys: Keys) -> tuple[Select[Any], list[_Decoder]]:
        """The statement of a PATIENT, STUDY or SERIES query (one row per entity: its
        first-stored instance's values and the group's counts), and its columns' decoders."""
        c = _TABLE.c
        group = [c[name] for name in _GROUP_OF[level]]
        aggregates: list[ColumnElement[Any]] = [func.min(c.id).label("first_id")]
        for tag, counted in _COUNTS[level]:
            counter = func.count() if counted is None else func.count(distinct(c[counted]))
            aggregates.append(counter.label(f"count_{tag:08x}"))
        if level == M.STUDY:
            for tag, name in _DISTINCT_IN_STUDY:
                distinct_values = self._dialect.distinct_values(c[name])
                aggregates.append(distinct_values.label(f"distinct_{tag:08x}"))
        where = self._live()
        first = _TABLE.alias("first")
        first_where: list[ColumnElement[bool]] = []
        collation = self._dialect.collation
        for name, vr, raw in self._narrowing(keys):
            if name in _GROUP_OF[level]:  # the same in every row of the entity
                where.append(_condition(c[name], vr, raw, collation))
                continue
            first_where.append(_condition(first.c[name], vr, raw, collation))
            if name in _FILTER_COLUMNS.values():
                # An indexed column: read only the entities that have a row satisfying it.
                rows = select(group[-1]).where(
                    *self._live(), _condition(c[name], vr, raw, collation)
                )
                where.append(group[-1].in_(rows))
        entities = (
            select(*(col.label(col.name) for col in group), *aggregates)
            .where(*where)
            .group_by(*group)
            .subquery("entities")
        )
        values = _VALUES_OF[level]
        columns = [first.c[name] for name, _ in values]
        decoders: list[_Decoder] = [(tag, _text) for _, tag in values]
        for tag, _ in _COUNTS[level]:
            columns.append(entities.c[f"count_{tag:08x}"])
            decoders.append((tag, _count))
        if level == M.STUDY:
            for tag, _ in _DISTINCT_IN_STUDY:
                columns.append(entities.c[f"distinct_{tag:08x}"])
                decoders.append((tag, _distinct))
        # Every entity has its first row: LEFT (and no ORDER BY) only makes SQLite hand out
        # each group as soon as it is counted instead of collecting them all first.
        joined = entities.join(first, first.c.id == entities.c.first_id, isouter=True)
        statement = select(*columns).select_from(joined).where(*first_where)
        return statement, decoders

    def _rows(self, keys: Keys) -> tuple[Select[Any], list[_Decoder]]:
        """The statement of an IMAGE query (one row per instance, its own values)."""
        c = _TABLE.c
        values = _VALUES_OF[M.IMAGE]
        where = self._live()
        collation = self._dialect.collation
        where += [_condition(c[n], vr, raw, collation) for n, vr, raw in self._narrowing(keys)]
        statement = (
            select(*(c[name] for name, _ in values))
            .where(*where)
            .order_by(c.study_instance_uid, c.series_instance_uid, c.instance_number, c.id)
        )
        return statement, [(tag, _text) for _, tag in values]

    def instances(self, filters: Mapping[int, Sequence[str]]) -> list[RetrieveItem]:
        """The live instances of this node narrowed by *filters*, in study, series and
        instance order (what a C-MOVE or C-GET sends)."""
        c = _TABLE.c
        statement = (
            select(c.sop_instance_uid, c.sop_class_uid, c.transfer_syntax_uid, c.path)
            .where(*self._where(filters))
            .order_by(
                c.study_instance_uid,
                c.series_number,
                c.series_instance_uid,
                c.instance_number,
                c.id,
            )
        )
        with self.engine.connect().execution_options(**{READ_ONLY: True}) as conn:
            return [
                RetrieveItem(uid, sop_class, syntax, self.store_root / rel)
                for uid, sop_class, syntax, rel in conn.execute(statement)
            ]


def _count(value: int) -> Values:
    return (str(value),)
