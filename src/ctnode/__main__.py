"""``python -m ctnode`` runs the CLI."""

from ctnode.cli import entry

if __name__ == "__main__":  # not when a spawned ingest worker imports the parent's main module
    entry()
