"""Storage commitment requests peers sent us (ctnode as SCP): ``commitments`` and
``commitments show UID``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from ctnode.cli.common import JsonOpt, emit_json, fail, print_table, settings_of

if TYPE_CHECKING:
    from ctnode.commitment_scp.transactions import IncomingReader

STATES = ("pending", "reported", "failed")


def _store(ctx: typer.Context) -> IncomingReader:
    """A reader of incoming transactions (these commands write nothing)."""
    from ctnode.commitment_scp.transactions import IncomingReader
    from ctnode.db.engine import session_factory
    from ctnode.db.opening import open_database

    return IncomingReader(session_factory(open_database(settings_of(ctx), migrate_sqlite=True)))


def commitments_list(
    ctx: typer.Context,
    peer: Annotated[str | None, typer.Option(help="Requesting peer name.")] = None,
    state: Annotated[str | None, typer.Option(help="pending, reported or failed.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many (newest first).")] = 50,
    as_json: JsonOpt = False,
) -> None:
    """Storage commitment requests peers sent us (ctnode as SCP), newest first; ``show UID``
    for one."""
    if ctx.invoked_subcommand is not None:
        return
    if state is not None and state not in STATES:
        fail(f"--state must be one of {', '.join(STATES)}", 2)
    rows = _store(ctx).transactions(peer=peer, state=state, limit=limit)
    if as_json:
        emit_json([t.to_json() for t in rows])
        return
    print_table(
        [
            "PEER",
            "TRANSACTION UID",
            "INSTANCES",
            "COMMITTED",
            "FAILED",
            "STATE",
            "REPORTS",
            "RECEIVED",
        ],
        [
            (
                t.peer,
                t.transaction_uid,
                t.instances,
                t.committed,
                t.failed,
                t.state.value,
                t.report_attempts,
                t.received_at.strftime("%Y-%m-%d %H:%M:%S"),
            )
            for t in rows
        ],
    )


def commitments_show(
    ctx: typer.Context,
    transaction_uid: Annotated[str, typer.Argument(help="Transaction UID.")],
    as_json: JsonOpt = False,
) -> None:
    """One incoming transaction: its report and every instance's answer."""
    store = _store(ctx)
    tx = store.get(transaction_uid)
    if tx is None:
        fail(f"no incoming storage commitment transaction {transaction_uid}")
    items = store.items(transaction_uid)
    if as_json:
        emit_json({**tx.to_json(), "items": [i.to_json() for i in items]})
        return
    for key, value in tx.to_json().items():
        if value not in (None, [], ""):
            typer.echo(f"{key + ':':<18}{value}")
    for item in items[:200]:
        reason = f"  0x{item.failure_reason:04X}" if item.failure_reason is not None else ""
        typer.echo(f"  {item.reference.sop_instance_uid}  {item.answer.value}{reason}")
    if len(items) > 200:
        typer.echo(f"  ... and {len(items) - 200} more (use --json)")
