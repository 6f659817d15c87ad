"""``python -m ctnode`` runs the CLI."""

from ctnode.cli import main

raise SystemExit(main())
