"""``python -m ctnode`` runs the CLI."""

from ctnode.cli import entry

entry()
