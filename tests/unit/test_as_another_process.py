"""What the node needs to act exactly as another process (``ctnode push``) would: load the
settings with that process's environment and working directory, and walk its relative paths
naming them as it would (``ctnode.handoff``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from ctnode.config import load_settings
from ctnode.scu.files import collect_files


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_settings_load_as_another_process_would(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``load_settings(env=, cwd=)`` gives what the process with that environment and working
    directory loads, whatever this process's own environment."""
    cwd = tmp_path / "cwd"
    _write(cwd / "c.yaml", f"storage:\n  data_dir: {tmp_path}/d\nqueue:\n  workers: 3\n")
    env = {"ctnode_queue__retry__max_attempts": "7", "CTNODE_NODE__AE_TITLE": "OTHER"}
    monkeypatch.setenv("CTNODE_QUEUE__WORKERS", "9")
    monkeypatch.setenv("CTNODE_NODE__AE_TITLE", "MINE")
    loaded = load_settings(Path("c.yaml"), env=env, cwd=cwd)
    for name in ("CTNODE_QUEUE__WORKERS", "CTNODE_NODE__AE_TITLE"):
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(cwd)
    assert loaded.model_dump() == load_settings(Path("c.yaml")).model_dump()
    assert loaded.queue.workers == 3 and loaded.queue.retry.max_attempts == 7
    assert loaded.node.ae_title == "OTHER"
    # Without env/cwd: this process's own, as before.
    monkeypatch.setenv("CTNODE_NODE__AE_TITLE", "MINE")
    assert load_settings(Path("c.yaml")).node.ae_title == "MINE"


def test_embedded_defaults_of_another_process(tmp_path: Path) -> None:
    settings = load_settings(None, env={"STATE_DIRECTORY": f"{tmp_path}/s"}, cwd=tmp_path)
    assert settings.storage.data_dir == tmp_path / "s"
    assert settings.peers_dir == tmp_path / "config" / "peers"
    assert settings.is_embedded_default


def test_relative_paths_are_walked_as_from_the_commands_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``collect_files(paths, cwd)`` finds and names what ``collect_files(paths)`` does when run
    in *cwd*: the items (absolute paths), and the skipped files named under the path given."""
    source = Path(get_testdata_file("CT_small.dcm"))  # type: ignore[arg-type]
    top = tmp_path / "top"
    for name in ("in/a.dcm", "in/sub/b.dcm", "other/c.dcm"):
        _write(top / name, "").write_bytes(source.read_bytes())
    _write(top / "in" / "sub" / "notes.txt", "not DICOM")
    paths = [Path("in"), Path("./in/sub/b.dcm"), Path("missing"), Path("in/../other"), Path(".")]
    elsewhere = collect_files(paths, top)
    monkeypatch.chdir(top)
    assert elsewhere == collect_files(paths)
    items, skipped = elsewhere
    assert {s.path for s in skipped} >= {"in/sub/notes.txt", "missing"}
    assert all(Path(item.path).is_absolute() for item in items)
