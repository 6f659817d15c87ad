"""Back-fill of the query/retrieve index columns (revision 0005) from the stored files, as
``ctnode db upgrade`` runs it, on SQLite and PostgreSQL.

A node stores a study through storescu (the real ingest path); the test then empties the 0005
columns and ``index_version`` of its rows, as a store written before 0005 has them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
from sqlalchemy import Engine, Table, select, update
from structlog.testing import capture_logs

from ctnode.cli import main
from ctnode.daemon import Runtime
from ctnode.db.models import Instance
from ctnode.storage.backfill import Backfill, warn_pending
from ctnode.storage.rows import INDEX_VERSION
from tests.helpers.node import make_settings, running_node, write_peers
from tests.helpers.procs import free_port, run_tool, write_yaml
from tests.helpers.qrdata import Study, make_study

pytestmark = pytest.mark.slow

PEER_BASE = {"host": "127.0.0.1", "port": 104}
_TABLE = Instance.__table__
assert isinstance(_TABLE, Table)
_COLUMNS = [
    "patient_birth_date",
    "patient_sex",
    "study_id",
    "referring_physician_name",
    "body_part_examined",
    "series_date",
    "series_time",
    "rows",
    "columns",
    "number_of_frames",
    "index_version",
]


@dataclass
class Node:
    """A running node whose rows were written as before revision 0005."""

    runtime: Runtime
    study: Study
    tmp: Path
    #: The 0005 values the ingest path wrote, by SOP Instance UID.
    filled: dict[str, dict[str, Any]]

    @property
    def engine(self) -> Engine:
        return self.runtime.engine

    @property
    def store_dir(self) -> Path:
        return self.runtime.settings.storage.store_dir

    def backfill(self, **options: Any) -> Backfill:
        return Backfill(self.engine, self.store_dir, self.runtime.settings.node.name, **options)

    def values(self) -> dict[str, dict[str, Any]]:
        columns = [_TABLE.c[name] for name in _COLUMNS]
        with self.engine.connect() as conn:
            rows = conn.execute(select(_TABLE.c.sop_instance_uid, *columns)).all()
        return {row[0]: dict(zip(_COLUMNS, row[1:], strict=True)) for row in rows}

    def find(self, *keys: str) -> list[pydicom.Dataset]:
        out = self.tmp / f"find-{free_port()}"
        out.mkdir()
        args = ["findscu", "-S", "-aet", "FINDSCU", "-aec", "CTNODE", "-X", "-od", str(out)]
        for key in keys:
            args += ["-k", key]
        done = run_tool([*args, "127.0.0.1", str(self.runtime.server.port)])
        assert done.returncode == 0, done.stdout + done.stderr
        return [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


@pytest.fixture
def node(db_url: str, engine: Engine, tmp_path: Path) -> Iterator[Node]:
    """Seven instances stored through storescu (on a database *engine* migrated), then their
    0005 columns emptied."""
    write_peers(
        tmp_path,
        {
            "storer": {"ae_title": "STORESCU", **PEER_BASE, "accept": ["store"]},
            "finder": {"ae_title": "FINDSCU", **PEER_BASE, "accept": ["find"]},
        },
    )
    study = make_study(
        tmp_path / "files",
        patient_id="BF001",
        patient_name="Fill^Back",
        study_date="20240401",
        series_sizes=(3, 4),
    )
    settings = make_settings(tmp_path, db_url)
    with running_node(settings) as runtime:
        done = run_tool(
            [
                "storescu",
                "-aet",
                "STORESCU",
                "-aec",
                "CTNODE",
                "127.0.0.1",
                str(runtime.server.port),
                *map(str, study.files),
            ]
        )
        assert done.returncode == 0, done.stderr
        node = Node(runtime, study, tmp_path, {})
        node.filled = node.values()
        assert len(node.filled) == 7
        assert all(v["index_version"] == INDEX_VERSION for v in node.filled.values())
        with runtime.engine.begin() as conn:
            conn.execute(update(_TABLE).values(dict.fromkeys(_COLUMNS)))
        yield node


def test_backfill_fills_rows_in_batches_and_resumes(node: Node) -> None:
    """A back-fill stopped after one batch has committed that batch; a second run fills the
    rest; every row ends with what the ingest path wrote, and C-FIND answers the new keys."""
    by_sex = ("QueryRetrieveLevel=STUDY", "PatientSex=F", "PatientBirthDate", "StudyID")
    assert node.find(*by_sex) == []

    first = node.backfill(batch_size=3)
    assert first.count() == 7
    report = first.run(max_batches=1)
    assert (report.filled, report.missing, report.unreadable) == (3, 0, 0)
    assert not report.complete
    assert sum(v["index_version"] == INDEX_VERSION for v in node.values().values()) == 3

    second = node.backfill(batch_size=3)
    assert second.count() == 4
    report = second.run()
    assert (report.pending, report.filled, report.missing) == (4, 4, 0) and report.complete
    assert node.values() == node.filled
    assert node.backfill().count() == 0

    images = node.find(
        "QueryRetrieveLevel=IMAGE",
        "StudyInstanceUID=" + node.study.uid,
        "SeriesInstanceUID=" + node.study.series[1],
        "Rows=16",
    )
    assert len(images) == 4
    studies = node.find(*by_sex)
    assert [(s.StudyInstanceUID, s.PatientBirthDate, s.StudyID) for s in studies] == [
        (node.study.uid, "19700101", "1")
    ]


def test_start_up_warns_of_rows_pending_back_fill(node: Node) -> None:
    """The daemon's start-up check (it migrates SQLite, never back-fills): rows with a NULL
    ``index_version`` give one ``storage.backfill_pending`` warning with their count and the
    command; once back-filled, nothing is logged. Another node's rows are not counted."""
    name = node.runtime.settings.node.name
    with capture_logs() as logs:
        assert warn_pending(node.engine, name) == 7
        assert warn_pending(node.engine, "other-node") == 0
    assert [(e["event"], e["log_level"], e["rows"], e["command"]) for e in logs] == [
        ("storage.backfill_pending", "warning", 7, "ctnode db upgrade")
    ]
    node.backfill().run()
    with capture_logs() as logs:
        assert warn_pending(node.engine, name) == 0
    assert [e for e in logs if e["event"] == "storage.backfill_pending"] == []


