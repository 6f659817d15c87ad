"""Query (Study Root C-FIND): the ``query`` job operation — one association, one C-FIND, the
matches stored as the job's result.

Patient names and IDs appear in the query's *output* (that is its point) and in the job's
payload and result, never in log lines: logs name the keys, not their values.
"""

from __future__ import annotations

import time
from typing import Any

from ctnode.config import NodeSettings
from ctnode.dicom import status as st
from ctnode.dicom.contexts import BASIC_SYNTAXES, STUDY_ROOT_FIND
from ctnode.errors import PermanentError, TransientError, UsageError
from ctnode.queue.attempt import Attempt, AttemptResult, Outcome, outcome_of, outcome_of_status
from ctnode.scu.association import params_for
from ctnode.scu.c_find import c_find
from ctnode.scu.identifier import to_dicom_json
from ctnode.scu.query_keys import DEFAULT_LIMIT, QueryKey, build_identifier, missing_upper_keys
from ctnode.scu.services import service_refused
from ctnode.ul.requestor import ContextRequest, Requestor

FIND_CONTEXTS = (ContextRequest(STUDY_ROOT_FIND, BASIC_SYNTAXES),)


def find_meaning(code: int, *, cancelled_by_us: bool) -> st.StatusMeaning:
    """What a C-FIND's final status means: a cancel we asked for (limit reached) is success."""
    if cancelled_by_us and code in (st.SUCCESS, st.CANCEL):
        return st.StatusMeaning.SUCCESS
    return st.meaning(code)


class QueryOperation:
    """Runs ``query`` jobs: one association, one C-FIND, matches stored as the job's result."""

    def __init__(self, node: NodeSettings) -> None:
        self.node = node

    def run(self, attempt: Attempt) -> AttemptResult:
        """One C-FIND; the matches (DICOM JSON, at most ``limit``) become ``result.matches``."""
        peer = attempt.peer
        refused = service_refused(peer, "find", name_file=True)
        if refused is not None:
            return refused
        payload = attempt.job.payload
        try:
            level = str(payload["level"])
            keys = [QueryKey.from_json(k) for k in payload["keys"]]
            limit = int(payload.get("limit") or DEFAULT_LIMIT)
        except (KeyError, TypeError, ValueError, UsageError) as exc:
            return AttemptResult(Outcome.PERMANENT, error=f"invalid query job payload: {exc}")
        identifier = build_identifier(level, keys, peer.config.query.universal_match)
        started = time.monotonic()
        try:
            with Requestor(params_for(peer, self.node, FIND_CONTEXTS)) as assoc:
                found = c_find(assoc, identifier, limit=limit, stop=attempt.stop)
        except (TransientError, PermanentError) as exc:
            return outcome_of(exc)
        log_fields = {
            "qr_level": level,
            # keywords only: values (patient names, IDs) never go to the log
            "matching_keys": [k.keyword for k in keys if k.value is not None],
            "matches": len(found.matches),
            "truncated": found.truncated,
            "status": st.hex_status(found.status),
            "duration_ms": round((time.monotonic() - started) * 1000, 1),
        }
        if attempt.stop and not (limit is not None and len(found.matches) >= limit):
            attempt.log.info("query.stopped", **log_fields)
            return AttemptResult(Outcome.STOPPED)
        code = found.status
        outcome = (
            Outcome.DONE
            if code is None
            else outcome_of_status(find_meaning(code, cancelled_by_us=found.cancelled))
        )
        if outcome is not Outcome.DONE:
            assert code is not None
            message = f"{peer.name!r} answered C-FIND with {st.describe(code)}"
            if found.error_comment:
                message += f": {found.error_comment}"
            missing = missing_upper_keys(level, keys)
            if missing and outcome is Outcome.PERMANENT:
                message += (
                    f" (a {level}-level query may need "
                    + " and ".join(f"-k {kw}=UID" for kw in missing)
                    + ")"
                )
            attempt.log.warning("query.failed", **log_fields)
            return AttemptResult(outcome, status=code, error=message)
        attempt.log.info("query.finished", **log_fields)
        matches = [to_dicom_json(ds) for ds in found.matches[:limit]]
        result: dict[str, Any] = {
            "level": level,
            "count": len(matches),
            "limit": limit,
            "truncated": found.truncated,
            "status": st.hex_status(code),
            "matches": matches,
        }
        if found.undecodable:
            result["undecodable"] = found.undecodable
        if found.partial_keys:
            result["optional_keys_not_supported"] = True
        text = f"{len(matches)} match(es)" + (" (limit reached)" if found.truncated else "")
        return AttemptResult(Outcome.DONE, status=code, result=result, message=text)
