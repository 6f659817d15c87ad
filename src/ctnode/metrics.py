"""Prometheus metrics and the ``/metrics``, ``/healthz`` and ``/readyz`` endpoints.

Counters are fed by observers (inbound associations and instances from the SCP, outbound ones
from the SCU operations); gauges that live in the database (jobs by kind and state, the age of
the oldest queued job, commitments) and the free space are computed when scraped. Labels are
peer names, directions, results, job kinds/states and status *groups* — never UIDs or patient
data. Each ``Metrics`` owns its own registry (no module-level state).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from ctnode.dicom import status as st
from ctnode.logs import get_logger

log = get_logger("ctnode.metrics")

UNKNOWN_PEER = "unknown"
#: The status group of a C-MOVE/C-GET sub-operation that could not be sent at all.
NOT_SENT = "not_sent"


def _peer_label(peer: Any) -> str:
    name = getattr(peer, "name", None)
    return str(name) if name else UNKNOWN_PEER


class Metrics:
    """All of ctnode's metrics, in one registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.associations_active = Gauge(
            "ctnode_associations_active", "Associations open now", ["direction"], registry=r
        )
        self.associations_total = Counter(
            "ctnode_associations_total",
            "Associations by outcome",
            ["direction", "peer", "result"],
            registry=r,
        )
        self.instances_received = Counter(
            "ctnode_instances_received_total",
            "Instances stored (C-STORE SCP success)",
            ["peer"],
            registry=r,
        )
        self.bytes_received = Counter(
            "ctnode_bytes_received_total", "Data set bytes stored", ["peer"], registry=r
        )
        self.instances_sent = Counter(
            "ctnode_instances_sent_total",
            "Instances delivered (C-STORE SCU success/warning)",
            ["peer"],
            registry=r,
        )
        self.bytes_sent = Counter(
            "ctnode_bytes_sent_total", "Data set bytes delivered", ["peer"], registry=r
        )
        self.dimse_failures = Counter(
            "ctnode_dimse_failures_total",
            "Failure statuses by direction and status group",
            ["direction", "status_group"],
            registry=r,
        )
        self.job_outcomes = Counter(
            "ctnode_job_attempts_total",
            "Job attempts by kind and outcome",
            ["kind", "outcome"],
            registry=r,
        )
        self.qr_requests = Counter(
            "ctnode_qr_requests_total",
            "C-FIND, C-MOVE and C-GET requests answered, by peer, service and final status",
            ["peer", "service", "status"],
            registry=r,
        )
        self.qr_suboperations = Counter(
            "ctnode_qr_suboperations_total",
            "C-STORE sub-operations of C-MOVE and C-GET, by peer, service and status group",
            ["peer", "service", "status_group"],
            registry=r,
        )

    # -- inbound (ScpApplication Observer protocol) -----------------------------------------

    def association_started(self, info: Any) -> None:
        """An inbound association was accepted."""
        self.associations_active.labels("inbound").inc()

    def association_ended(self, info: Any) -> None:
        """An inbound association ended (any outcome, accepted or not)."""
        if info.established:
            self.associations_active.labels("inbound").dec()
        self.associations_total.labels("inbound", _peer_label(info.peer), info.result).inc()

    def instance_received(self, info: Any, size: int, code: int) -> None:
        """A C-STORE was answered with *code*."""
        if code == st.SUCCESS:
            peer = _peer_label(info.peer)
            self.instances_received.labels(peer).inc()
            self.bytes_received.labels(peer).inc(size)
        else:
            self.dimse_failures.labels("inbound", st.group(code)).inc()

    def query_answered(self, peer: str, service: str, code: int) -> None:
        """A C-FIND, C-MOVE or C-GET ended with *code* (``scp.qr_common.QrObserver``)."""
        self.qr_requests.labels(peer, service, f"0x{code:04X}").inc()

    def suboperation_done(self, peer: str, service: str, code: int | None) -> None:
        """A C-STORE sub-operation of a C-MOVE or C-GET was answered with *code* (None: it
        could not be sent, ``not_sent``)."""
        group = NOT_SENT if code is None else st.group(code)
        self.qr_suboperations.labels(peer, service, group).inc()

    # -- outbound ------------------------------------------------------------------------------

    def outbound_opened(self, peer: str) -> None:
        """An outbound association was established."""
        self.associations_active.labels("outbound").inc()

    def outbound_ended(self, peer: str, result: str, *, was_open: bool) -> None:
        """An outbound association ended (or failed to open) with *result*."""
        if was_open:
            self.associations_active.labels("outbound").dec()
        self.associations_total.labels("outbound", peer, result).inc()

    def instance_sent(self, peer: str, size: int, code: int) -> None:
        """A C-STORE we sent was answered with *code*."""
        if st.meaning(code) in (st.StatusMeaning.SUCCESS, st.StatusMeaning.WARNING):
            self.instances_sent.labels(peer).inc()
            self.bytes_sent.labels(peer).inc(size)
        else:
            self.dimse_failures.labels("outbound", st.group(code)).inc()

    def attempt_finished(self, kind: str, outcome: str) -> None:
        """A job attempt ended."""
        self.job_outcomes.labels(kind, outcome).inc()

    def add_collector(self, collector: Any) -> None:
        """Register a scrape-time collector."""
        self.registry.register(collector)

    def render(self) -> bytes:
        """The exposition text."""
        return bytes(generate_latest(self.registry))


