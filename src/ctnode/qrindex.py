"""Reads the instance index for the Query/Retrieve SCP: the entities a C-FIND looks at, and the
instances a C-MOVE or C-GET sends.

The index is one row per instance, patient, study and series values repeated in each (no
second writer, no extra round trip at ingest). A query streams the live rows of this node
(removed ones never: retention) ordered by the study (by the patient for a PATIENT query), so a
study's rows arrive together and each study's entities are ready as soon as its last row is
read: the first response goes out long before the last row is read. Patient, study and series
values come from their first row that has them; counts and ``ModalitiesInStudy`` /
``SOPClassesInStudy`` are computed over the group. Rows are narrowed in SQL only by the UID
lists and Patient ID the query gives (indexed); everything else is ``dicom.matching``'s job.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, Engine, Table, select

from ctnode.db.engine import READ_ONLY
from ctnode.db.models import Instance
from ctnode.dicom import matching as M

_TABLE = Instance.__table__
assert isinstance(_TABLE, Table)

Values = M.Values
Entity = dict[int, Values]

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
_COLUMNS_FOR = {
    M.PATIENT: _PATIENT + _STUDY[:1] + _SERIES[:1],
    M.STUDY: _PATIENT + _STUDY + _SERIES[:2] + _IMAGE[1:2],
    M.SERIES: _PATIENT + _STUDY + _SERIES,
    M.IMAGE: _PATIENT + _STUDY + _SERIES + _IMAGE,
}
_FILTER_COLUMNS = {
    M.PATIENT_ID: "patient_id",
    M.STUDY_UID: "study_instance_uid",
    M.SERIES_UID: "series_instance_uid",
    M.SOP_UID: "sop_instance_uid",
}
_MODALITIES_IN_STUDY = 0x00080061
_SOP_CLASSES_IN_STUDY = 0x00080062


@dataclass(frozen=True, slots=True)
class RetrieveItem:
    """One instance a C-MOVE or C-GET sends."""

    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    path: Path


def _text(value: Any) -> Values:
    if value is None or value == "":
        return ()
    return (str(value),)


class QrIndex:
    """Read-only queries of the index for this node's Q/R SCP."""

    def __init__(self, engine: Engine, store_root: Path, node_name: str, shared: bool) -> None:
        self.engine = engine
        self.store_root = store_root
        self.node_name = node_name
        #: Shared storage: every node's instances are readable here.
        self.shared = shared

    def _where(self, filters: Mapping[int, Sequence[str]]) -> list[ColumnElement[bool]]:
        c = _TABLE.c
        clauses: list[ColumnElement[bool]] = [c.deleted_at.is_(None)]
        if not self.shared:
            clauses.append(c.node_name == self.node_name)
        for tag, values in filters.items():
            column = c[_FILTER_COLUMNS[tag]]
            clauses.append(column == values[0] if len(values) == 1 else column.in_(values))
        return clauses

    def entities(self, level: str, filters: Mapping[int, Sequence[str]]) -> Iterator[Entity]:
        """Every entity at *level* among the live rows narrowed by *filters* (tag -> values:
        Patient ID, or UID lists), each with its upper levels' values, study by study."""
        columns = _COLUMNS_FOR[level]
        c = _TABLE.c
        group_column = "patient_id" if level == M.PATIENT else "study_instance_uid"
        statement = (
            select(*(c[name] for name, _ in columns))
            .where(*self._where(filters))
            .order_by(c[group_column])
        )
        key_index = [name for name, _ in columns].index(group_column)
        tags = [tag for _, tag in columns]
        emit = {
            M.PATIENT: _patients,
            M.STUDY: _studies,
            M.SERIES: _series,
            M.IMAGE: _images,
        }[level]
        with self.engine.connect() as conn:
            result = conn.execution_options(
                stream_results=True, yield_per=2000, **{READ_ONLY: True}
            ).execute(statement)
            group: list[Sequence[Any]] = []
            current: Any = object()
            for row in result:
                key = row[key_index]
                if key != current and group:
                    yield from emit(tags, group)
                    group = []
                current = key
                group.append(row)
            if group:
                yield from emit(tags, group)

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


def _fill(tags: list[int], rows: list[Sequence[Any]], wanted: range) -> Entity:
    """Values of the columns at positions *wanted*, each from the first row that has one."""
    out: Entity = {}
    missing = list(wanted)
    for row in rows:
        still = []
        for i in missing:
            value = row[i]
            if value is None or value == "":
                still.append(i)
            else:
                out[tags[i]] = (str(value),)
        missing = still
        if not missing:
            break
    return out


def _count(value: int) -> Values:
    return (str(value),)


def _patients(tags: list[int], rows: list[Sequence[Any]]) -> Iterator[Entity]:
    entity = _fill(tags, rows, range(len(_PATIENT)))
    entity[0x00201200] = _count(len({row[4] for row in rows}))
    entity[0x00201202] = _count(len({row[5] for row in rows}))
    entity[0x00201204] = _count(len(rows))
    yield entity


def _studies(tags: list[int], rows: list[Sequence[Any]]) -> Iterator[Entity]:
    n_study = len(_PATIENT) + len(_STUDY)
    entity = _fill(tags, rows, range(n_study))
    series_at, modality_at, sop_class_at = n_study, n_study + 1, n_study + 2
    entity[_MODALITIES_IN_STUDY] = tuple(sorted({r[modality_at] for r in rows} - {None, ""}))
    entity[_SOP_CLASSES_IN_STUDY] = tuple(sorted({r[sop_class_at] for r in rows} - {None, ""}))
    entity[0x00201206] = _count(len({row[series_at] for row in rows}))
    entity[0x00201208] = _count(len(rows))
    yield entity


def _series(tags: list[int], rows: list[Sequence[Any]]) -> Iterator[Entity]:
    upper = len(_PATIENT) + len(_STUDY)
    study = _fill(tags, rows, range(upper))
    by_series: dict[Any, list[Sequence[Any]]] = {}
    for row in rows:
        by_series.setdefault(row[upper], []).append(row)
    for members in by_series.values():
        entity = dict(study)
        entity.update(_fill(tags, members, range(upper, len(tags))))
        entity[0x00201209] = _count(len(members))
        yield entity


def _images(tags: list[int], rows: list[Sequence[Any]]) -> Iterator[Entity]:
    upper = len(_PATIENT) + len(_STUDY)
    study = _fill(tags, rows, range(upper))
    for row in rows:
        entity = dict(study)
        for i in range(upper, len(tags)):
            values = _text(row[i])
            if values:
                entity[tags[i]] = values
        yield entity
