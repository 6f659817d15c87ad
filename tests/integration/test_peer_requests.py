"""``ul.peer_requests``: the acceptor sends requests on the association it accepted and reads
their responses (C-GET sub-operations, storage commitment reports on the N-ACTION's
association), and notes the peer's C-CANCELs; over a real socket, ctnode's own Requestor as the
peer (it answers requests that arrive while it waits for a response)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ctnode.dicom.contexts import EXPLICIT_VR_LE, VERIFICATION
from ctnode.errors import AssociationAborted
from ctnode.ul import dimse
from ctnode.ul.acceptor import (
    Accept,
    AcceptedContext,
    AcceptorLimits,
    AssociationInfo,
    Reply,
    serve_association,
)
from ctnode.ul.peer_requests import PeerGone
from ctnode.ul.reassembly import Message
from ctnode.ul.requestor import AssociationParams, ContextRequest, Requestor, Timeouts

Handler = Callable[[AssociationInfo, AcceptedContext, dimse.Command], Reply | None]


class _App:
    """An application whose C-ECHO handler is the test's."""

    def __init__(self, on_echo: Handler) -> None:
        self.on_echo = on_echo
        self.finished: list[AssociationInfo] = []
        self.errors: list[BaseException] = []

    def associate(self, rq: Any, info: AssociationInfo) -> Accept:
        return Accept(None, None)

    def begin(self, info: AssociationInfo, ctx: AcceptedContext, cmd: dimse.Command) -> Any:
        raise AssertionError("no data set expected")

    def handle(
        self, info: AssociationInfo, ctx: AcceptedContext, cmd: dimse.Command
    ) -> Reply | None:
        if cmd.field == dimse.C_ECHO_RQ:
            try:
                return self.on_echo(info, ctx, cmd)
            except BaseException as exc:
                self.errors.append(exc)
                raise
        return None

    def established(self, info: AssociationInfo) -> None:
        pass

    def ended(self, info: AssociationInfo) -> None:
        self.finished.append(info)


@pytest.fixture
def serve() -> Iterator[Callable[[_App], int]]:
    """Serve one association with the given application on a loopback port; returns the port."""
    threads: list[threading.Thread] = []
    listeners: list[socket.socket] = []

    def start(app: _App) -> int:
        listener = socket.create_server(("127.0.0.1", 0))
        listeners.append(listener)
        limits = AcceptorLimits("ACCEPTOR", 65536, 5, 5, 5)

        def run() -> None:
            sock, addr = listener.accept()
            info = AssociationInfo("t", addr[0], addr[1])
            serve_association(sock, info, app, limits)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        threads.append(thread)
        return int(listener.getsockname()[1])

    yield start
    for thread in threads:
        thread.join(timeout=10)
    for listener in listeners:
        listener.close()


def _requestor(port: int) -> Requestor:
    params = AssociationParams(
        host="127.0.0.1",
        port=port,
        calling_ae="PEER",
        called_ae="ACCEPTOR",
        contexts=[ContextRequest(VERIFICATION, (EXPLICIT_VR_LE,))],
        timeouts=Timeouts(connect=5, acse=5, dimse=5, network=5),
    )
    return Requestor(params)


def _echo(message_id: int) -> dict[str, Any]:
    return {
        "AffectedSOPClassUID": VERIFICATION,
        "CommandField": dimse.C_ECHO_RQ,
        "MessageID": message_id,
    }


def _reply(cmd: dimse.Command, code: int) -> Reply:
    return Reply(dimse.response_fields(cmd, cmd.field | 0x8000, code))


def test_request_on_the_accepted_association_gets_its_response(
    serve: Callable[[_App], int],
) -> None:
    """A handler's request goes to the requestor, whose response comes back to the handler
    (routed by MessageIDBeingRespondedTo) before the handler's own reply goes out."""
    seen: list[int] = []

    def on_echo(info: AssociationInfo, ctx: AcceptedContext, cmd: dimse.Command) -> Reply:
        assert info.requests is not None
        rsp = info.requests.request(ctx.context_id, {**_echo(0), "MessageID": None})
        seen.append(rsp.command.get_int("Status"))
        return _reply(cmd, 0x0000)

    app = _App(on_echo)
    port = serve(app)
    answered: list[Message] = []

    def on_request(message: Message) -> dict[str, object]:
        answered.append(message)
        return dict(dimse.response_fields(message.command, dimse.C_ECHO_RSP, 0x0000))

    with _requestor(port) as assoc:
        assoc.on_request = on_request
        rsp = assoc.request(1, _echo(0))
    assert rsp.command.get_int("Status") == 0x0000
    assert len(answered) == 1 and answered[0].command.field == dimse.C_ECHO_RQ
    assert seen == [0x0000]
    assert not app.errors


def test_cancel_is_noted_for_the_handler(serve: Callable[[_App], int]) -> None:
    """A C-CANCEL-RQ read while a handler polls is visible to it through ``cancelled``."""

    def on_echo(info: AssociationInfo, ctx: AcceptedContext, cmd: dimse.Command) -> Reply:
        assert info.requests is not None
        deadline = time.monotonic() + 5
        message_id = cmd.get_int("MessageID")
        while not info.requests.cancelled(message_id):
            assert time.monotonic() < deadline, "no C-CANCEL seen"
            info.requests.poll()
            time.sleep(0.01)
        return _reply(cmd, 0xFE00)

    port = serve(_App(on_echo))
    with _requestor(port) as assoc:
        assoc.send(1, _echo(7))
        assoc.send(1, {"CommandField": dimse.C_CANCEL_RQ, "MessageIDBeingRespondedTo": 7})
        rsp = assoc.receive_response(7)
    assert rsp.command.get_int("Status") == 0xFE00


def test_peer_abort_while_waiting_ends_the_handler(serve: Callable[[_App], int]) -> None:
    """A-ABORT instead of a response: the handler's wait raises PeerGone, the association is
    recorded as aborted and the application is told it ended."""

    def on_echo(info: AssociationInfo, ctx: AcceptedContext, cmd: dimse.Command) -> Reply:
        assert info.requests is not None
        info.requests.request(ctx.context_id, {**_echo(0), "MessageID": None})
        raise AssertionError("unreachable: the peer aborted")

    app = _App(on_echo)
    port = serve(app)

    def on_request(message: Message) -> dict[str, object]:
        raise AssociationAborted("the test peer gives up")

    assoc = _requestor(port).open()
    assoc.on_request = on_request
    with pytest.raises(AssociationAborted):
        assoc.request(1, _echo(0))
    assoc.abort()
    for _ in range(100):
        if app.finished:
            break
        time.sleep(0.05)
    assert app.finished and app.finished[0].result == "aborted"
    assert len(app.errors) == 1 and isinstance(app.errors[0], PeerGone)
