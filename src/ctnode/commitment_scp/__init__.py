"""Storage Commitment Push Model SCP: a peer (a scanner) asks ctnode whether instances are safe.

The modules, from the wire down:

* ``intake`` — the N-ACTION handler (``scp.handlers`` calls it): validate, persist the
  transaction, queue the job that sends its report, answer the N-ACTION;
* ``requests`` — the N-ACTION's command and data set checked (pure): the request or the
  N-ACTION-RSP failure status to answer;
* ``decide`` — per instance, committed or failed with its Failure Reason, in ``local`` or
  ``upstream`` mode (pure);
* ``transactions`` — the one writer of ``incoming_commitments`` and their items;
* ``report`` — the ``commit_report`` job: decide, wait for the upstream peers if needed, send
  the N-EVENT-REPORT on a new association (ctnode in the SCP role of the SOP class through role
  selection), durable until the peer answers it.
"""
