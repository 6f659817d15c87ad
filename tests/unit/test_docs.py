"""Documentation that cannot drift from the code."""

from __future__ import annotations

from pathlib import Path

from ctnode.config import Settings
from ctnode.docgen import reference, rows
from ctnode.peers import PeerConfig
from ctnode.yamlio import load_yaml_file

ROOT = Path(__file__).resolve().parents[2]


def test_configuration_reference_is_generated_from_the_models() -> None:
    """docs/configuration.md is exactly what `python -m ctnode.docgen` produces now."""
    assert (ROOT / "docs" / "configuration.md").read_text() == reference(ROOT)


def test_every_key_is_described() -> None:
    """Every settings and peer key has a meaning in the commented example files."""
    text = reference(ROOT)
    for model in (Settings, PeerConfig):
        for key, type_name, _ in rows(model):
            if type_name == "mapping":
                continue
            line = next(line for line in text.splitlines() if line.startswith(f"| `{key}` |"))
            assert not line.rstrip().endswith("|  |"), f"{key} has no description"


def test_example_files_are_valid() -> None:
    """config/ctnode.yaml and the example peers load without errors."""
    Settings(**load_yaml_file(ROOT / "config" / "ctnode.yaml"))
    for path in (ROOT / "config" / "peers").glob("*.yaml"):
        PeerConfig(**load_yaml_file(path))


def _conformance_uids(heading: str) -> set[str]:
    """The UIDs in the second column of the table that follows *heading* in conformance.md."""
    text = (ROOT / "docs" / "conformance.md").read_text()
    section = text.split(heading, 1)[1].split("\n## ", 1)[0]
    uids = set()
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and cells[1][:1].isdigit():
            uids.add(cells[1])
    return uids


def test_conformance_statement_lists_every_storage_class() -> None:
    """Appendix A of docs/conformance.md lists exactly the storage SOP classes ctnode accepts
    (PS3.2: the conformance statement names every SOP class with its UID)."""
    from ctnode.dicom.contexts import storage_classes

    assert _conformance_uids("## Appendix A: Storage SOP classes") == set(storage_classes())


def test_conformance_statement_lists_the_scanner_classes() -> None:
    """The overview names the six scanner classes of the seed flows with their UIDs."""
    from ctnode.dicom.contexts import SCANNER_CLASSES

    assert set(SCANNER_CLASSES.values()) <= _conformance_uids("## 1. Overview")
