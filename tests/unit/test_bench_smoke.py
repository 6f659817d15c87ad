"""The benchmark harness imports and formats its tables (fake numbers; nothing is timed)."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
from bench import common, profile_summary
from bench.common import Run


@pytest.mark.parametrize(
    "module",
    [
        "run_all",
        "receive",
        "concurrent",
        "assoc",
        "push",
        "disk",
        "qr",
        "profile_summary",
        "pynetdicom_scp",
        "common",
    ],
)
def test_bench_modules_import(module: str) -> None:
    assert hasattr(
        importlib.import_module(f"bench.{module}"), "main" if module != "common" else "Run"
    )


def test_throughput_table_formats_fake_runs() -> None:
    a = [Run(600, 315_000_000, w, cpu_s=1.5, peak_rss_kib=120 * 1024) for w in (2.0, 2.5, 3.0)]
    b = [Run(600, 315_000_000, w, cpu_s=0.5, peak_rss_kib=16 * 1024) for w in (1.0, 1.2, 1.5)]
    for run in a + b:
        run.extra["other_cpus"] = 0.25
    table = common.throughput_table(
        "fake", {"one": a, "two": b}, ratios=[("one/two", "one", "two", 1.0)], notes=["a note"]
    )
    assert "images/s" in table and "peak RSS MiB" in table
    assert "one/two: min" in table and "target ≥ 1.00" in table
    assert "note: a note" in table and "background:" in table
    assert table.count("\n") >= 6


def test_spread_ratio_and_percentiles() -> None:
    assert common.spread([]) == "–"
    assert common.spread([None, 5.0]) == "5.00"
    assert common.spread([1.0, 2.0, 300.0]).startswith("2.00 [")
    assert common.paired_ratios([Run(10, 1, 1.0)], [Run(10, 1, 2.0)]) == [2.0]
    assert common.percentile(list(range(1, 101)), 90) in (90, 91)
    row = common.latency_row("x", [1.0, 2.0, 3.0])
    assert row[0] == "x" and row[1] == "3"
    assert common.latency_row("empty", [])[2] == "–"


def test_split_deals_all_files() -> None:
    from pathlib import Path

    series = common.Series(Path("."), tuple(Path(f"{i}.dcm") for i in range(10)), 0)
    parts = series.split(4)
    assert sum(len(p) for p in parts) == 10 and len(parts) == 4


def test_profile_summary_on_fake_stacks() -> None:
    lines = [
        "thread (1): assoc-1;Thread.run (threading.py:1);SpoolFile.sync (ctnode/storage.py:1) 7",
        "thread (1): assoc-1;Thread.run (threading.py:1);Session.commit (sqlalchemy/orm/s.py:1);"
        "DefaultDialect.do_commit (sqlalchemy/engine/default.py:1) 3",
        "thread (2): MainThread;EpollSelector.select (selectors.py:1) 100",
    ]
    stacks = profile_summary.parse(lines)
    assert sum(stacks.values()) == 10  # the main thread is left out
    text = profile_summary.summarize(stacks, rate=100, instances=10)
    assert "fdatasync spool file" in text
    assert "index: COMMIT" in text


def test_qr_synthetic_rows_and_find_table() -> None:
    """bench.qr spreads the rows over the studies (unique UIDs, every patient matching
    ``Doe*``) and formats its C-FIND table."""
    from bench import qr

    rows = qr.synthetic_rows({"sha256": "x", "node_name": "old"}, 7, 100, "bench")
    assert len(rows) == 100
    assert len({r["sop_instance_uid"] for r in rows}) == 100
    assert len({r["study_instance_uid"] for r in rows}) == 7
    assert all(r["patient_name"].startswith("Doe^") and r["node_name"] == "bench" for r in rows)
    table = qr.find_table([5.0, 6.0], [50.0, 60.0], 1000, 100_000, ([4.0], [40.0]))
    assert "1000 matches" in table and "node log: first" in table


def test_peer_servers_configuration(tmp_path: Path) -> None:
    """Orthanc is configured with SyncStorageArea and accepts any AE title; nothing is started."""
    from bench import peers

    orthanc = peers.OrthancServer(tmp_path)
    config = orthanc.config()
    assert config["SyncStorageArea"] is True and config["DicomCheckCalledAet"] is False
    assert config["DicomPort"] == orthanc.port != config["HttpPort"]
    assert str(tmp_path) in config["StorageDirectory"]
    assert peers.PynetdicomServer(tmp_path).port > 0
    assert len(peers.DURABILITY_NOTES) == 2


def test_pynetdicom_scp_handler_writes_a_complete_file(tmp_path: Path) -> None:
    """The benchmark's pynetdicom SCP handler stores a Part 10 file under its SOP Instance UID
    and answers Success (no network)."""
    from types import SimpleNamespace

    import pydicom
    from bench.pynetdicom_scp import durable_store_handler

    from tests.helpers.dicomgen import write_series

    src = tmp_path / "src"
    src.mkdir()
    write_series(src, 1, size=16)
    (path,) = src.glob("*.dcm")
    original = pydicom.dcmread(path)
    event = SimpleNamespace(dataset=pydicom.dcmread(path), file_meta=original.file_meta)
    out = tmp_path / "out"
    out.mkdir()
    assert durable_store_handler(out)(event) == 0x0000
    (stored,) = out.iterdir()
    assert stored.name == f"{original.SOPInstanceUID}.dcm"
    assert pydicom.dcmread(stored).PixelData == original.PixelData
