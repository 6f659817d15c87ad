"""The C-FIND index reads (``QrIndex.entities``: grouping, counts and narrowing in SQL) against
a plain Python model of the same rules, on SQLite and PostgreSQL.

A random small index (inconsistent values within a study, NULLs and empty strings, LIKE's own
``%`` and ``_``, non-ASCII, removed rows and another node's rows) and random queries at every
level: what survives ``dicom.matching`` after the SQL must be exactly what the matcher accepts
among the entities the Python model builds from every row — the first-stored live instance's
values, the counts over the entity's live instances (docs/query-retrieve.md).
"""

from __future__ import annotations

import random
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, Table, insert

from ctnode.db.models import Instance
from ctnode.dicom import matching as M
from ctnode.qrindex import Entity, QrIndex

NODE = "node-a"
_TABLE = Instance.__table__
assert isinstance(_TABLE, Table)
COLUMNS = set(_TABLE.c.keys())

TEXTS = ["ABC", "abc", "A_C", "A%C", "AxC", "Müller", "x y", "AB", "B\\C", ""]
NAMES = ["Doe^John", "DOE^JOHN", "Doe^Jane", "Müller^Jörg", "Doe^^", "Smith^A=Sumisu", "a%b_c"]
DATES = ["20250101", "20250310", "20251231", "2024", "20240229", ""]
TIMES = ["101010", "1030", "235959.5", "0800"]
MODALITIES = ["CT", "MR", "SR", "ct"]
SOP_CLASSES = ["1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4", "1.2.3_4"]


def column_of(keyword: str) -> str:
    """The index column of a key (``SOPInstanceUID`` is ``sop_instance_uid``)."""
    return re.sub(r"(?<=[a-z])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", keyword).lower()


def _maybe(rng: random.Random, value: Any, pool: list[Any]) -> Any:
    """Mostly *value* (the study's), sometimes another one from *pool* or NULL."""
    roll = rng.random()
    if roll < 0.12:
        return rng.choice(pool)
    if roll < 0.2:
        return None
    return value


#: Where a deviating value of a column comes from (others: by the column's name).
POOLS: dict[str, list[Any]] = {
    "patient_name": NAMES,
    "referring_physician_name": NAMES,
    "modality": MODALITIES,
    "series_number": [1, 2, 7],
}


def _pool_of(name: str) -> list[Any]:
    return DATES if "date" in name else TIMES if "time" in name else TEXTS


def random_rows(rng: random.Random) -> list[dict[str, Any]]:
    """Rows of a dozen studies of five patients, in a random order of storage."""
    rows: list[dict[str, Any]] = []
    patients = [f"P{n}" for n in range(4)] + [None]
    for study in range(12):
        study_uid = f"1.2.9.{study}"
        base = {
            "patient_id": rng.choice(patients),
            "patient_name": rng.choice(NAMES),
            "patient_birth_date": rng.choice(DATES),
            "patient_sex": rng.choice(["F", "M", "O", None]),
            "study_date": rng.choice(DATES),
            "study_time": rng.choice(TIMES),
            "accession_number": rng.choice(TEXTS),
            "study_id": rng.choice(TEXTS),
            "study_description": rng.choice(TEXTS),
            "referring_physician_name": rng.choice(NAMES),
        }
        for series in range(rng.randint(1, 3)):
            series_uid = f"{study_uid}.{series}"
            series_base = {
                "modality": rng.choice(MODALITIES),
                "series_number": rng.randint(1, 3),
                "series_description": rng.choice(TEXTS),
                "body_part_examined": rng.choice(TEXTS),
                "series_date": rng.choice(DATES),
                "series_time": rng.choice(TIMES),
            }
            for number in range(rng.randint(1, 4)):
                sop_uid = f"{series_uid}.{number}"
                row: dict[str, Any] = {
                    "sop_instance_uid": sop_uid,
                    "study_instance_uid": study_uid,
                    "series_instance_uid": series_uid,
                    "sop_class_uid": rng.choice(SOP_CLASSES),
                    "instance_number": number + 1,
                    "rows": 16,
                    "columns": rng.choice([16, 32]),
                    "number_of_frames": None,
                    "transfer_syntax_uid": "1.2.840.10008.1.2.1",
                    "size_bytes": 1,
                    "sha256": "0" * 64,
                    "received_at": datetime(2026, 1, 1, tzinfo=UTC),
                    "path": f"{study_uid}/{series_uid}/{sop_uid}.dcm",
                    "node_name": NODE if rng.random() > 0.08 else "node-b",
                    "deleted_at": None if rng.random() > 0.08 else datetime(2026, 1, 2, tzinfo=UTC),
                }
                for name, value in {**base, **series_base}.items():
                    row[name] = _maybe(rng, value, POOLS.get(name) or _pool_of(name))
                rows.append(row)
    rng.shuffle(rows)
    for row_id, row in enumerate(rows, start=1):
        row["id"] = row_id
    return rows


