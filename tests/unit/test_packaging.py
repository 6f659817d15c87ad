"""Static checks of what ships around the package: the Dockerfile (no Docker engine on our
machines), the systemd unit (also run through ``systemd-analyze``) and the sysusers file."""

from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from ctnode.config import NodeSettings, load_settings

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "ctnode.service"
SYSUSERS = ROOT / "systemd" / "ctnode.sysusers"
BASE_IMAGE = "python:3.11-slim-bookworm"
VENV = "/opt/ctnode"
MAX_EXPOSURE = 2.0


# ------------------------------------------------------------------------------- Dockerfile


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction (continuation lines joined, comments dropped)."""

    keyword: str
    args: str
    stage: int


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions in order, each with the index of the build stage it belongs to."""
    out: list[Instruction] = []
    stage = -1
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical = (pending + stripped).strip()
        pending = ""
        keyword, _, args = logical.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        out.append(Instruction(keyword, " ".join(args.split()), stage))
    assert not pending, "the Dockerfile ends in a continuation line"
    return out


@pytest.fixture(scope="module")
def dockerfile() -> list[Instruction]:
    """The parsed Dockerfile."""
    return parse_dockerfile((ROOT / "Dockerfile").read_text())


def final(instructions: list[Instruction], keyword: str) -> list[Instruction]:
    """The *keyword* instructions of the last stage."""
    last = max(i.stage for i in instructions)
    return [i for i in instructions if i.keyword == keyword and i.stage == last]


def exec_form(args: str) -> list[str]:
    """A JSON (exec form) argument list; fails on the shell form."""
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def test_two_stages_on_the_same_slim_python_base(dockerfile: list[Instruction]) -> None:
    """A multi-stage build: a builder and a final stage, both FROM python:3.11-slim-bookworm
    (the same base, so the venv's interpreter symlink is valid in the final stage)."""
    froms = [i.args for i in dockerfile if i.keyword == "FROM"]
    assert len(froms) == 2
    assert froms[0] == f"{BASE_IMAGE} AS builder"
    assert froms[1] == BASE_IMAGE


def test_venv_at_the_same_path_in_both_stages(dockerfile: list[Instruction]) -> None:
    """The builder creates the venv at /opt/ctnode, installs into it, and the final stage
    copies it to the same path and puts its bin/ on PATH."""
    builder = [i for i in dockerfile if i.stage == 0]
    assert any(i.keyword == "RUN" and i.args == f"python -m venv {VENV}" for i in builder)
    assert any(
        i.keyword == "RUN" and i.args.startswith(f"{VENV}/bin/pip install ") for i in builder
    )
    copies = [i.args for i in final(dockerfile, "COPY") if i.args.startswith("--from=")]
    assert copies == [f"--from=builder {VENV} {VENV}"]
    env = " ".join(i.args for i in final(dockerfile, "ENV"))
    assert f"PATH={VENV}/bin:$PATH" in env.split()


def test_runs_as_a_non_root_user_created_in_the_image(dockerfile: list[Instruction]) -> None:
    """The final stage creates a system user ctnode and switches to it (never root)."""
    users = final(dockerfile, "USER")
    assert [u.args for u in users] == ["ctnode:ctnode"]
    runs = " ".join(i.args for i in final(dockerfile, "RUN"))
    assert "useradd --system" in runs and "/etc/ctnode/peers" in runs
    assert re.search(r"useradd .*\bctnode\b", runs)
    last_user_index = dockerfile.index(users[-1])
    assert all(i.keyword != "RUN" for i in dockerfile[last_user_index:]), "RUN after USER"


def test_ports_volume_stop_signal_health_check_entrypoint(dockerfile: list[Instruction]) -> None:
    """EXPOSE 4006, a data volume, STOPSIGNAL SIGTERM, a HEALTHCHECK doing a real C-ECHO to
    itself, and ENTRYPOINT ctnode with CMD run (all in exec form)."""
    assert [i.args for i in final(dockerfile, "EXPOSE")] == ["4006"]
    assert [exec_form(i.args) for i in final(dockerfile, "VOLUME")] == [["/var/lib/ctnode"]]
    assert [i.args for i in final(dockerfile, "STOPSIGNAL")] == ["SIGTERM"]
    (health,) = final(dockerfile, "HEALTHCHECK")
    options, _, command = health.args.partition(" CMD ")
    assert exec_form(command) == ["ctnode", "echo", "--self"]
    assert "--timeout=" in options and "--interval=" in options
    assert [exec_form(i.args) for i in final(dockerfile, "ENTRYPOINT")] == [["ctnode"]]
    assert [exec_form(i.args) for i in final(dockerfile, "CMD")] == [["run"]]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "ctnode" in scripts


