"""docs/logging.md lists exactly the event names the code emits."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_EMIT = re.compile(
    r"\b(?:log|_log|jlog|logger|self\.log|attempt\.log)\."
    r"(?:debug|info|warning|error|exception|critical)\(\s*\"([a-z_]+(?:\.[a-z_]+)+)\""
)
_ASSIGNED = re.compile(r"\bevent\s*=\s*\"([a-z_]+(?:\.[a-z_]+)+)\"")


def _emitted() -> set[str]:
    names: set[str] = set()
    for path in (ROOT / "src" / "ctnode").rglob("*.py"):
        text = path.read_text()
        names |= set(_EMIT.findall(text)) | set(_ASSIGNED.findall(text))
    return names


def _documented() -> set[str]:
    text = (ROOT / "docs" / "logging.md").read_text()
    return set(re.findall(r"^\| `([a-z_]+(?:\.[a-z_]+)+)` \|", text, flags=re.M))


def test_every_emitted_event_is_documented() -> None:
    """An event the code logs but the operator's reference does not explain is a bug."""
    assert _emitted() - _documented() == set()


def test_every_documented_event_exists() -> None:
    """The reference names no event the code no longer emits."""
    assert _documented() - _emitted() == set()
