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