def test_baked_in_configuration_listens_everywhere_but_only_for_peers(
    dockerfile: list[Instruction], monkeypatch: pytest.MonkeyPatch
) -> None:
    """config/docker.yaml is copied to CTNODE_CONFIG's path; it binds 0.0.0.0 on the exposed
    port, accepts no unknown callers, keeps its data in the volume and reads peers from the
    directory the image creates."""
    for name in [n for n in os.environ if n.startswith("CTNODE_")]:
        monkeypatch.delenv(name)
    env = " ".join(i.args for i in final(dockerfile, "ENV")).split()
    assert "CTNODE_CONFIG=/etc/ctnode/ctnode.yaml" in env
    copies = [i.args for i in final(dockerfile, "COPY")]
    assert "config/docker.yaml /etc/ctnode/ctnode.yaml" in copies
    settings = load_settings(ROOT / "config" / "docker.yaml")
    assert settings.node.bind == "0.0.0.0"
    assert settings.node.accept_unknown_callers is False
    assert settings.node.port == 4006
    assert settings.storage.data_dir == Path("/var/lib/ctnode")
    assert settings.database_url == "sqlite:////var/lib/ctnode/ctnode.db"
    assert settings.peers_dir == Path("/etc/ctnode/peers")


def test_every_copied_source_exists_and_is_not_docker_ignored(
    dockerfile: list[Instruction],
) -> None:
    """COPY sources exist in the repository and .dockerignore does not exclude them."""
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for copy in (i for i in dockerfile if i.keyword == "COPY"):
        if copy.args.startswith("--from="):
            continue
        *sources, _destination = copy.args.split()
        for source in sources:
            assert (ROOT / source).exists(), source
            assert source.split("/")[0] not in ignored, f"{source} is in .dockerignore"


# ------------------------------------------------------------------------------- systemd


def unit_values(path: Path) -> dict[str, list[str]]:
    """``Section.Key`` → every value assigned to it, in order (keys may repeat in units)."""
    values: dict[str, list[str]] = {}
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        values.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return values


@pytest.fixture(scope="module")
def unit() -> configparser.ConfigParser:
    """The unit parsed with configparser (a repeated key keeps its last value)."""
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNIT)
    return parser


def test_unit_is_a_notify_service_with_watchdog_and_reload(
    unit: configparser.ConfigParser,
) -> None:
    """Type=notify (main process only), a watchdog, reload by SIGHUP, restart on failure,
    ExecStart running the /opt/ctnode venv with /etc/ctnode/ctnode.yaml, and a stop timeout
    longer than the default shutdown grace."""
    service = unit["Service"]
    assert service["Type"] == "notify"
    assert service["NotifyAccess"] == "main"
    assert int(service["WatchdogSec"]) > 0
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["Restart"] == "on-failure"
    assert service["ExecStart"] == f"{VENV}/bin/ctnode --config /etc/ctnode/ctnode.yaml run"
    assert int(service["TimeoutStopSec"]) > NodeSettings().shutdown_grace
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_unit_runs_as_ctnode_with_its_own_directories(unit: configparser.ConfigParser) -> None:
    """User/Group ctnode; state, logs and configuration directories named ctnode — matching the
    production configuration's data_dir and peers_dir."""
    service = unit["Service"]
    assert service["User"] == service["Group"] == "ctnode"
    assert service["StateDirectory"] == "ctnode"
    assert service["LogsDirectory"] == "ctnode"
    assert service["ConfigurationDirectory"].split() == ["ctnode", "ctnode/peers"]
    production = load_settings(ROOT / "config" / "ctnode.yaml")
    assert production.storage.data_dir == Path("/var/lib/ctnode")
    assert production.peers_dir == Path("/etc/ctnode/peers")


