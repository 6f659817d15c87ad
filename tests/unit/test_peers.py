"""Peer files: validation of the whole directory, inbound matching."""

from __future__ import annotations

from pathlib import Path

import pytest

from ctnode.dicom.contexts import Service
from ctnode.errors import ConfigError, NotFound
from ctnode.peers import load_peers, normalize_address


def _peer(directory: Path, name: str, text: str) -> None:
    directory.mkdir(exist_ok=True)
    (directory / f"{name}.yaml").write_text(text)


def test_loads_peers_and_matches_callers(tmp_path: Path) -> None:
    """A peer calling with its AE title from its host is found; other callers are not."""
    _peer(tmp_path, "pacs", "ae_title: PACS\nhost: 127.0.0.1\nport: 104\naccept: [echo, store]\n")
    registry = load_peers(tmp_path)
    peer = registry.get("pacs")
    assert peer.may(Service.STORE) and not peer.may(Service.COMMITMENT_REPORT)
    assert registry.match_inbound("PACS", "127.0.0.1").peer is peer
    assert registry.match_inbound("PACS", "::ffff:127.0.0.1").peer is peer
    wrong_host = registry.match_inbound("PACS", "10.1.1.1")
    assert wrong_host.peer is None and "not its host" in (wrong_host.problem or "")
    unknown = registry.match_inbound("OTHER", "127.0.0.1")
    assert unknown.peer is None and "not a configured peer" in (unknown.problem or "")
    assert "127.0.0.1" in registry.known_addresses


def test_every_problem_is_reported(tmp_path: Path) -> None:
    """Unknown keys, bad AE titles, bad ports and duplicate AE+host pairs: all listed."""
    _peer(tmp_path, "a", "ae_title: PACS\nhost: 10.0.0.5\nport: 104\n")
    _peer(tmp_path, "b", "ae_title: PACS\nhost: 10.0.0.5\nport: 105\n")
    _peer(tmp_path, "c", "ae_title: 'BAD\\\\AE'\nhost: h\nport: 0\ncolour: red\n")
    _peer(tmp_path, "d", "ae_title: X\nhost: h\nport: 1\naccept: [teleport]\n")
    with pytest.raises(ConfigError) as info:
        load_peers(tmp_path, resolve=False)
    text = "\n".join(info.value.problems)
    assert "c.yaml: ae_title" in text
    assert "c.yaml: port" in text
    assert "c.yaml: colour: unknown key" in text
    assert "d.yaml: accept.0" in text
    assert "b.yaml: ae_title 'PACS' at host '10.0.0.5' is also peer 'a'" in text


def test_yaml_12_in_peer_files(tmp_path: Path) -> None:
    """port: 0104 is 104 and ae_title: NO stays a string in peer files too."""
    _peer(tmp_path, "old", "ae_title: NO\nhost: 127.0.0.1\nport: 0104\n")
    peer = load_peers(tmp_path).get("old")
    assert peer.ae_title == "NO" and peer.port == 104


def test_unknown_peer_names_the_fix(tmp_path: Path) -> None:
    """Asking for a peer that does not exist says which file to add."""
    registry = load_peers(tmp_path)
    with pytest.raises(NotFound, match=r"add nope\.yaml"):
        registry.get("nope")


def test_missing_directory_is_empty_unless_required(tmp_path: Path) -> None:
    """No peers dir: no peers (embedded default); required: an error."""
    assert len(load_peers(tmp_path / "none")) == 0
    with pytest.raises(ConfigError):
        load_peers(tmp_path / "none", required=True)


def test_unresolvable_host_is_a_warning(tmp_path: Path) -> None:
    """A host that does not resolve is kept, with a warning (it cannot call in)."""
    _peer(tmp_path, "far", "ae_title: FAR\nhost: no-such-host.invalid\nport: 104\n")
    registry = load_peers(tmp_path)
    assert registry.get("far").addresses == frozenset()
    assert any("does not resolve" in w for w in registry.warnings)


def test_normalize_address() -> None:
    """IPv4-mapped IPv6 addresses compare equal to IPv4."""
    assert normalize_address("::ffff:10.0.0.5") == "10.0.0.5"
    assert normalize_address("::1") == "::1"
