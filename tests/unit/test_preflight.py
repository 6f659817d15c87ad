"""Peer preflight: which contexts are proposed and how refusals are read (pure)."""

from __future__ import annotations

from ctnode.dicom.contexts import (
    CT_IMAGE,
    SCANNER_CLASSES,
    STORAGE_COMMITMENT_PUSH,
    UNCOMPRESSED_SYNTAXES,
)
from ctnode.preflight import PROBED_COMPRESSED, PeerReport, interpret, planned_contexts
from ctnode.ul.requestor import Negotiated


def test_contexts_cover_configured_services_only() -> None:
    """store: the six classes, uncompressed plus each probed compressed syntax; commit alone
    adds only Storage Commitment."""
    store = planned_contexts(("store",))
    assert len(store) == 6 * (1 + len(PROBED_COMPRESSED))
    assert {c.abstract_syntax for c in store} == set(SCANNER_CLASSES.values())
    assert [c.abstract_syntax for c in planned_contexts(("commit",))] == [STORAGE_COMMITMENT_PUSH]


def _n(cid: int, uid: str, proposed: tuple[str, ...], ok: bool) -> Negotiated:
    return Negotiated(cid, uid, proposed, 0 if ok else 4, proposed[0] if ok else None)


def test_refused_compression_is_a_note_refused_uncompressed_a_failure() -> None:
    """A peer refusing only compressed syntaxes is fine (ctnode decompresses); refusing
    uncompressed fails the check."""
    negotiated = [
        _n(1, CT_IMAGE, UNCOMPRESSED_SYNTAXES, True),
        _n(3, CT_IMAGE, (PROBED_COMPRESSED[0],), False),
    ]
    checks = {c.name: c for c in interpret(("store",), negotiated)}
    assert checks["store CT Image Storage"].ok
    note = checks["store CT Image Storage compressed"]
    assert not note.required and "decompressed" in note.detail
    assert not checks["store MR Image Storage"].ok


def test_report_ok_ignores_notes() -> None:
    """A report with only informative failures is OK."""
    report = PeerReport("p", "P", "h:1")
    report.checks = interpret(
        ("commit",), [_n(1, STORAGE_COMMITMENT_PUSH, ("1.2.840.10008.1.2",), True)]
    )
    assert report.ok
    assert report.to_json()["ok"] is True
