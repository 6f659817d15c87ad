"""docs/architecture.md is the map of the code: it must name every module, so a newcomer who
reads it finds every file, and a new module cannot land without a line saying its job."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src" / "ctnode"


def test_every_module_is_on_the_map() -> None:
    """Each ``src/ctnode/**.py`` (but ``__main__``) appears in the module table by its path."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    missing = [
        str(path.relative_to(PACKAGE))
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name != "__main__.py" and f"`{path.relative_to(PACKAGE)}`" not in text
    ]
    assert missing == [], f"add these modules to docs/architecture.md: {missing}"


def test_no_module_on_the_map_is_gone() -> None:
    """Every module the table names still exists (renames update the map)."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    table = text.split("## Every module", 1)[1]
    named = [
        cell.strip("`")
        for line in table.splitlines()
        if line.startswith("| `")
        for cell in [line.split("|")[1].strip()]
    ]
    assert named, "the module table is empty"
    gone = [name for name in named if not (PACKAGE / name).exists()]
    assert gone == [], f"docs/architecture.md names modules that no longer exist: {gone}"
