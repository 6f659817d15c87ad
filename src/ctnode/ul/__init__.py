"""ctnode's DICOM Upper Layer engine (PS3.8): PDU codec, DIMSE messages, associations.

Why not pynetdicom's own reactor for these paths: its polling loops dominate CPU on the receive
path, it allocates what a PDU header claims before any check, it does not set TCP_NODELAY, and its
SCU can lose a C-STORE response under load. This package replaces exactly those pieces behind a
small seam (``acceptor.serve_association`` and ``requestor.Requestor``); SOP class tables and
status names still come from pynetdicom.

Modules, one job each: ``pdu`` (PDU codec, pure), ``dimse`` (command set codec, pure),
``limits`` (bounds on what a peer can make us hold), ``negotiation`` (association negotiation
rules, both sides, pure), ``reassembly`` (inbound PDVs into messages, in order and bounded,
pure), ``transport`` (bounded PDU reads, socket options, closing), ``connect`` (outbound TCP and
TLS), ``pdata`` (outbound messages as P-DATA-TF PDUs, files sent without copies), ``params``
(what an outbound association is opened with), ``acceptor`` and ``requestor`` (the two sides'
association state machines).
"""