def test_unit_hardening_keys() -> None:
    """The hardening the issue asks for is present, with no capabilities at all."""
    values = unit_values(UNIT)

    def last(key: str) -> str:
        return values[f"Service.{key}"][-1]

    assert last("ProtectSystem") == "strict"
    assert last("CapabilityBoundingSet") == ""
    assert last("AmbientCapabilities") == ""
    for key in (
        "NoNewPrivileges",
        "PrivateTmp",
        "PrivateDevices",
        "ProtectHome",
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "ProtectControlGroups",
        "RestrictNamespaces",
        "RestrictRealtime",
        "RestrictSUIDSGID",
        "LockPersonality",
        "MemoryDenyWriteExecute",
    ):
        assert last(key) == "yes", key
    assert set(last("RestrictAddressFamilies").split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert values["Service.SystemCallFilter"][0] == "@system-service"
    assert last("SystemCallArchitectures") == "native"


def test_sysusers_declares_the_service_user() -> None:
    """sysusers.d: user ctnode (with its own group) living in /var/lib/ctnode, no login."""
    lines = [
        line.split()
        for line in SYSUSERS.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert len(lines) == 1
    entry = lines[0]
    assert entry[:3] == ["u", "ctnode", "-"]
    assert entry[-2:] == ["/var/lib/ctnode", "/usr/sbin/nologin"]


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: apt-get install systemd (.ci/run installs it)")
    return path


def test_sysusers_file_is_accepted_by_systemd_sysusers(tmp_path: Path) -> None:
    """systemd-sysusers --dry-run on an empty root would create user ctnode, without errors."""
    tool = _tool("systemd-sysusers")
    (tmp_path / "etc").mkdir()
    result = subprocess.run(
        [tool, "--dry-run", f"--root={tmp_path}", str(SYSUSERS)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Creating user 'ctnode'" in output
    assert not re.search(r"(?i)fail|invalid|ignor", output), output


def test_systemd_analyze_verify_has_no_complaint(tmp_path: Path) -> None:
    """``systemd-analyze verify`` prints nothing for the unit. It checks that ExecStart's binary
    exists, so a copy pointing at this venv's ctnode is verified; any other line fails."""
    tool = _tool("systemd-analyze")
    binary = Path(sys.executable).parent / "ctnode"
    assert binary.exists(), binary
    text = UNIT.read_text()
    assert text.count(f"ExecStart={VENV}/bin/ctnode ") == 1
    copy = tmp_path / "ctnode.service"
    copy.write_text(text.replace(f"ExecStart={VENV}/bin/ctnode", f"ExecStart={binary}"))
    result = subprocess.run(
        [tool, "verify", "--man=no", str(copy)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0, output
    assert output == "", output


def test_systemd_analyze_security_exposure_at_most_2(tmp_path: Path) -> None:
    """``systemd-analyze security --offline=true`` rates the unit's exposure at 2.0 or less."""
    tool = _tool("systemd-analyze")
    help_text = subprocess.run(
        [tool, "security", "--help"], capture_output=True, text=True, timeout=60, check=False
    ).stdout
    if "--offline" not in help_text:
        pytest.fail("systemd-analyze predates --offline (systemd < 250): the unit cannot be rated")
    result = subprocess.run(
        [tool, "security", "--offline=true", "--no-pager", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = result.stdout + result.stderr
    match = re.search(r"Overall exposure level for ctnode\.service: (\d+(?:\.\d+)?)", output)
    assert match, output
    assert float(match.group(1)) <= MAX_EXPOSURE, output


def test_wheel_ships_the_migrations(tmp_path: Path) -> None:
    """The built wheel carries migrations/ as ctnode/_migrations, and an installed ctnode finds
    them there (so `ctnode db upgrade` works outside a source checkout)."""
    import subprocess
    import sys
    import zipfile

    root = Path(__file__).resolve().parents[2]
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path / "dist"),
            str(root),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("ctnode-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        zf.extractall(tmp_path / "site")
    revisions = {p.name for p in (root / "migrations" / "versions").glob("*.py")}
    assert "ctnode/_migrations/env.py" in names
    assert {f"ctnode/_migrations/versions/{r}" for r in revisions} <= names
    found = subprocess.run(
        [
            sys.executable,
            "-c",
            "from ctnode.db.migrate import migrations_dir; print(migrations_dir())",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin"},
    )
    assert found.stdout.strip() == str(tmp_path / "site" / "ctnode" / "_migrations")
