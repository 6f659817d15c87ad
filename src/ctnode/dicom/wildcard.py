"""Wildcard matching (``*`` any run of characters, ``?`` exactly one), in linear-ish time. Pure.

Used by C-FIND matching (PS3.4 C.2.2.2.4) and by route patterns. Patterns and values come
from peers (a C-FIND identifier, a stored instance), so matching must not backtrack
exponentially the way a regular expression ``.*a.*a.*…`` does: the pattern is split at ``*``
into segments; the first must match the start, the last the end, and each one between is
taken at its leftmost place after the previous one (leftmost is always safe for ``*`` globs).
The work is at most (value length × pattern length) character comparisons.
"""

from __future__ import annotations

from collections.abc import Iterable


def _segment_at(segment: str, value: str, pos: int) -> bool:
    """*segment* (``?`` matches any one character) occurs in *value* at *pos*."""
    if pos + len(segment) > len(value):
        return False
    return all(p == "?" or p == value[pos + i] for i, p in enumerate(segment))


def _find(segment: str, value: str, start: int, end: int) -> int:
    """Leftmost position >= *start* where *segment* occurs and ends by *end*; -1 if none."""
    if "?" not in segment:
        return value.find(segment, start, end)
    for pos in range(start, end - len(segment) + 1):
        if _segment_at(segment, value, pos):
            return pos
    return -1


class Wildcard:
    """One pattern; ``fullmatch(value)`` is True when the whole value matches.

    *fold* compares without regard to case (both sides lower-cased).
    """

    __slots__ = ("fold", "segments", "starred")

    def __init__(self, pattern: str, fold: bool = False) -> None:
        self.fold = fold
        text = pattern.lower() if fold else pattern
        self.segments = text.split("*")
        self.starred = len(self.segments) > 1

    def fullmatch(self, value: str) -> bool:
        """True if *value* as a whole matches the pattern."""
        if self.fold:
            value = value.lower()
        segments = self.segments
        if not self.starred:
            return len(value) == len(segments[0]) and _segment_at(segments[0], value, 0)
        first, last = segments[0], segments[-1]
        if len(first) + len(last) > len(value):
            return False
        if not _segment_at(first, value, 0):
            return False
        end = len(value) - len(last)
        if not _segment_at(last, value, end):
            return False
        pos = len(first)
        for segment in segments[1:-1]:
            if not segment:
                continue
            found = _find(segment, value, pos, end)
            if found < 0:
                return False
            pos = found + len(segment)
        return True


class AnyWildcard:
    """Several patterns; ``fullmatch(value)`` is True when any of them matches."""

    __slots__ = ("patterns",)

    def __init__(self, patterns: Iterable[str], fold: bool = False) -> None:
        self.patterns = tuple(Wildcard(p, fold) for p in patterns)

    def fullmatch(self, value: str) -> bool:
        """True if *value* as a whole matches one of the patterns."""
        return any(p.fullmatch(value) for p in self.patterns)
