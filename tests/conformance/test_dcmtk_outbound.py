"""Outbound conformance matrix: ctnode's SCU jobs (echo, push, query, move, commit) against DCMTK
``storescp`` started with each accept option, small / odd / large ``-pdu`` and ``+B``, and against
``dcmqrscp`` with small and large ``MaxPDUSize``. Each case names the clause it checks.

What storescp writes is compared with the file ctnode pushed: byte for byte (data set) when
no conversion was needed, value for value (every element, decoded pixel values) when the peer
did not accept the file's own transfer syntax and ctnode converted it (``ctnode.dicom.convert``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ctnode.config import NodeSettings
from ctnode.dicom.contexts import EXPLICIT_VR_LE, IMPLICIT_VR_LE
from ctnode.peers import load_peers
from ctnode.queue.jobs import JobKind
from ctnode.scu.association import params_for
from ctnode.scu.echo import ECHO_CONTEXTS, echo
from ctnode.scu.query_keys import build_keys, query_payload
from tests.conformance.matrix_helpers import (
    CLAUSE,
    COMPRESSED,
    DEFLATED,
    EXPLICIT_VR_BE,
    RECIPES,
    UNDECODABLE,
    Sample,
    assert_same_dataset_bytes,
    assert_same_values,
    dcmqrscp_server,
    files_payload,
    find_instance,
    make_sample,
    submit,
    transfer_syntax_of,
)
from tests.helpers.jobs import wait_job
from tests.helpers.procs import CtnodeProcess, ServerProcess, free_port, run_tool
from tests.helpers.qrdata import peer

#: storescp option sets, each one server for the module.
STORESCP_OPTIONS: dict[str, list[str]] = {
    "default": [],
    "xe": ["+xe"],
    "xb": ["+xb"],
    "xi": ["+xi"],
    "xd": ["+xd", "+B"],
    "xa": ["+xa"],
    "xs": ["+xs"],
    "xr": ["+xr"],
    "bitpreserving": ["+B", "+xa"],
    "pdu4096": ["-pdu", "4096"],
    "pdu4097": ["-pdu", "4097"],
    "pdu131072": ["-pdu", "131072"],
}
#: dcmqrscp MaxPDUSize variants.
QR_PDUS = {"qrsmall": 4096, "qrlarge": 131072}
FAST_QUEUE: dict[str, Any] = {
    "workers": 4,
    "poll_interval": 0.1,
    "lease_seconds": 6,
    "retry": {"max_attempts": 2, "initial_delay": 0.2, "multiplier": 1, "jitter": 0},
}


@dataclass
class Outbound:
    """A running ctnode with one peer per storescp option set and per dcmqrscp."""

    node: CtnodeProcess
    servers: dict[str, ServerProcess]
    work: Path
    #: Study UID of the study each dcmqrscp holds, and its files.
    qr_study: str
    qr_files: list[Sample]

    def received(self, name: str, sample: Sample) -> Path:
        """The file storescp *name* wrote for *sample*."""
        return find_instance(self.work / "scp" / name, sample.sop_instance)

    def run(self, kind: JobKind, name: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Submit a job and wait for it to end; returns its report."""
        job_id = submit(self.node, kind, name, payload)
        return wait_job(self.node, job_id, {"succeeded", "failed"}, timeout=60)


