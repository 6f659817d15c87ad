"""The CLI's start-up budget: ``ctnode push`` submits a job without importing the logging stack
(structlog, rich), the daemon, pydicom or pynetdicom — so nothing on its path may log."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from pydicom.data import get_testdata_file


def test_push_submits_without_importing_the_logging_stack(tmp_path: Path) -> None:
    """A push (no --wait) from a fresh interpreter writes its job and leaves ctnode.logs,
    structlog, rich, ctnode.daemon, pydicom and pynetdicom unimported."""
    peers = tmp_path / "peers"
    peers.mkdir()
    (peers / "pacs.yaml").write_text(
        "ae_title: PACS\nhost: 127.0.0.1\nport: 11112\naccept: [echo]\n"
    )
    config = tmp_path / "ctnode.yaml"
    config.write_text(
        f"peers_dir: {peers}\nstorage:\n  data_dir: {tmp_path / 'data'}\n"
        f"database:\n  url: sqlite:///{tmp_path / 'ctnode.db'}\n"
    )
    source = get_testdata_file("CT_small.dcm")
    script = textwrap.dedent(
        f"""
        import json, sys
        from ctnode.cli import main
        code = main(["--config", {str(config)!r}, "push", "pacs", {str(source)!r}])
        heavy = ["ctnode.logs", "structlog", "rich", "ctnode.daemon", "pydicom", "pynetdicom"]
        print(json.dumps({{"code": code, "loaded": [m for m in heavy if m in sys.modules]}}))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome == {"code": 0, "loaded": []}, (outcome, done.stderr)
