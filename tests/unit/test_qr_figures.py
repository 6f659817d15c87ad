"""Query/Retrieve figures of ``ctnode status``: read back from the node's /metrics text."""

from __future__ import annotations

from ctnode.cli.node import _qr_lines
from ctnode.metrics import Metrics, qr_figures


def test_figures_from_the_exposition_by_service_status_and_peer() -> None:
    """Requests by service and final status, sub-operations by status group (one that could
    not be sent counts as ``not_sent``), requests by peer; nothing else of /metrics leaks in."""
    metrics = Metrics()
    for peer, service, code in [
        ("viewer", "find", 0x0000),
        ("viewer", "find", 0x0000),
        ("viewer", "find", 0xA900),
        ("pacs", "move", 0xB000),
        ("viewer", "get", 0xFE00),
    ]:
        metrics.query_answered(peer, service, code)
    for code in (0x0000, 0x0000, 0xA700, None):
        metrics.suboperation_done("pacs", "move", code)
    metrics.instance_received(type("Info", (), {"peer": None})(), 10, 0x0000)
    figures = qr_figures(metrics.render().decode())
    assert figures == {
        "requests": {
            "find": {"0x0000": 2, "0xA900": 1},
            "move": {"0xB000": 1},
            "get": {"0xFE00": 1},
        },
        "suboperations": {"move": {"success": 2, "0xA7xx": 1, "not_sent": 1}},
        "by_peer": {"viewer": {"find": 3, "get": 1}, "pacs": {"move": 1}},
    }
    assert _qr_lines(figures, metrics_enabled=True) == [
        "query/retrieve since start: 3 C-FIND (1 not successful), 1 C-MOVE (1 not successful), "
        "1 C-GET",
        "  C-MOVE sub-operations: 1 0xA7xx, 1 not_sent, 2 success",
        "  pacs: 1 C-MOVE",
        "  viewer: 3 C-FIND, 1 C-GET",
    ]


def test_no_figures_without_metrics() -> None:
    """Without the metrics endpoint, status says why there are no Q/R figures."""
    assert _qr_lines(None, metrics_enabled=False) == [
        "query/retrieve: figures unavailable (needs metrics.enabled)"
    ]
    assert qr_figures("") == {"requests": {}, "suboperations": {}, "by_peer": {}}
