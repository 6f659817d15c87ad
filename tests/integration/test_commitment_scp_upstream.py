"""Upstream mode and routing on SQLite and PostgreSQL, without sockets: what a route forwards to
an upstream peer with ``commit: true`` is left to it; ctnode queues its own push-with-commit
only for the rest, once per instance, and takes over an instance whose forward failed."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from sqlalchemy import Engine, update
from sqlalchemy.orm import Session, sessionmaker
from structlog.testing import capture_logs

from ctnode.commitment_scp.transactions import IncomingState, IncomingTransaction
from ctnode.commitment_scp.upstream import UpstreamRequests
from ctnode.config import Settings
from ctnode.db.engine import session_factory
from ctnode.db.models import RouteMatch
from ctnode.db.types import utcnow
from ctnode.dicom.contexts import CT_IMAGE, EXPLICIT_VR_LE, MR_IMAGE
from ctnode.logs import get_logger
from ctnode.peers import load_peers
from ctnode.queue.commit_rounds import CommitmentRepository
from ctnode.queue.repository import JobRepository
from ctnode.routing.arrivals import expand
from ctnode.routing.decisions import RouteHolder
from ctnode.routing.reader import RoutingReader
from ctnode.routing.rules import load_routes
from ctnode.storage import Store, StoreRequest
from tests.helpers.dicomgen import encode_dataset, make_dataset, new_ids
from tests.helpers.procs import write_yaml

NODE = "node-a"


def _transaction(uid: str = "2.25.77") -> IncomingTransaction:
    return IncomingTransaction(
        uid,
        "scanner",
        "SCANNER",
        "127.0.0.1",
        "upstream",
        ("pacs",),
        IncomingState.PENDING,
        utcnow(),
        None,
        None,
        None,
        None,
        None,
        0,
        None,
    )


def _setup(tmp: Path, engine: Engine) -> tuple[Store, JobRepository, UpstreamRequests]:
    """A node whose route ``ct-to-pacs`` forwards CT to pacs with commitment and ``mr-to-pacs``
    forwards MR to pacs without it."""
    settings = Settings(
        node={"ae_title": "CTNODE", "name": NODE},
        storage={"data_dir": str(tmp / "data"), "min_free_bytes": 0},
        database={"url": engine.url.render_as_string(hide_password=False)},
        peers_dir=str(tmp / "peers"),
        routes_dir=str(tmp / "routes"),
        commitment_scp={"mode": "upstream", "upstream": ["pacs"]},
    )
    write_yaml(tmp / "peers" / "pacs.yaml", {"ae_title": "PACS", "host": "127.0.0.1", "port": 1})
    write_yaml(
        tmp / "routes" / "ct-to-pacs.yaml",
        {"match": {"sop_class": ["CTImageStorage"]}, "to": ["pacs"], "commit": True},
    )
    write_yaml(
        tmp / "routes" / "mr-to-pacs.yaml",
        {"match": {"sop_class": ["MRImageStorage"]}, "to": ["pacs"]},
    )
    peers = load_peers(tmp / "peers", resolve=False)
    routes = RouteHolder(load_routes(tmp / "routes", peers), NODE)
    store = Store(settings.storage, session_factory(engine), NODE, decisions=routes)
    store.prepare()
    repo = JobRepository(engine)
    upstream = UpstreamRequests(settings, repo, CommitmentRepository(repo), lambda: peers)
    return store, repo, upstream


def _ingest(store: Store, sop_class: str, number: int, ids: Any) -> str:
    ds = make_dataset(sop_class, ids, number=number)
    request = StoreRequest(
        ds.SOPClassUID, ds.SOPInstanceUID, EXPLICIT_VR_LE, "SCANNER", "127.0.0.1", False
    )
    reception = store.receive(request)
    reception.write(memoryview(encode_dataset(ds)))
    assert reception.complete().outcome == "stored"
    reception.close()
    return str(ds.SOPInstanceUID)


def _items(repo: JobRepository, job_id: int) -> list[str]:
    return [str(i.sop_instance_uid) for i in repo.items(job_id)]


def test_routed_instances_are_left_to_the_route_and_a_failed_forward_is_taken_over(
    tmp_path: Path, engine: Engine, sessions: sessionmaker[Session]
) -> None:
    """Two CT instances routed to pacs with commitment are not pushed by the commitment SCP;
    the MR instance (routed without commitment) and one no route matched (a second MR study
    is the same case) go in ctnode's own push-with-commit job. Looking again queues nothing,
    before and after the forwarder expanded the decisions written at ingest; once a CT forward
    failed, that instance alone goes in a second job (key ``...-1``)."""
    store, repo, upstream = _setup(tmp_path, engine)
    ids = new_ids()
    ct = [_ingest(store, CT_IMAGE, n, ids) for n in (1, 2)]
    mr = _ingest(store, MR_IMAGE, 3, ids)
    uids = [*ct, mr]
    assert RoutingReader(sessions).committed_forwards("pacs", uids) == {
        ct[0]: "pending",
        ct[1]: "pending",
    }
    attempt = SimpleNamespace(log=get_logger("test"))
    tx = _transaction()

    with capture_logs() as logs:
        queued = upstream.ask(attempt, tx, uids, {}, first=True)  # type: ignore[arg-type]
    assert list(queued) == ["pacs"] and len(queued["pacs"]) == 1
    own = repo.get(queued["pacs"][0])
    assert own.kind.value == "push" and own.payload["commit"] is True
    assert _items(repo, own.id) == [mr]
    routed = [e for e in logs if e["event"] == "commit_scp.upstream_routed"]
    assert routed and routed[0]["instances"] == 2

    # Next look: nothing new (the MR is in ctnode's job, the CTs still with the route).
    assert upstream.ask(attempt, tx, uids, queued, first=False) == queued  # type: ignore[arg-type]

    # The decisions written at ingest expanded (the forwarder's pass): still left to the route.
    assert expand(sessions, NODE) == 3
    assert upstream.ask(attempt, tx, uids, queued, first=False) == queued  # type: ignore[arg-type]

    # The route's forward of the first CT failed: ctnode pushes and asks for it itself.
    with sessions() as session:
        session.execute(
            update(RouteMatch)
            .where(RouteMatch.sop_instance_uid == ct[0])
            .values(state="failed", error="refused")
        )
        session.commit()
    with capture_logs() as logs:
        again = upstream.ask(attempt, tx, uids, queued, first=False)  # type: ignore[arg-type]
    assert len(again["pacs"]) == 2
    fallback = repo.get(again["pacs"][1])
    assert _items(repo, fallback.id) == [ct[0]]
    assert fallback.idempotency_key == f"commit-scp-{tx.transaction_uid}-pacs-1"
    asked = [e for e in logs if e["event"] == "commit_scp.upstream_asked"]
    assert asked[0]["route_failed"] == 1
    assert upstream.ask(attempt, tx, uids, again, first=False) == again  # type: ignore[arg-type]


def test_a_resumed_report_job_finds_the_job_it_queued(tmp_path: Path, engine: Engine) -> None:
    """A report job that queued its push but lost its progress (a crash before it was written)
    gets the same job back (idempotency key), not a second push."""
    store, _, upstream = _setup(tmp_path, engine)
    uid = _ingest(store, MR_IMAGE, 1, new_ids())
    attempt = SimpleNamespace(log=get_logger("test"))
    first = upstream.ask(attempt, _transaction(), [uid], {}, first=True)  # type: ignore[arg-type]
    second = upstream.ask(attempt, _transaction(), [uid], {}, first=True)  # type: ignore[arg-type]
    assert first == second