def test_an_interrupted_batch_is_not_committed(node: Node) -> None:
    """Ctrl-C in the middle of a batch: earlier batches stay, the interrupted one leaves its
    rows pending (nothing half-written), and a rerun completes."""
    calls = 0
    backfill = node.backfill(batch_size=2)
    scan = backfill._scan

    def interrupting(*args: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 4:  # the second row of the second batch
            raise KeyboardInterrupt
        return scan(*args)

    backfill._scan = interrupting  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        backfill.run()
    assert backfill.report.filled == 2
    assert node.backfill().count() == 5
    assert node.backfill().run().filled == 5
    assert node.values() == node.filled


def test_a_missing_or_foreign_file_is_reported_and_stays_pending(node: Node) -> None:
    """A row whose file is gone is counted missing, one whose file holds another instance is
    unreadable; both stay pending (a later run retries them), the others are filled."""
    paths = sorted(node.store_dir.rglob("*.dcm"))
    paths[0].unlink()
    paths[1].write_bytes(paths[2].read_bytes())
    report = node.backfill(batch_size=500).run()
    assert (report.pending, report.filled, report.missing, report.unreadable) == (7, 5, 1, 1)
    assert not report.complete
    assert any("missing from the store" in p for p in report.problems)
    assert any("another SOP Instance UID" in p for p in report.problems)
    assert node.backfill().count() == 2


def test_db_upgrade_backfills_and_says_how_to_continue_after_ctrl_c(
    node: Node, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``ctnode db upgrade``: interrupted, it exits 130 with "N of M back-filled; run ...
    again"; run again, it fills every row and says so (``--json`` too)."""
    settings = node.runtime.settings
    config = write_yaml(
        node.tmp / "ctnode.yaml",
        {
            "node": {"ae_title": "CTNODE", "name": settings.node.name},
            "storage": {"data_dir": str(settings.storage.data_dir)},
            "database": {"url": settings.database_url},
            "peers_dir": str(settings.peers_dir),
        },
    )
    scan = Backfill._scan

    def interrupted(self: Backfill, *args: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(Backfill, "_scan", interrupted)
    assert main(["--config", str(config), "db", "upgrade"]) == 130
    err = capsys.readouterr().err
    assert "0 of 7 rows back-filled; run `ctnode db upgrade` again to continue" in err

    monkeypatch.setattr(Backfill, "_scan", scan)
    assert main(["--config", str(config), "db", "upgrade"]) == 0
    out = capsys.readouterr().out
    assert "index back-filled: 7 of 7 rows" in out
    assert node.values() == node.filled
    assert main(["--config", str(config), "db", "upgrade", "--json"]) == 0
    assert '"pending": 0' in capsys.readouterr().out
