"""The route matcher: each condition positive and negative, explanations, destinations (no
loop back to the sender, once per destination); pattern semantics with hypothesis."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from ctnode.peers import load_peers
from ctnode.routing.decisions import facts_from_values
from ctnode.routing.match import InstanceFacts, decide, explain, first_failure, number_text
from ctnode.routing.rules import Route, compile_pattern, load_routes
from tests.helpers.procs import write_yaml

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
STUDY_DESCRIPTION = 0x00081030


def _route(tmp: Path, name: str = "r", **spec: Any) -> Route:
    for peer, ae in (("pacs", "PACS"), ("archive", "ARCHIVE"), ("scanner", "SCANNER")):
        write_yaml(
            tmp / "peers" / f"{peer}.yaml", {"ae_title": ae, "host": "127.0.0.1", "port": 104}
        )
    write_yaml(tmp / "routes" / f"{name}.yaml", {"to": ["pacs"], **spec})
    return load_routes(tmp / "routes", load_peers(tmp / "peers", resolve=False)).get(name)


def _facts(**kw: Any) -> InstanceFacts:
    base: dict[str, Any] = {
        "calling_ae": "SCANNER",
        "sop_class_uid": CT,
        "modality": "CT",
        "retrieved": False,
        "values": {STUDY_DESCRIPTION: "CT CHEST W/O"},
    }
    return InstanceFacts(**{**base, **kw})


def test_each_condition_positive_and_negative(tmp_path: Path) -> None:
    """calling_ae, modality, sop_class and tags each hold or fail on their own, and the reason
    names the condition, the value and what was expected."""
    route = _route(
        tmp_path,
        match={
            "calling_ae": ["SCANNER"],
            "modality": ["CT"],
            "sop_class": ["CTImageStorage"],
            "tags": {"StudyDescription": "*chest*"},
        },
    )
    assert first_failure(route, _facts()) is None
    assert (
        first_failure(route, _facts(calling_ae="OTHER"))
        == "calling_ae: OTHER is not one of SCANNER"
    )
    assert first_failure(route, _facts(modality="MR")) == "modality: MR is not one of CT"
    assert first_failure(route, _facts(sop_class_uid=MR)) == (
        f"sop_class: {MR} is not one of CTImageStorage"
    )
    why = first_failure(route, _facts(values={STUDY_DESCRIPTION: "HEAD"}))
    assert why == "tags.StudyDescription: 'HEAD' matches none of '*chest*'"
    assert "absent" in str(first_failure(route, _facts(values={})))


def test_retrieved_and_disabled(tmp_path: Path) -> None:
    """Retrieved instances match only with include_retrieved; a disabled route says so."""
    plain = _route(tmp_path, "plain")
    assert "include_retrieved" in str(first_failure(plain, _facts(retrieved=True)))
    assert decide([plain], _facts(retrieved=True)) == []
    both = _route(tmp_path, "both", include_retrieved=True)
    assert first_failure(both, _facts(retrieved=True)) is None
    off = _route(tmp_path, "off", enabled=False)
    assert "disabled" in str(first_failure(off, _facts()))


def test_never_back_to_the_sender_and_once_per_destination(tmp_path: Path) -> None:
    """A destination whose AE title sent the instance is skipped (and said so); two routes to
    the same destination give one decision (the first route's)."""
    first = _route(tmp_path, "a-first", to=["pacs", "scanner"])
    second = _route(tmp_path, "b-second", to=["pacs", "archive"])
    pairs = decide([first, second], _facts())
    assert [(r.name, d) for r, d in pairs] == [("a-first", "pacs"), ("b-second", "archive")]
    (verdict, _) = explain([first, second], _facts())
    assert verdict.destinations == ("pacs",) and verdict.skipped_senders == ("scanner",)


def test_multi_valued_and_numeric_values(tmp_path: Path) -> None:
    """A pattern matches the whole value or any one of its values; US values read as numbers."""
    route = _route(tmp_path, match={"tags": {"ImageType": "AXIAL", "Rows": "512"}})
    facts = _facts(values={0x00080008: "ORIGINAL\\PRIMARY\\AXIAL", 0x00280010: "512"})
    assert first_failure(route, facts) is None
    assert number_text((512).to_bytes(2, "little"), "US") == "512"
    assert number_text((1).to_bytes(2, "little") + (2).to_bytes(2, "little"), "US") == "1\\2"


_TEXT = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=12)


@given(_TEXT)
def test_a_literal_pattern_matches_itself_case_insensitively(value: str) -> None:
    """Without * or ?, a pattern matches exactly its own text, in any case."""
    literal = value.replace("*", "").replace("?", "")
    regex = compile_pattern(literal)
    assert regex.fullmatch(literal) and regex.fullmatch(literal.swapcase())
    assert not regex.fullmatch(literal + "x")


@given(_TEXT, _TEXT, _TEXT)
def test_star_matches_any_run(prefix: str, middle: str, suffix: str) -> None:
    """`P*S` matches P + anything + S; `?` matches exactly one character."""
    p = prefix.replace("*", "").replace("?", "")
    s = suffix.replace("*", "").replace("?", "")
    assert compile_pattern(f"{p}*{s}").fullmatch(p + middle + s)
    assert compile_pattern("?" * len(middle)).fullmatch(middle)
    assert compile_pattern("*").fullmatch("")


@given(st.text(max_size=20))
def test_patterns_never_raise(pattern: str) -> None:
    """Any text compiles to a matcher (regex metacharacters are literal) that never raises."""
    regex = compile_pattern(pattern)
    regex.fullmatch("x" * 30)
    literal = pattern.replace("*", "").replace("?", "")
    if literal == pattern:
        assert regex.fullmatch(pattern)


def test_facts_decode_text_per_character_set_and_ascii_alike() -> None:
    """The values routes read: ASCII as is (padding stripped), Latin-1 and ISO 2022 (escape
    sequences) decoded per Specific Character Set, binary numbers as decimal text."""
    charset, manufacturer, rows = 0x00080005, 0x00080070, 0x00280010
    read = ((STUDY_DESCRIPTION, None), (manufacturer, None), (rows, "US"))

    def facts(values: dict[int, bytes]) -> dict[int, str]:
        found = facts_from_values(
            values, calling_ae="SCANNER", sop_class_uid=CT, retrieved=False, read=read
        )
        return dict(found.values)

    plain = facts({STUDY_DESCRIPTION: b"CHEST CT ", manufacturer: b"ACME\x00", rows: b"\x00\x02"})
    assert plain == {STUDY_DESCRIPTION: "CHEST CT", manufacturer: "ACME", rows: "512"}
    latin = facts({charset: b"ISO_IR 100", STUDY_DESCRIPTION: "Thorax é".encode("latin-1")})
    assert latin == {STUDY_DESCRIPTION: "Thorax é"}
    jis = "やまだ".encode("iso2022_jp")
    assert b"\x1b" in jis
    japanese = facts({charset: b"\\ISO 2022 IR 87", STUDY_DESCRIPTION: jis})
    assert japanese == {STUDY_DESCRIPTION: "やまだ"}
