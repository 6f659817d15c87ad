"""DCMTK dcmqrscp as a Query/Retrieve peer (default fork mode; accepts only uncompressed)."""

from __future__ import annotations

from pathlib import Path

from tests.helpers.procs import ServerProcess, free_port


def dcmqrscp(
    workdir: Path,
    *,
    ae_title: str = "DCMQRSCP",
    hosts: dict[str, tuple[str, str, int]] | None = None,
    port: int | None = None,
) -> ServerProcess:
    """A dcmqrscp with its own config and storage under *workdir*.

    *hosts* maps a HostTable symbol to (AE title, host, port): the move destinations it knows.
    """
    port = port or free_port()
    storage = workdir / "storage"
    storage.mkdir(parents=True, exist_ok=True)
    table = "\n".join(
        f"{name} = ({ae}, {host}, {p})" for name, (ae, host, p) in (hosts or {}).items()
    )
    config = workdir / "dcmqrscp.cfg"
    config.write_text(
        f"NetworkTCPPort  = {port}\nMaxPDUSize      = 16384\nMaxAssociations = 16\n"
        f"HostTable BEGIN\n{table}\nHostTable END\n"
        "VendorTable BEGIN\nVendorTable END\n"
        f"AETable BEGIN\n{ae_title} {storage} RW (200, 1024mb) ANY\nAETable END\n"
    )
    return ServerProcess(
        ["dcmqrscp", "-c", str(config), str(port)],
        port,
        cwd=workdir,
        log_path=workdir / "dcmqrscp.log",
    )
