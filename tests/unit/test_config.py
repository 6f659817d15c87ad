"""Settings: YAML 1.2, environment overrides, embedded default, problems listed by key."""

from __future__ import annotations

from pathlib import Path

import pytest

from ctnode.config import OnDuplicate, load_settings
from ctnode.errors import ConfigError


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_embedded_default_works_without_a_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """No file: AE CTNODE on 127.0.0.1:4006, ./var/ctnode, SQLite there, open to callers."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CTNODE_CONFIG", raising=False)
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    s = load_settings()
    assert (s.node.ae_title, s.node.bind, s.node.port) == ("CTNODE", "127.0.0.1", 4006)
    assert s.node.accept_unknown_callers
    assert s.storage.data_dir == tmp_path / "var" / "ctnode"
    assert s.database_url == f"sqlite:///{tmp_path / 'var' / 'ctnode' / 'ctnode.db'}"
    assert s.peers_dir == tmp_path / "config" / "peers"
    assert s.is_embedded_default


def test_state_directory_under_systemd(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Under systemd, $STATE_DIRECTORY is the embedded default's data dir."""
    monkeypatch.delenv("CTNODE_CONFIG", raising=False)
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "state"))
    assert load_settings().storage.data_dir == tmp_path / "state"


def test_yaml_12_semantics(tmp_path: Path) -> None:
    """port: 0104 is 104 and ae_title: NO is the string NO (YAML 1.2, not 1.1)."""
    path = _write(tmp_path / "c.yaml", "node:\n  ae_title: NO\n  port: 0104\n")
    s = load_settings(path)
    assert s.node.ae_title == "NO" and s.node.port == 104
    assert not s.node.accept_unknown_callers  # production default with a file


def test_env_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """CTNODE_NODE__PORT overrides node.port from the file; CTNODE_CONFIG names the file."""
    path = _write(tmp_path / "c.yaml", "node:\n  port: 104\nstorage:\n  on_duplicate: reject\n")
    monkeypatch.setenv("CTNODE_CONFIG", str(path))
    monkeypatch.setenv("CTNODE_NODE__PORT", "11112")
    s = load_settings()
    assert s.node.port == 11112
    assert s.storage.on_duplicate is OnDuplicate.REJECT
    assert s.source_file == path


def test_sizes_parse(tmp_path: Path) -> None:
    """min_free_bytes accepts 1GiB-style sizes."""
    s = load_settings(_write(tmp_path / "c.yaml", "storage:\n  min_free_bytes: 2GiB\n"))
    assert int(s.storage.min_free_bytes) == 2 << 30


def test_every_problem_is_listed_with_its_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unknown keys, bad AE titles and ports are all reported at once, by file and key."""
    monkeypatch.setenv("CTNODE_NODE__MAX_ASSOCIATIONS", "0")
    path = _write(
        tmp_path / "c.yaml",
        "node:\n  ae_title: 'WAY_TOO_LONG_AE_TITLE'\n  port: 70000\n  colour: red\n"
        "storage:\n  on_duplicate: maybe\n",
    )
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    text = "\n".join(info.value.problems)
    assert f"{path}: node.ae_title" in text
    assert f"{path}: node.port" in text
    assert f"{path}: node.colour: unknown key" in text
    assert f"{path}: storage.on_duplicate" in text
    assert "environment CTNODE_NODE__MAX_ASSOCIATIONS: node.max_associations" in text
    assert len(info.value.problems) == 5


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    """A YAML syntax error names the file and line."""
    path = _write(tmp_path / "c.yaml", "node:\n  port: [1,\n")
    with pytest.raises(ConfigError, match=r"c.yaml: line \d+: invalid YAML"):
        load_settings(path)


def test_missing_file(tmp_path: Path) -> None:
    """A missing file is a ConfigError naming it."""
    with pytest.raises(ConfigError, match="file not found"):
        load_settings(tmp_path / "nope.yaml")


def test_settings_are_frozen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings cannot be changed after loading."""
    monkeypatch.chdir(tmp_path)
    s = load_settings()
    with pytest.raises(Exception, match="frozen"):
        s.node.port = 1  # type: ignore[misc]