def _values(value: Any) -> tuple[str, ...]:
    return () if value is None or value == "" else (str(value),)


def model_entities(rows: list[dict[str, Any]], level: str) -> list[Entity]:
    """The entities of *level* per the documented rules, in plain Python."""
    live = [r for r in rows if r["deleted_at"] is None and r["node_name"] == NODE]
    group_of = {
        M.PATIENT: ("patient_id",),
        M.STUDY: ("study_instance_uid",),
        M.SERIES: ("study_instance_uid", "series_instance_uid"),
        M.IMAGE: ("id",),
    }[level]
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for row in live:
        groups.setdefault(tuple(row[c] for c in group_of), []).append(row)
    depth = M.LEVELS.index(level)
    returned = [
        k
        for k in M.KEYS.values()
        if M.LEVELS.index(k.level) <= depth and column_of(k.keyword) in COLUMNS
    ]
    out: list[Entity] = []
    for members in groups.values():
        first = min(members, key=lambda r: r["id"])
        entity: Entity = {}
        for key in returned:
            values = _values(first[column_of(key.keyword)])
            if values:
                entity[key.tag] = values

        def count(column: str | None, members: list[dict[str, Any]] = members) -> tuple[str]:
            return (str(len(members if column is None else {r[column] for r in members})),)

        def distinct(column: str, members: list[dict[str, Any]] = members) -> tuple[str, ...]:
            return tuple(sorted({r[column] for r in members} - {None, ""}))

        if level == M.PATIENT:
            entity[0x00201200] = count("study_instance_uid")
            entity[0x00201202] = count("series_instance_uid")
            entity[0x00201204] = count(None)
        elif level == M.STUDY:
            entity[0x00201206] = count("series_instance_uid")
            entity[0x00201208] = count(None)
            for tag, column in ((0x00080061, "modality"), (0x00080062, "sop_class_uid")):
                if distinct(column):
                    entity[tag] = distinct(column)
        elif level == M.SERIES:
            entity[0x00201209] = count(None)
        out.append(entity)
    return out


def _wildcarded(rng: random.Random, value: str) -> str:
    """*value* with some characters replaced by ``?`` or a tail by ``*``."""
    if not value:
        return "*"
    chars = list(value)
    for _ in range(rng.randint(1, 2)):
        chars[rng.randrange(len(chars))] = "?"
    text = "".join(chars)
    return text[: rng.randint(0, len(text))] + "*" if rng.random() < 0.5 else text


def random_value(rng: random.Random, key: M.KeyDef, rows: list[dict[str, Any]]) -> str:
    """A matching key value for *key*: one in the index, a variant of one, or a made-up one."""
    column = column_of(key.keyword)
    seen = [str(r[column]) for r in rows if column in r and r[column] not in (None, "")]
    if key.tag == 0x00080061:
        seen = MODALITIES
    elif key.tag == 0x00080062:
        seen = SOP_CLASSES
    elif not seen:
        seen = ["1", "2", "3", "10"]
    pick = rng.choice(seen)
    roll = rng.random()
    if key.vr == "UI":
        return "\\".join({pick, rng.choice(seen), "9.9.9"} if roll < 0.4 else {pick})
    if key.vr in M.RANGE_VRS and roll < 0.5:
        low, high = sorted([rng.choice(seen), rng.choice(seen)])
        return rng.choice([f"{low}-{high}", f"{low}-", f"-{high}", f"{high}-{low}"])
    if key.vr in M.WILDCARD_VRS and roll < 0.4:
        return _wildcarded(rng, pick)
    if key.vr == "PN" and roll < 0.55:
        return rng.choice(["Doe*=*", "*=Sumisu", pick.lower(), "Doe^John^^", "a%b_c"])
    if roll < 0.6:
        return f"{pick}\\{rng.choice(seen)}" if key.vr != "PN" else pick
    if roll < 0.7:
        return rng.choice(["A%C", "A_C", "a?c", "%", "_", "B\\C"])
    return pick


