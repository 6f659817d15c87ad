"""``ctnode peers check``: find out before a patient is scanned whether a peer will refuse.

For each peer: a C-ECHO; then associations proposing every SOP class and transfer syntax ctnode
would use for the peer's configured ``services`` (the six scanner storage classes with the
uncompressed and the compressed syntaxes ctnode may send, Study Root FIND and MOVE, Storage
Commitment Push Model), reporting what the peer accepted and refused; and, for ``move``, a
C-MOVE probe of a study UID that cannot exist, whose answer tells whether the peer knows
ctnode as a move destination (0xA801 means it does not). A check *fails* when something the
configuration relies on would not work.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from ctnode.config import NodeSettings
from ctnode.dicom import status as st
from ctnode.dicom.contexts import (
    BASIC_SYNTAXES,
    COMPRESSED_SYNTAXES,
    SCANNER_CLASSES,
    STORAGE_COMMITMENT_PUSH,
    STUDY_ROOT_FIND,
    STUDY_ROOT_MOVE,
    UNCOMPRESSED_SYNTAXES,
    VERIFICATION,
)
from ctnode.dicom.uids import generate_uid
from ctnode.errors import AssociationAborted, AssociationRejected, CtnodeError, PeerUnreachable
from ctnode.peers import Peer
from ctnode.scu.association import params_for
from ctnode.ul.dimse import C_ECHO_RQ, C_MOVE_RQ
from ctnode.ul.requestor import ContextRequest, Negotiated, Requestor

#: Compressed syntaxes probed per storage class (one context each).
PROBED_COMPRESSED = (
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.70",  # JPEG lossless SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS lossless
    "1.2.840.10008.1.2.5",  # RLE lossless
)
assert set(PROBED_COMPRESSED) <= set(COMPRESSED_SYNTAXES)

SERVICE_CLASSES = {
    "find": STUDY_ROOT_FIND,
    "move": STUDY_ROOT_MOVE,
    "commit": STORAGE_COMMITMENT_PUSH,
}


@dataclass
class Check:
    """One line of the report."""

    name: str
    ok: bool
    detail: str
    #: False for purely informative lines (e.g. compression refused: ctnode converts).
    required: bool = True


@dataclass
class PeerReport:
    """Everything found out about one peer."""

    peer: str
    ae_title: str
    address: str
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing the configuration relies on failed."""
        return all(c.ok for c in self.checks if c.required)

    def to_json(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "peer": self.peer,
            "ae_title": self.ae_title,
            "address": self.address,
            "ok": self.ok,
            "checks": [asdict(c) for c in self.checks],
        }


def planned_contexts(services: tuple[str, ...]) -> list[ContextRequest]:
    """The contexts ctnode would propose to a peer with these services (pure)."""
    contexts: list[ContextRequest] = []
    if "store" in services:
        for uid in SCANNER_CLASSES.values():
            contexts.append(ContextRequest(uid, UNCOMPRESSED_SYNTAXES))
            contexts.extend(ContextRequest(uid, (ts,)) for ts in PROBED_COMPRESSED)
    for service, uid in SERVICE_CLASSES.items():
        if service in services:
            contexts.append(ContextRequest(uid, BASIC_SYNTAXES))
    return contexts


def interpret(services: tuple[str, ...], negotiated: list[Negotiated]) -> list[Check]:
    """Turn negotiation results into checks (pure)."""
    checks: list[Check] = []
    by_class: dict[str, list[Negotiated]] = {}
    for n in negotiated:
        by_class.setdefault(n.abstract_syntax, []).append(n)
    if "store" in services:
        for name, uid in SCANNER_CLASSES.items():
            results = by_class.get(uid, [])
            plain = [n for n in results if n.proposed == UNCOMPRESSED_SYNTAXES and n.accepted]
            compressed_ok = [
                n.transfer_syntax
                for n in results
                if n.proposed != UNCOMPRESSED_SYNTAXES and n.accepted
            ]
            refused = [
                n.proposed[0]
                for n in results
                if n.proposed != UNCOMPRESSED_SYNTAXES and not n.accepted
            ]
            if plain:
                checks.append(
                    Check(f"store {name}", True, f"accepted ({plain[0].transfer_syntax})")
                )
            else:
                checks.append(
                    Check(
                        f"store {name}",
                        False,
                        "refused for uncompressed syntaxes: pushes of this class will fail",
                    )
                )
            if refused:
                checks.append(
                    Check(
                        f"store {name} compressed",
                        bool(compressed_ok) or not refused,
                        f"refuses {', '.join(refused)}"
                        + ("; ctnode sends those files decompressed" if plain else ""),
                        required=False,
                    )
                )
    for service, uid in SERVICE_CLASSES.items():
        if service not in services:
            continue
        accepted = [n for n in by_class.get(uid, []) if n.accepted]
        label = {
            "find": "C-FIND (Study Root)",
            "move": "C-MOVE (Study Root)",
            "commit": "Storage Commitment",
        }[service]
        checks.append(
            Check(
                service,
                bool(accepted),
                f"{label} accepted ({accepted[0].transfer_syntax})"
                if accepted
                else f"{label} refused: the peer file lists '{service}' in services",
            )
        )
    return checks


