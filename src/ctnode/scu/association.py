"""Build outbound association parameters for a configured peer (TLS, timeouts, AE titles)."""

from __future__ import annotations

import ssl
from collections.abc import Sequence

from ctnode.config import NodeSettings
from ctnode.peers import Peer
from ctnode.tls import client_context
from ctnode.ul import pdu as P
from ctnode.ul.requestor import AssociationObserver, AssociationParams, ContextRequest, Timeouts


def client_ssl_context(peer: Peer) -> ssl.SSLContext | None:
    """A TLS client context for *peer*, or None when its TLS is off (see ``ctnode.tls``)."""
    return client_context(peer)


def params_for(
    peer: Peer,
    node: NodeSettings,
    contexts: Sequence[ContextRequest],
    roles: Sequence[P.RoleSelection] = (),
    max_pdu_length: int | None = None,
    observer: AssociationObserver | None = None,
) -> AssociationParams:
    """Association parameters towards *peer* with its timeouts, AE titles and TLS."""
    t = peer.config.timeouts
    return AssociationParams(
        host=peer.host,
        port=peer.port,
        calling_ae=peer.config.local_ae_title or node.ae_title,
        called_ae=peer.ae_title,
        contexts=contexts,
        timeouts=Timeouts(connect=t.connect, acse=t.acse, dimse=t.dimse, network=t.network),
        max_pdu_length=max_pdu_length or node.max_pdu_length,
        roles=roles,
        ssl_context=client_ssl_context(peer),
        server_name=peer.config.tls.server_name,
        label=peer.name,
        observer=observer,
        max_response_dataset_bytes=node.max_response_dataset_bytes,
    )
