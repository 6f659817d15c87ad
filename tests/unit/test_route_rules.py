"""Route files: validation reports every bad file and key at once; compiled routes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ctnode.errors import ConfigError
from ctnode.peers import load_peers
from ctnode.routing.rules import INSTANCE_WINDOW, load_routes
from tests.helpers.procs import write_yaml

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


def _peers(tmp: Path) -> Any:
    for name, ae in (("pacs", "PACS"), ("archive", "ARCHIVE")):
        write_yaml(
            tmp / "peers" / f"{name}.yaml", {"ae_title": ae, "host": "127.0.0.1", "port": 104}
        )
    write_yaml(
        tmp / "peers" / "viewer.yaml",
        {"ae_title": "VIEWER", "host": "127.0.0.1", "port": 105, "services": ["find"]},
    )
    return load_peers(tmp / "peers", resolve=False)


def test_a_full_route_compiles(tmp_path: Path) -> None:
    """Every key of the issue's example: keywords become UIDs, tag keys become tags, the
    destinations' AE titles are known."""
    write_yaml(
        tmp_path / "routes" / "ct-to-pacs.yaml",
        {
            "match": {
                "calling_ae": ["SCANNER"],
                "modality": ["ct", "PT"],
                "sop_class": ["CTImageStorage", "1.2.840.10008.5.1.4.1.1.88.67"],
                "tags": {"StudyDescription": "*CHEST*", "0018,0015": ["HEAD", "NECK"]},
            },
            "trigger": "study",
            "stable_after": 30,
            "to": ["pacs", "archive"],
            "commit": True,
        },
    )
    routes = load_routes(tmp_path / "routes", _peers(tmp_path))
    route = routes.get("ct-to-pacs")
    assert route.sop_class == {CT_IMAGE, "1.2.840.10008.5.1.4.1.1.88.67"}
    assert route.modality == {"CT", "PT"}
    assert {c.tag for c in route.tags} == {0x00081030, 0x00180015}
    assert route.destination_aes == {"pacs": "PACS", "archive": "ARCHIVE"}
    assert route.wait_seconds == 30 and routes.wanted_tags == {0x00081030, 0x00180015}


def test_defaults_and_instance_window(tmp_path: Path) -> None:
    """Only `to` is required; trigger study, stable 30 s, no commit, enabled; an instance
    trigger waits for the gathering window."""
    write_yaml(tmp_path / "routes" / "all.yaml", {"to": ["pacs"]})
    write_yaml(tmp_path / "routes" / "fast.yaml", {"to": ["pacs"], "trigger": "instance"})
    routes = load_routes(tmp_path / "routes", _peers(tmp_path))
    plain = routes.get("all").config
    assert (plain.trigger, plain.stable_after, plain.commit, plain.enabled) == (
        "study",
        30,
        False,
        True,
    )
    assert routes.get("fast").wait_seconds == INSTANCE_WINDOW


def test_every_bad_file_and_key_is_named(tmp_path: Path) -> None:
    """Unknown keys, unknown peers, unknown keywords, bad SOP classes, binary VRs, a peer that
    does not offer store, bad YAML: one ConfigError listing them all with file and key."""
    d = tmp_path / "routes"
    write_yaml(d / "a.yaml", {"to": ["pacs"], "tirgger": "study"})
    write_yaml(d / "b.yaml", {"to": ["nowhere"]})
    write_yaml(d / "c.yaml", {"to": ["pacs"], "match": {"tags": {"StudyDescripton": "*"}}})
    write_yaml(d / "d.yaml", {"to": ["pacs"], "match": {"sop_class": ["CTImageStorag"]}})
    write_yaml(d / "e.yaml", {"to": ["pacs"], "match": {"tags": {"PixelData": "*"}}})
    write_yaml(d / "f.yaml", {"to": ["viewer"]})
    write_yaml(d / "g.yaml", {"to": ["pacs"], "trigger": "patient", "stable_after": -1})
    (d / "h.yaml").write_text("to: [pacs\n")
    with pytest.raises(ConfigError) as caught:
        load_routes(d, _peers(tmp_path))
    problems = "\n".join(caught.value.problems)
    assert f"{d / 'a.yaml'}: tirgger: unknown key" in problems
    assert f"{d / 'b.yaml'}: to.0: no peer named 'nowhere'" in problems
    assert f"{d / 'c.yaml'}: match.tags.StudyDescripton: unknown DICOM keyword" in problems
    assert f"{d / 'd.yaml'}: match.sop_class.0: 'CTImageStorag'" in problems
    assert f"{d / 'e.yaml'}: match.tags.PixelData" in problems and "VR" in problems
    assert f"{d / 'f.yaml'}: to.0: peer 'viewer' does not list store" in problems
    assert f"{d / 'g.yaml'}: trigger:" in problems and f"{d / 'g.yaml'}: stable_after:" in problems
    assert f"{d / 'h.yaml'}: line" in problems
    assert len(caught.value.problems) >= 9


def test_missing_directory_is_empty(tmp_path: Path) -> None:
    """No routes_dir: no routes (routing is off)."""
    assert len(load_routes(tmp_path / "none", _peers(tmp_path))) == 0


def test_commit_needs_the_commit_service(tmp_path: Path) -> None:
    """commit: true towards a peer without commit in services is refused."""
    write_yaml(
        tmp_path / "peers" / "plain.yaml",
        {"ae_title": "PLAIN", "host": "127.0.0.1", "port": 104, "services": ["store"]},
    )
    write_yaml(tmp_path / "routes" / "r.yaml", {"to": ["plain"], "commit": True})
    with pytest.raises(ConfigError, match="1 problem"):
        load_routes(tmp_path / "routes", load_peers(tmp_path / "peers", resolve=False))