@pytest.fixture(scope="module")
def outbound(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outbound]:
    """storescp per option set, two dcmqrscp holding one study (DCMTK-written explicit little
    endian files), and one ctnode (SQLite) knowing them all as peers."""
    base = tmp_path_factory.mktemp("dcmtk-outbound")
    node_port = free_port()
    servers: dict[str, ServerProcess] = {}
    for name, options in STORESCP_OPTIONS.items():
        port = free_port()
        (base / "scp" / name).mkdir(parents=True)
        servers[name] = ServerProcess(
            ["storescp", "-aet", _ae(name), "-od", str(base / "scp" / name), *options, str(port)],
            port,
            log_path=base / f"storescp-{name}.log",
        )
    for name, pdu in QR_PDUS.items():
        servers[name] = dcmqrscp_server(
            base / name,
            hosts={"ctnode": ("CTNODE", "127.0.0.1", node_port)},
            max_pdu=pdu,
            ae_title=_ae(name),
        )
    qr_files = [make_sample(base / "qrdata", "explicit") for _ in range(2)]
    study = _same_study(qr_files)
    peers = {name: peer(_ae(name), s.port) for name, s in servers.items()}
    started: list[ServerProcess] = []
    try:
        for server in servers.values():
            started.append(server.start())
        for name in QR_PDUS:
            sent = run_tool(
                ["storescu", "-aec", _ae(name), "127.0.0.1", str(servers[name].port)]
                + [str(s.path) for s in qr_files]
            )
            assert sent.returncode == 0, sent.stdout + sent.stderr
        with CtnodeProcess(
            base / "node", port=node_port, config={"queue": FAST_QUEUE}, peers=peers
        ) as node:
            yield Outbound(node, servers, base, study, qr_files)
    finally:
        for server in started:
            server.stop()


def _ae(server: str) -> str:
    """Each peer its own AE title (ctnode wants AE title + host unique among peers)."""
    return server.upper()[:16]


def _same_study(samples: list[Sample]) -> str:
    """Rewrite *samples* into one study (dcmodify keeps DCMTK's encoding); returns its UID."""
    import pydicom

    first = pydicom.dcmread(samples[0].path, stop_before_pixels=True)
    for sample in samples[1:]:
        done = run_tool(
            [
                "dcmodify",
                "-nb",
                "-m",
                f"StudyInstanceUID={first.StudyInstanceUID}",
                "-m",
                f"SeriesInstanceUID={first.SeriesInstanceUID}",
                str(sample.path),
            ]
        )
        assert done.returncode == 0, done.stderr
    return str(first.StudyInstanceUID)


# ------------------------------------------------------------------ push

PUSH_CASES = [
    pytest.param("default", "explicit", EXPLICIT_VR_LE, "bytes", id="PS3.5 A.2 explicit LE"),
    pytest.param("xe", "explicit", EXPLICIT_VR_LE, "bytes", id="PS3.5 A.2 +xe explicit LE"),
    pytest.param("xb", "explicit", EXPLICIT_VR_LE, "bytes", id="PS3.5 A.3 +xb takes LE"),
    pytest.param("xi", "implicit", IMPLICIT_VR_LE, "bytes", id="PS3.5 A.1 +xi implicit"),
    pytest.param("xi", "explicit", IMPLICIT_VR_LE, "values", id="PS3.5 A.1 +xi converts"),
    pytest.param("default", "implicit", EXPLICIT_VR_LE, "values", id="PS3.5 A.2 implicit->ex"),
    pytest.param("default", "big", EXPLICIT_VR_BE, "bytes", id="PS3.5 A.3 big endian as is"),
    pytest.param("xi", "big", IMPLICIT_VR_LE, "values", id="PS3.5 A.3 big endian converted"),
    pytest.param("xd", "deflated", DEFLATED, "bytes", id="PS3.5 A.5 +xd +B deflate as is"),
    pytest.param("default", "deflated", EXPLICIT_VR_LE, "values", id="PS3.5 A.5 inflated"),
    pytest.param("xs", "jpeg_sv1", RECIPES["jpeg_sv1"][2], "bytes", id="PS3.5 A.4.1 +xs"),
    pytest.param("xr", "rle", RECIPES["rle"][2], "bytes", id="PS3.5 A.4.2 +xr"),
    pytest.param("bitpreserving", "explicit", EXPLICIT_VR_LE, "bytes", id="PS3.8 9.3.5 +B"),
    pytest.param(
        "bitpreserving",
        "jls_lossless",
        RECIPES["jls_lossless"][2],
        "bytes",
        id="PS3.8 9.3.5 +B jls",
    ),
    *[
        pytest.param("xa", name, RECIPES[name][2], "bytes", id=f"{CLAUSE[name]} +xa {name}")
        for name in COMPRESSED
    ],
    *[
        pytest.param(
            "default", name, EXPLICIT_VR_LE, "values", id=f"{CLAUSE[name]} decompress {name}"
        )
        for name in COMPRESSED
        if name not in UNDECODABLE
    ],
]