@dataclass(eq=False)
class CachedCollector:
    """A collector whose gauges are built at scrape time and reused for ``ttl`` seconds;
    subclasses build them in ``_build``."""

    ttl: float = field(default=2.0, kw_only=True)
    _cache: tuple[float, list[Any]] | None = field(default=None, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def describe(self) -> list[Any]:
        """Nothing to pre-describe (families are built at collect time)."""
        return []

    def collect(self) -> Iterator[Any]:
        """Build the gauges (or reuse a fresh cache)."""
        with self._lock:
            now = time.monotonic()
            if self._cache is None or now - self._cache[0] > self.ttl:
                self._cache = (now, self._build())
            yield from self._cache[1]

    def _build(self) -> list[Any]:
        raise NotImplementedError


def counts_family(
    name: str, documentation: str, label: str, counts: Callable[[], dict[str, int]]
) -> GaugeMetricFamily:
    """A gauge of *counts* by one label; empty (a warning logged) while they cannot be read."""
    family = GaugeMetricFamily(name, documentation, labels=[label])
    try:
        for key, count in sorted(counts().items()):
            family.add_metric([key], float(count))
    except Exception as exc:
        log.warning("metrics.collect_failed", error=str(exc).splitlines()[0])
    return family


@dataclass(eq=False)
class StateCollector(CachedCollector):
    """Scrape-time gauges from the database and the disk (cached for ``ttl`` seconds)."""

    queue_summary: Callable[[], Any]
    free_bytes: Callable[[], int]
    commitment_counts: Callable[[], dict[str, int]] | None = None

    def _build(self) -> list[Any]:
        families: list[Any] = []
        free = GaugeMetricFamily("ctnode_data_dir_free_bytes", "Free bytes in the data dir")
        try:
            free.add_metric([], float(self.free_bytes()))
        except OSError:
            free.add_metric([], float("nan"))
        families.append(free)
        jobs = GaugeMetricFamily("ctnode_jobs", "Jobs by kind and state", labels=["kind", "state"])
        oldest = GaugeMetricFamily(
            "ctnode_oldest_queued_job_age_seconds",
            "Age of the oldest runnable queued job (0 if none)",
        )
        try:
            summary = self.queue_summary()
            for (kind, state), count in sorted(summary.by_kind_state.items()):
                jobs.add_metric([kind, state], float(count))
            oldest.add_metric([], float(summary.oldest_queued_age or 0.0))
        except Exception as exc:  # database down: expose what we can
            log.warning("metrics.collect_failed", error=str(exc).splitlines()[0])
        families += [jobs, oldest]
        if self.commitment_counts is not None:
            families.append(
                counts_family(
                    "ctnode_commitments",
                    "Storage commitment items by state",
                    "state",
                    self.commitment_counts,
                )
            )
        return families


@dataclass(frozen=True)
class ReadyCheck:
    """One readiness check: a name and a function returning (ok, detail)."""

    name: str
    run: Callable[[], tuple[bool, str]]


def readiness(checks: list[ReadyCheck]) -> tuple[bool, dict[str, Any]]:
    """Run every check; (all ok, JSON body)."""
    body: dict[str, Any] = {}
    ok = True
    for check in checks:
        try:
            passed, detail = check.run()
        except Exception as exc:
            passed, detail = False, str(exc).splitlines()[0]
        body[check.name] = {"ok": passed, "detail": detail}
        ok = ok and passed
    return ok, {"ready": ok, "checks": body}


def data_dir_check(path: Any, min_free: int) -> ReadyCheck:
    """The data dir is writable and has at least *min_free* bytes free."""

    def run() -> tuple[bool, str]:
        probe = os.path.join(path, ".ready-probe")
        try:
            with open(probe, "wb") as fh:
                fh.write(b"ok")
            os.unlink(probe)
        except OSError as exc:
            return False, f"not writable: {exc.strerror or exc}"
        stat = os.statvfs(path)
        free = stat.f_bavail * stat.f_frsize
        if free < min_free:
            return False, f"{free} bytes free, below storage.min_free_bytes ({min_free})"
        return True, f"writable, {free} bytes free"

    return ReadyCheck("data_dir", run)


class HealthServer:
    """``/metrics``, ``/healthz`` (alive) and ``/readyz`` (ready, JSON) on one port."""

    def __init__(
        self,
        bind: str,
        port: int,
        metrics: Metrics,
        ready: Callable[[], tuple[bool, dict[str, Any]]],
    ) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?")[0]
                if path == "/metrics":
                    self._send(200, outer.metrics.render(), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    self._send(200, b'{"alive": true}\n', "application/json")
                elif path == "/readyz":
                    ok, body = outer.ready()
                    self._send(
                        200 if ok else 503, json.dumps(body).encode() + b"\n", "application/json"
                    )
                else:
                    self._send(404, b"not found\n", "text/plain")

            def _send(self, code: int, body: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.metrics = metrics
        self.ready = ready
        self.httpd = ThreadingHTTPServer((bind, port), Handler)
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, name="metrics", daemon=True
        )

    @property
    def port(self) -> int:
        """The bound port."""
        return int(self.httpd.server_address[1])

    def start(self) -> None:
        """Serve in a background thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop serving."""
        self.httpd.shutdown()
        self.httpd.server_close()


@dataclass(eq=False)
class CountsCollector(CachedCollector):
    """A scrape-time gauge of database counts by one label (e.g. incoming storage commitment
    transactions by state), read at most every ``ttl`` seconds."""

    name: str
    documentation: str
    label: str
    counts: Callable[[], dict[str, int]]

    def _build(self) -> list[Any]:
        return [counts_family(self.name, self.documentation, self.label, self.counts)]


def qr_figures(exposition: str) -> dict[str, dict[str, dict[str, int]]]:
    """The Query/Retrieve SCP's counters read back from a ``/metrics`` text (for ``ctnode
    status``): ``requests`` by service and final status, ``suboperations`` by service and
    status group, and ``by_peer`` requests by peer and service."""
    from prometheus_client.parser import text_string_to_metric_families

    figures: dict[str, dict[str, dict[str, int]]] = {
        "requests": {},
        "suboperations": {},
        "by_peer": {},
    }

    def add(table: str, row: str, column: str, value: float) -> None:
        counts = figures[table].setdefault(row, {})
        counts[column] = counts.get(column, 0) + int(value)

    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == "ctnode_qr_requests_total":
                add("requests", labels["service"], labels["status"], sample.value)
                add("by_peer", labels["peer"], labels["service"], sample.value)
            elif sample.name == "ctnode_qr_suboperations_total":
                add("suboperations", labels["service"], labels["status_group"], sample.value)
    return figures
