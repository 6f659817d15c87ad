"""Routing (issue 14): forward what arrives to peers, unattended.

``rules`` (route files, validated and compiled), ``match`` (pure matcher with explanations),
``decisions`` (the rows written at ingest with the instance), ``forwarder`` (stable studies and
series become push jobs; their outcomes become delivery states), ``state`` (readers for the
CLI and metrics). See ``docs/routing.md``.
"""