@pytest.mark.parametrize(("server", "recipe", "stored_syntax", "compare"), PUSH_CASES)
def test_push(
    outbound: Outbound, server: str, recipe: str, stored_syntax: str, compare: str
) -> None:
    """A push job to storescp with an accept option: the peer picks one transfer syntax of
    those ctnode proposed (PS3.8 9.3.3.2); the instance arrives byte-identical when it is the
    file's own, value-identical (elements and pixel values) when ctnode had to convert."""
    sample = make_sample(outbound.work / "push", recipe)
    job = outbound.run(JobKind.PUSH, server, files_payload(sample.path))
    assert job["state"] == "succeeded", _why(job)
    received = outbound.received(server, sample)
    assert transfer_syntax_of(received) == stored_syntax
    if compare == "bytes":
        assert_same_dataset_bytes(received, sample.path)
    else:
        assert_same_values(received, sample.path)


@pytest.mark.parametrize(
    "server",
    [
        pytest.param("pdu4096", id="PS3.8 D.1 peer max PDU 4096"),
        pytest.param("pdu4097", id="PS3.8 D.1 peer max PDU odd 4097"),
        pytest.param("pdu131072", id="PS3.8 D.1 peer max PDU 131072"),
    ],
)
def test_push_within_peer_max_pdu(outbound: Outbound, server: str) -> None:
    """A 128 KiB data set pushed to storescp announcing a small, odd (DCMTK rounds it down) or
    large maximum PDU: ctnode fragments it within that maximum (PS3.8 9.3.5, D.1) and storescp
    writes it byte-identical."""
    sample = make_sample(outbound.work / "push", "explicit", size=256)
    job = outbound.run(JobKind.PUSH, server, files_payload(sample.path))
    assert job["state"] == "succeeded", _why(job)
    assert_same_dataset_bytes(outbound.received(server, sample), sample.path)


# ------------------------------------------------------------------ echo, query, move, commit


@pytest.mark.parametrize(
    "server",
    [
        pytest.param("default", id="PS3.7 9.3.5 C-ECHO storescp"),
        pytest.param("pdu4096", id="PS3.8 D.1 C-ECHO max PDU 4096"),
        pytest.param("pdu4097", id="PS3.8 D.1 C-ECHO max PDU odd 4097"),
        pytest.param("pdu131072", id="PS3.8 D.1 C-ECHO max PDU 131072"),
        pytest.param("qrsmall", id="PS3.7 9.3.5 C-ECHO dcmqrscp"),
    ],
)
def test_echo(outbound: Outbound, server: str) -> None:
    """``ctnode echo`` (the same function, in-process): Verification accepted, C-ECHO answered
    Success, association released (PS3.7 9.3.5; PS3.4 A)."""
    settings = NodeSettings(ae_title="CTNODE")
    target = load_peers(outbound.node.peers_dir).get(server)
    assert echo(params_for(target, settings, ECHO_CONTEXTS)) >= 0


@pytest.mark.parametrize(
    "server",
    [
        pytest.param("qrsmall", id="PS3.4 C.4.1 C-FIND max PDU 4096"),
        pytest.param("qrlarge", id="PS3.4 C.4.1 C-FIND max PDU 131072"),
    ],
)
def test_query(outbound: Outbound, server: str) -> None:
    """A STUDY level Study Root C-FIND to dcmqrscp (small or large maximum PDU): one match,
    the study dcmqrscp holds, with the return key filled (PS3.4 C.4.1, PS3.7 9.1.2)."""
    level, keys = build_keys("STUDY", [f"StudyInstanceUID={outbound.qr_study}", "PatientID"])
    job = outbound.run(JobKind.QUERY, server, query_payload(level, keys, 100))
    assert job["state"] == "succeeded", _why(job)
    matches = job["result"]["matches"]
    assert len(matches) == 1
    assert matches[0]["0020000D"]["Value"] == [outbound.qr_study]
    assert matches[0]["00100020"]["Value"] == ["PAT001"]