def _sorted(entities: list[Entity]) -> list[list[tuple[int, tuple[str, ...]]]]:
    return sorted(sorted(e.items()) for e in entities)


@pytest.fixture
def index(engine: Engine, tmp_path: Path) -> tuple[QrIndex, list[dict[str, Any]]]:
    """A random index (fixed seed) and a reader of it for ``node-a``."""
    rows = random_rows(random.Random(15))
    with engine.begin() as conn:
        conn.execute(insert(Instance), rows)
    return QrIndex(engine, tmp_path, NODE, shared=False), rows


@pytest.mark.parametrize("level", M.LEVELS)
def test_every_entity_and_its_counts_without_keys(
    index: tuple[QrIndex, list[dict[str, Any]]], level: str
) -> None:
    """No matching key: every entity of the level, with the first-stored instance's values
    and the counts and distinct values over its live instances."""
    reader, rows = index
    assert _sorted(list(reader.entities(level, {}))) == _sorted(model_entities(rows, level))


def test_random_queries_match_the_python_model(
    index: tuple[QrIndex, list[dict[str, Any]]],
) -> None:
    """400 random queries (one to three keys of every matching type, both information
    models' levels): SQL narrowing plus the matcher gives exactly the matcher's answer over
    the Python model's entities."""
    reader, rows = index
    rng = random.Random(1015)
    models = {level: model_entities(rows, level) for level in M.LEVELS}
    for _ in range(400):
        level = rng.choice(M.LEVELS)
        depth = M.LEVELS.index(level)
        candidates = [k for k in M.KEYS.values() if M.LEVELS.index(k.level) <= depth]
        chosen = rng.sample(candidates, rng.randint(1, 3))
        keys = {k.tag: (k.vr, random_value(rng, k, rows)) for k in chosen}
        matchers = [(tag, M.matcher_for(vr, raw)) for tag, (vr, raw) in keys.items()]
        active = [(tag, m) for tag, m in matchers if m is not None]
        narrowing = {tag: keys[tag] for tag, _ in active}
        expected = [e for e in models[level] if M.matches(e, active)]
        got = [e for e in reader.entities(level, narrowing) if M.matches(e, active)]
        assert _sorted(got) == _sorted(expected), (level, keys)


def test_sql_narrows_an_exact_value(index: tuple[QrIndex, list[dict[str, Any]]]) -> None:
    """A Patient ID, a wildcard with LIKE's own characters and a date range are applied in
    SQL: only the studies that match come out of the index, with counts over all their
    instances."""
    reader, rows = index
    studies = model_entities(rows, M.STUDY)
    wanted = next(e for e in studies if 0x00100020 in e)
    patient_id = wanted[0x00100020][0]
    keys = {0x00100020: ("LO", patient_id)}
    got = list(reader.entities(M.STUDY, keys))
    expected = [e for e in studies if e.get(0x00100020) == (patient_id,)]
    assert _sorted(got) == _sorted(expected)
    extra = []
    for n, accession in enumerate(["A%C", "AxC", "A_C", "ABC"]):
        row = {**rows[0], "id": 1000 + n, "accession_number": accession}
        row.update(node_name=NODE, deleted_at=None, study_instance_uid=f"1.2.8.{n}")
        extra.append({**row, "sop_instance_uid": f"1.2.8.{n}.1"})
    with reader.engine.begin() as conn:
        conn.execute(insert(Instance), extra)
    literal = {0x00080050: ("SH", "A%?")}  # A%C only: not AxC, A_C or ABC
    assert [e[0x0020000D] for e in reader.entities(M.STUDY, literal)] == [("1.2.8.0",)]
    date_range = {0x00080020: ("DA", "20250101-20251231")}
    got = list(reader.entities(M.STUDY, date_range))
    assert got and all("20250101" <= e[0x00080020][0] <= "20251231" for e in got)
