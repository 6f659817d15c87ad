"""``dicom.wildcard``: ``*``/``?`` matching (PS3.4 C.2.2.2.4; route patterns) that agrees with the
equivalent anchored regular expression and does not backtrack exponentially on peer input."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from ctnode.dicom.wildcard import AnyWildcard, Wildcard

_ALPHABET = st.sampled_from("ab*?")
_VALUES = st.text(alphabet=st.sampled_from("abc"), max_size=14)


def _regex(pattern: str, fold: bool) -> re.Pattern[str]:
    parts = [".*" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in pattern]
    return re.compile("".join(parts), re.DOTALL | (re.IGNORECASE if fold else 0))


@settings(max_examples=600, derandomize=True, database=None)
@given(st.text(alphabet=_ALPHABET, max_size=8), _VALUES, st.booleans())
def test_agrees_with_the_anchored_regular_expression(pattern: str, value: str, fold: bool) -> None:
    """For any pattern of literals, ``*`` and ``?`` and any value, Wildcard.fullmatch says what
    the anchored regular expression says (the definition both C-FIND and routes use)."""
    want = _regex(pattern, fold).fullmatch(value) is not None
    assert Wildcard(pattern, fold).fullmatch(value) is want


def test_case_folding_and_any_of() -> None:
    """With fold, case is ignored; AnyWildcard matches when one of its patterns does."""
    assert Wildcard("*chest*", fold=True).fullmatch("CT CHEST LOW DOSE")
    assert not Wildcard("*chest*").fullmatch("CT CHEST LOW DOSE")
    both = AnyWildcard(["CT*", "*HEAD"], fold=True)
    assert both.fullmatch("ct abdomen") and both.fullmatch("MR head")
    assert not both.fullmatch("MR ABDOMEN")
    assert Wildcard("*").fullmatch("") and not Wildcard("?").fullmatch("")


def test_a_hostile_pattern_on_a_long_value_finishes() -> None:
    """The pattern that makes a backtracking regular expression run for hours
    (``*a*a*a*a*a*a*a*a*b`` on 20,000 ``a``) is answered at once: no match. Before, a C-FIND key
    or a route pattern like it held the interpreter lock and stalled every association."""
    value = "a" * 20_000
    assert not Wildcard("*a*a*a*a*a*a*a*a*b").fullmatch(value)
    assert Wildcard("*a*a*a*a*a*a*a*a*").fullmatch(value)
    assert not Wildcard("*CT*HEAD*NECK", fold=True).fullmatch("ct head " * 2_000)