@pytest.mark.parametrize(
    "server",
    [
        pytest.param("qrsmall", id="PS3.4 C.4.2 C-MOVE to ctnode max PDU 4096"),
        pytest.param("qrlarge", id="PS3.4 C.4.2 C-MOVE to ctnode max PDU 131072"),
    ],
)
def test_move(outbound: Outbound, server: str) -> None:
    """A Study Root C-MOVE of the study to ctnode itself: dcmqrscp's sub-operations (C-STORE
    on a new association to ctnode's SCP) deliver both instances, stored byte-identical to
    what dcmqrscp was given (PS3.4 C.4.2; the data set bytes are not changed on the way)."""
    from ctnode.scu.move_request import make_request

    job = outbound.run(JobKind.MOVE, server, make_request(outbound.qr_study).to_payload())
    assert job["state"] == "succeeded", _why(job)
    store = outbound.node.data_dir / "store"
    for sample in outbound.qr_files:
        assert_same_dataset_bytes(find_instance(store, sample.sop_instance), sample.path)


def test_commit_to_a_peer_without_storage_commitment(outbound: Outbound) -> None:
    """PS3.4 J.3 / PS3.8 9.3.3.2: storescp does not offer Storage Commitment Push Model, so it
    rejects the context; ctnode sends no N-ACTION and the commit job fails with a reason that
    names the missing service."""
    sample = make_sample(outbound.work / "commit", "explicit")
    job = outbound.run(JobKind.COMMIT, "default", files_payload(sample.path))
    assert job["state"] == "failed", job
    assert "commitment" in (job["last_error"] or "").lower(), job["last_error"]


@pytest.mark.parametrize("recipe", sorted(UNDECODABLE), ids=lambda r: f"{CLAUSE[r]} {r}")
def test_push_refuses_what_no_permissive_codec_decodes(outbound: Outbound, recipe: str) -> None:
    """12-bit JPEG Extended (PS3.5 A.4.1, 1.2.840.10008.1.2.4.51) to a peer that accepts only
    uncompressed syntaxes: the permissively licensed codecs ctnode ships cannot decode it, so the
    item fails with a reason that names the syntax and the codec (docs/conformance.md section 4)
    and nothing reaches the peer; never a changed image under a Success."""
    sample = make_sample(outbound.work / "push", recipe)
    job = outbound.run(JobKind.PUSH, "default", files_payload(sample.path))
    assert job["state"] == "failed", _why(job)
    reasons = " ".join(str(i.get("reason") or i.get("error")) for i in job["failed_items"])
    assert "cannot decompress JPEG Extended" in reasons, reasons
    assert "12-bit" in reasons, reasons


def _why(job: dict[str, Any]) -> str:
    """A failed job's error and its failed items' reasons, for the assertion message."""
    reasons = [i.get("reason") or i.get("error") for i in job.get("failed_items", [])]
    return f"{job['state']}: {job['last_error']} {reasons or ''} {job.get('result') or ''}"


@pytest.mark.ondemand
@pytest.mark.parametrize(
    "recipe", [r for r in RECIPES if r not in UNDECODABLE], ids=lambda r: f"{CLAUSE[r]} {r}"
)
@pytest.mark.parametrize("server", ["xi", "xe", "xb", "pdu4096", "pdu4097"])
def test_push_every_syntax_to_every_uncompressed_peer(
    outbound: Outbound, server: str, recipe: str
) -> None:
    """Every sample to each storescp accepting only uncompressed syntaxes (PS3.5 Annex A,
    PS3.8 9.3.3.2): what arrives is value-equal to the file, in the syntax the peer chose."""
    sample = make_sample(outbound.work / "push", recipe)
    job = outbound.run(JobKind.PUSH, server, files_payload(sample.path))
    assert job["state"] == "succeeded", _why(job)
    assert_same_values(outbound.received(server, sample), sample.path)
