"""The ``commit_report`` job: answer a peer's storage commitment request with an N-EVENT-REPORT.

One attempt:

1. the transaction is already ``reported`` (on the N-ACTION's association) → done;
2. decide every instance (``decide``: ``local`` from the index; ``upstream`` from the upstream
   peers' commitments). Instances still pending in upstream mode → what no route commits
   upstream is asked for (``upstream.UpstreamRequests``, at every look), and the job waits
   (``WAIT``, no worker held) and looks again, until ``report_within`` has passed: then what
   is not committed is failed 0x0110;
3. send the report on a **new association** to the peer: Storage Commitment Push Model proposed
   with SCP/SCU role selection SCU 0, SCP 1 (ctnode is the SCP of the SOP class, the one that
   sends N-EVENT-REPORT, PS3.7 D.3.3.4); the A-ASSOCIATE-AC must not refuse that role;
4. the peer's N-EVENT-REPORT-RSP success (or warning) → ``reported``, the job succeeds; a
   failure status, an unreachable or refusing peer → the peer's retry policy decides, and when
   it gives up the transaction is ``failed`` (``ctnode jobs retry`` sends it again). When
   the job ends without the report in any other way (a permanent outcome, a crash, a cancel),
   reads show the transaction ``failed`` too: they derive it from the job's final state
   (``transactions.effective_state``).

With storage not shared between nodes (``storage.shared: false``) the job is pinned to the node
that received the N-ACTION, and only that node's store counts as holding an instance.

``send_on_association`` sends a decided report on the N-ACTION's own association (``intake``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from ctnode.commitment_scp.decide import Answer, Mode, Verdict, decide_all, report_of
from ctnode.commitment_scp.transactions import (
    IncomingCommitments,
    IncomingState,
    IncomingTransaction,
)
from ctnode.config import NodeSettings
from ctnode.db.types import utcnow
from ctnode.dicom import status as st
from ctnode.dicom.commitment_messages import CommitmentReport, encode_report
from ctnode.dicom.contexts import (
    BASIC_SYNTAXES,
    STORAGE_COMMITMENT_PUSH,
    STORAGE_COMMITMENT_PUSH_INSTANCE,
)
from ctnode.errors import TransientError
from ctnode.logs import get_logger
from ctnode.peers import Peer
from ctnode.queue.attempt import Attempt, AttemptResult, Outcome, outcome_of, outcome_of_status
from ctnode.scu.association import params_for
from ctnode.ul import pdu as P
from ctnode.ul.dimse import N_EVENT_REPORT_RQ, CommandValue
from ctnode.ul.requestor import ContextRequest, Requestor

log = get_logger("ctnode.commit_scp")

REPORT_CONTEXTS = [ContextRequest(STORAGE_COMMITMENT_PUSH, BASIC_SYNTAXES)]
#: ctnode proposes to be the SCP of Storage Commitment (it sends the N-EVENT-REPORT).
REPORT_ROLES = [P.RoleSelection(STORAGE_COMMITMENT_PUSH, scu_role=False, scp_role=True)]
#: Upstream mode: how often a waiting report looks at the upstream commitments again.
RECHECK_SECONDS = (1.0, 2.0, 5.0, 10.0, 30.0)


class Committed(Protocol):
    """Which instances a peer has committed (``queue.commit_rounds.CommitmentRepository``)."""

    def committed_by(self, peer: str, sop_instance_uids: Any) -> set[str]:
        """The subset of *sop_instance_uids* *peer* has committed."""


class Upstream(Protocol):
    """Asks the upstream peers to commit what they have not (``upstream.UpstreamRequests``)."""

    def ask(
        self,
        attempt: Attempt,
        tx: IncomingTransaction,
        uids: list[str],
        queued: Mapping[str, Sequence[int]],
        *,
        first: bool,
    ) -> dict[str, list[int]]:
        """Queue push and commit jobs for what of *uids* no upstream peer committed, no route
        commits there and no job in *queued* (``{peer: [job ids]}``) sends; returns *queued*
        with the jobs queued now."""


def event_fields(report: CommitmentReport) -> dict[str, CommandValue | None]:
    """The N-EVENT-REPORT-RQ command fields (Message ID added by the sender)."""
    return {
        "CommandField": N_EVENT_REPORT_RQ,
        "AffectedSOPClassUID": STORAGE_COMMITMENT_PUSH,
        "AffectedSOPInstanceUID": STORAGE_COMMITMENT_PUSH_INSTANCE,
        "EventTypeID": report.event_type,
    }


def report_log_fields(report: CommitmentReport) -> dict[str, Any]:
    """Counts of a report for its log line (never the UIDs of every instance)."""
    return {
        "transaction_uid": report.transaction_uid,
        "event_type": report.event_type,
        "committed": len(report.committed),
        "failed": len(report.failed),
    }


class ReportOperation:
    """Runs ``commit_report`` jobs (see the module docstring)."""

    def __init__(
        self,
        node: NodeSettings,
        transactions: IncomingCommitments,
        committed: Committed,
        upstream: Upstream | None = None,
        observer: Callable[[str, str], None] | None = None,
        *,
        held_on: str | None = None,
    ) -> None:
        self.node = node
        self.transactions = transactions
        self.committed = committed
        self.upstream = upstream
        #: Storage not shared between nodes: the node whose store counts as holding an
        #: instance (this one; its report jobs are pinned here). None: any node's.
        self.held_on = held_on
        #: Told (how, outcome) per report sent: how = same_association | new_association.
        self.observer = observer

    def run(self, attempt: Attempt) -> AttemptResult:
        """One attempt (see the module docstring)."""
        uid = str(attempt.job.payload.get("transaction_uid"))
        tx = self.transactions.get(uid)
        if tx is None:
            return AttemptResult(Outcome.PERMANENT, error=f"no incoming transaction {uid}")
        if tx.state is IncomingState.REPORTED:
            return AttemptResult(Outcome.DONE, message="reported on the N-ACTION's association")
        verdicts = self.decide(tx, attempt)
        pending = [v for v in verdicts if v.answer is Answer.PENDING]
        if pending:
            return self._wait(attempt, tx, len(pending))
        report = report_of(uid, verdicts)
        result = self._send(attempt, report)
        if result.outcome is Outcome.DONE:
            self.transactions.reported(uid, report.event_type)
            attempt.log.info(
                "commit_scp.report.sent",
                **report_log_fields(report),
                association="new",
                report_attempt=tx.report_attempts + 1,
            )
        elif result.outcome is not Outcome.STOPPED:
            self.transactions.attempt_failed(uid, result.error or "report not answered")
            attempt.log.warning(
                "commit_scp.report.failed",
                **report_log_fields(report),
                error=result.error,
                report_attempt=tx.report_attempts + 1,
            )
            if attempt.job.attempts >= attempt.job.max_attempts:
                self.transactions.gave_up(uid, result.error or "report not answered")
        if self.observer is not None:
            self.observer("new_association", result.outcome.value)
        return result

    # ------------------------------------------------------------------ deciding

    def decide(self, tx: IncomingTransaction, attempt: Attempt | None = None) -> list[Verdict]:
        """Every instance's verdict now (recorded)."""
        items = self.transactions.items(tx.transaction_uid)
        refs = [i.reference for i in items]
        uids = [r.sop_instance_uid for r in refs]
        held = self.transactions.held(uids, node_name=self.held_on)
        mode = Mode(tx.mode)
        committed_by: dict[str, set[str]] = {}
        if mode is Mode.UPSTREAM:
            for peer in tx.upstream:
                for uid in self.committed.committed_by(peer, uids):
                    committed_by.setdefault(uid, set()).add(peer)
            expired = tx.deadline is not None and utcnow() >= tx.deadline
            verdicts = decide_all(refs, held, mode, tx.upstream, committed_by, expired=expired)
        else:
            verdicts = decide_all(refs, held, mode)
        self.transactions.record(tx.transaction_uid, verdicts)
        return verdicts

    def _wait(self, attempt: Attempt, tx: IncomingTransaction, pending: int) -> AttemptResult:
        progress = attempt.job.progress or {}
        queued: dict[str, list[int]] = dict(progress.get("upstream_jobs") or {})
        if self.upstream is not None:
            # Every look: a route's forward that failed since is taken over by ctnode's own job.
            uids = [
                i.reference.sop_instance_uid
                for i in self.transactions.items(tx.transaction_uid)
                if i.answer is Answer.PENDING
            ]
            queued = self.upstream.ask(
                attempt, tx, uids, queued, first=not progress.get("upstream_asked")
            )
        looks = int(progress.get("looks", 0))
        delay = RECHECK_SECONDS[min(looks, len(RECHECK_SECONDS) - 1)]
        if tx.deadline is not None:
            left = (tx.deadline - utcnow()).total_seconds()
            delay = max(0.5, min(delay, left + 0.1))
        return AttemptResult(
            Outcome.WAIT,
            wait_seconds=delay,
            result={
                "upstream_asked": True,
                "upstream_jobs": queued,
                "looks": looks + 1,
                "pending": pending,
            },
            message=f"{pending} instance(s) not yet committed by {', '.join(tx.upstream)}",
        )

    # ------------------------------------------------------------------ sending

    def _send(self, attempt: Attempt, report: CommitmentReport) -> AttemptResult:
        peer = attempt.peer
        params = params_for(peer, self.node, REPORT_CONTEXTS, roles=REPORT_ROLES)
        try:
            with Requestor(params) as assoc:
                ctx = assoc.context_for(STORAGE_COMMITMENT_PUSH)
                if ctx is None or ctx.transfer_syntax is None:
                    return AttemptResult(
                        Outcome.TRANSIENT,
                        error=f"{assoc.peer_label} did not accept the Storage Commitment Push "
                        "Model (does it take reports from our AE title?)",
                    )
                role = assoc.peer_roles.get(STORAGE_COMMITMENT_PUSH)
                if role is not None and not role.scp_role:
                    return AttemptResult(
                        Outcome.TRANSIENT,
                        error=f"{assoc.peer_label} refused ctnode the SCP role of Storage "
                        "Commitment (role selection), so it cannot take the report",
                    )
                rsp = assoc.request(
                    ctx.context_id,
                    event_fields(report),
                    encode_report(report, ctx.transfer_syntax),
                )
        except TransientError as exc:  # unreachable, rejected, aborted
            return outcome_of(exc)
        return _answer_outcome(peer, rsp.command.get("Status"))


def _answer_outcome(peer: Peer, code: object) -> AttemptResult:
    if not isinstance(code, int):
        return AttemptResult(
            Outcome.TRANSIENT, error=f"peer {peer.name!r} answered the report without Status"
        )
    outcome = outcome_of_status(st.meaning(code))
    if outcome is Outcome.DONE:
        return AttemptResult(Outcome.DONE, status=code, message="report answered")
    # Whatever the peer's reason, the report stays due: the retry policy decides.
    return AttemptResult(
        Outcome.TRANSIENT,
        status=code,
        error=f"peer {peer.name!r} refused the report: {st.describe(code)}",
    )