class Preflight:
    """Runs the checks against live peers."""

    def __init__(self, node: NodeSettings, connect: Callable[..., Requestor] = Requestor) -> None:
        self.node = node
        self.connect = connect

    def check(self, peer: Peer) -> PeerReport:
        """Run every check for *peer* (never raises for network failures)."""
        report = PeerReport(peer.name, peer.ae_title, f"{peer.host}:{peer.port}")
        echo = self._echo(peer)
        report.checks.append(echo)
        if not echo.ok:
            return report
        services = peer.config.services
        contexts = planned_contexts(services)
        negotiated: list[Negotiated] = []
        for start in range(0, len(contexts), 120):
            chunk = contexts[start : start + 120]
            try:
                with self.connect(params_for(peer, self.node, chunk)) as assoc:
                    negotiated.extend(assoc.negotiated)
            except (CtnodeError, OSError) as exc:
                report.checks.append(Check("negotiation", False, str(exc)))
                return report
        report.checks.extend(interpret(services, negotiated))
        if "move" in services and any(
            n.accepted and n.abstract_syntax == STUDY_ROOT_MOVE for n in negotiated
        ):
            report.checks.append(self._move_destination(peer))
        report.checks.extend(self._callbacks(peer))
        return report

    def _echo(self, peer: Peer) -> Check:
        started = time.monotonic()
        try:
            with self.connect(
                params_for(peer, self.node, [ContextRequest(VERIFICATION, BASIC_SYNTAXES)])
            ) as assoc:
                ctx = assoc.context_for(VERIFICATION)
                if ctx is None:
                    return Check("echo", False, "Verification refused")
                rsp = assoc.request(
                    ctx.context_id, {"AffectedSOPClassUID": VERIFICATION, "CommandField": C_ECHO_RQ}
                )
                code = rsp.command.get_int("Status")
        except (PeerUnreachable, AssociationRejected, AssociationAborted) as exc:
            return Check("echo", False, str(exc))
        if code != st.SUCCESS:
            return Check("echo", False, f"C-ECHO answered {st.describe(code)}")
        return Check("echo", True, f"ok in {(time.monotonic() - started) * 1000:.1f} ms")

    def _move_destination(self, peer: Peer) -> Check:
        """C-MOVE of a study that cannot exist, to ctnode: does the peer refuse our AE?"""
        from pydicom.dataset import Dataset

        from ctnode.scu.identifier import encode_identifier

        ours = peer.config.local_ae_title or self.node.ae_title
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "STUDY"
        identifier.StudyInstanceUID = generate_uid()
        try:
            with self.connect(
                params_for(peer, self.node, [ContextRequest(STUDY_ROOT_MOVE, BASIC_SYNTAXES)])
            ) as assoc:
                ctx = assoc.context_for(STUDY_ROOT_MOVE)
                assert ctx is not None
                assert ctx.transfer_syntax is not None
                message_id = assoc.next_message_id()
                assoc.send(
                    ctx.context_id,
                    {
                        "AffectedSOPClassUID": STUDY_ROOT_MOVE,
                        "CommandField": C_MOVE_RQ,
                        "MessageID": message_id,
                        "Priority": 0,
                        "MoveDestination": ours,
                    },
                    encode_identifier(identifier, ctx.transfer_syntax),
                )
                while True:
                    rsp = assoc.receive_response(message_id)
                    code = rsp.command.get_int("Status")
                    if st.category(code) is not st.Category.PENDING:
                        break
        except AssociationAborted as exc:
            return Check(
                "move destination",
                False,
                f"the peer aborted a C-MOVE to {ours!r} ({exc}); it probably does not know "
                f"ctnode: add AE {ours}, this host and port {self.node.port} to its DICOM "
                "nodes (Orthanc: DicomModalities)",
            )
        except (CtnodeError, OSError) as exc:
            return Check("move destination", False, f"C-MOVE probe failed: {exc}")
        if code == st.MOVE_DESTINATION_UNKNOWN:
            return Check(
                "move destination",
                False,
                f"{peer.ae_title} does not know move destination {ours!r}: add AE {ours}, "
                f"this host and port {self.node.port} to its DICOM nodes",
            )
        return Check(
            "move destination",
            True,
            f"a C-MOVE of a non-existent study to {ours!r} was not refused "
            f"({st.describe(code)}); some PACS check the destination only when there is "
            "something to send",
        )

    def _callbacks(self, peer: Peer) -> list[Check]:
        """Can the peer call us back (move sub-operations, commitment reports)?"""
        checks = []
        local = self.node.bind.startswith("127.") or self.node.bind == "::1"
        remote = not all(a.startswith("127.") or a == "::1" for a in peer.addresses)
        if local and remote and ({"move", "commit"} & set(peer.config.services)):
            checks.append(
                Check(
                    "callback address",
                    False,
                    f"node.bind is {self.node.bind}: {peer.host} cannot reach "
                    "ctnode for move results or commitment reports",
                )
            )
        from ctnode.dicom.contexts import Service

        if "move" in peer.config.services and Service.STORE not in peer.config.accept:
            checks.append(
                Check(
                    "callback store",
                    False,
                    "services has 'move' but accept lacks 'store': instances "
                    "moved to ctnode would be refused",
                )
            )
        if "commit" in peer.config.services and Service.COMMITMENT_REPORT not in peer.config.accept:
            checks.append(
                Check(
                    "callback commitment",
                    False,
                    "services has 'commit' but accept lacks 'commitment_report': "
                    "its reports would be refused",
                )
            )
        return checks
