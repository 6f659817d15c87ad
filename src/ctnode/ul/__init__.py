"""ctnode's DICOM Upper Layer engine (PS3.8): PDU codec, DIMSE messages, associations.

Why not pynetdicom's own reactor for these paths: its polling loops dominate CPU on the receive
path, it allocates what a PDU header claims before any check, it does not set TCP_NODELAY, and its
SCU can lose a C-STORE response under load. This package replaces exactly those pieces behind a
small seam (``acceptor.serve_association`` and ``requestor.Requestor``); SOP class tables and
status names still come from pynetdicom.
"""
