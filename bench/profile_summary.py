"""Summarise py-spy raw (collapsed) profiles of ctnode's association threads.

``python -m bench.receive --profile DIR`` records every ctnode run with
``py-spy record --idle --threads --format raw`` (so a thread blocked in ``recv`` or ``fdatasync``
is sampled too: the split is of wall-clock time). This module reads those files, keeps the
samples of the association threads (``assoc-…``), and reports

* the wall-clock split into the receive path's stages (network read, spool write, hashing, scan,
  fdatasync, link/rename, directory fsync, the index's SELECT and COMMIT, logging, …), by the
  source line of the innermost ctnode frame (read from this checkout: summarise a profile
  before changing the code it was recorded with);
* the top functions by self time (innermost frame).

    python -m bench.profile_summary FILE… [--rate 250] [--instances 600]
"""

from __future__ import annotations

import argparse
import linecache
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from bench.common import ROOT, render

SRC = ROOT / "src"
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*):(?P<line>\d+)\)$")


def parse(lines: Iterable[str]) -> Counter[tuple[str, ...]]:
    """Association-thread stacks (outermost first, thread label dropped) and sample counts."""
    stacks: Counter[tuple[str, ...]] = Counter()
    for raw in lines:
        text = raw.rstrip("\n")
        if not text:
            continue
        stack, _, count = text.rpartition(" ")
        frames = stack.split(";")
        if not frames or "assoc-" not in frames[0]:
            continue
        stacks[tuple(frames[1:])] += int(count)
    return stacks


def _split(frame: str) -> tuple[str, str, int]:
    match = _FRAME.match(frame)
    if match is None:
        return frame, "", 0
    return match["func"], match["file"], int(match["line"])


def _source(file: str, line: int, src: Path = SRC) -> str:
    if not file.startswith("ctnode/"):
        return ""
    return linecache.getline(str(src / file), line).strip()


def categorize(stack: Sequence[str], src: Path = SRC) -> str:
    """The receive-path stage a sample belongs to (*src*: the ``src/`` it was recorded from)."""
    frames = [_split(f) for f in stack]
    funcs = [f for f, _, _ in frames]
    files = [f for _, f, _ in frames]
    ctnode = [(fn, fi, ln) for fn, fi, ln in frames if fi.startswith("ctnode/")]
    if any(f.startswith("sqlalchemy/") or f.startswith("sqlite3") for f in files):
        if any(f.endswith(".do_commit") for f in funcs):
            return "index: COMMIT (SQLite WAL fsync)"
        inner = ctnode[-1] if ctnode else ("", "", 0)
        text = _source(inner[1], inner[2], src)
        if inner[0].startswith("GroupCommit.") or any(
            k in text for k in ("_INSERT_INSTANCE", ".add(", ".commit()")
        ):
            return "index: INSERT (statement, transaction)"
        if any(k in text for k in ("_SELECT_EXISTING", "scalar(", "READ_ONLY")):
            return "index: duplicate-check SELECT"
        return "index: connection / session other"
    if any(f.startswith(("structlog/", "logging/")) for f in files) or "record_store" in funcs:
        return "logging (one JSON line per C-STORE)"
    if not ctnode:
        return "other (outside ctnode)"
    func, file, line = ctnode[-1]
    text = _source(file, line, src)
    ctnode_funcs = {fn for fn, _, _ in ctnode}
    if "recv_into" in text or "sock.recv" in text:
        return "network: recv"
    if "sendall" in text or "sendmsg" in text or func in ("send_all", "_Acceptor._send"):
        return "network: send response"
    if "_hash.update" in text or "hexdigest" in text or "file_digest" in text:
        return "hashing (sha256)"
    if "fdatasync" in text or func == "SpoolFile.sync":
        return "fdatasync spool file"
    if func in ("_fsync_dir", "fsync_dir", "_DirCache.fsync") or "os.fsync" in text:
        return "directory fsync"
    if "os.link" in text or "os.replace" in text or func == "Store._ensure_dir":
        return "link + rename into store/"
    if file.endswith("dicom/scan.py") or func in ("Store._scan", "SpoolFile.scan"):
        return "scan data set"
    if "os.write" in text or func == "SpoolFile._write_all":
        return "spool: write"
    if "os.open" in text or "SpoolFile.__init__" in ctnode_funcs or "file_meta" in ctnode_funcs:
        return "spool: create"
    if "unlink" in text or "os.close" in text or func in ("SpoolFile.discard", "SpoolFile.close"):
        return "spool: close/unlink"
    if "contained_path" in ctnode_funcs:
        return "path containment check (realpath)"
    if func.startswith("_writeback_starter") or "start_writeback" in text:
        return "writeback hint (sync_file_range)"
    if ctnode_funcs & {"Store._row_values", "row_values", "_decode_text", "decode_text", "utcnow"}:
        return "index: row values"
    if "statvfs" in text or "has_room" in ctnode_funcs:
        return "free-space check"
    return "other ctnode Python (PDU/PDV parsing, dispatch)"


def summarize(
    stacks: Counter[tuple[str, ...]],
    rate: int = 250,
    instances: int | None = None,
    src: Path = SRC,
) -> str:
    """The stage split and the top self-time functions as two tables."""
    total = sum(stacks.values())
    if not total:
        return "profile: no association-thread samples"
    stages: Counter[str] = Counter()
    selfs: Counter[str] = Counter()
    for stack, count in stacks.items():
        stages[categorize(stack, src)] += count
        if stack:
            func, file, _ = _split(stack[-1])
            selfs[f"{func} ({file})"] += count
    per = f"ms/instance (of {instances})" if instances else "ms"

    def ms(count: int) -> str:
        seconds = count / rate
        return f"{seconds * 1000 / instances:.3f}" if instances else f"{seconds * 1000:.0f}"

    stage_rows = [[k, str(v), f"{100 * v / total:.1f}", ms(v)] for k, v in stages.most_common()]
    self_rows = [[k, str(v), f"{100 * v / total:.1f}"] for k, v in selfs.most_common(20)]
    return "\n".join(
        [
            f"profile: association threads, {total} samples at {rate} Hz "
            f"({total / rate:.2f} s; wall clock if recorded with --idle, else on-CPU)",
            render(("stage", "samples", "% wall", per), stage_rows),
            "",
            "top 20 functions by self time (innermost Python frame; blocking calls included)",
            render(("function", "samples", "%"), self_rows),
        ]
    )


def summarize_files(
    paths: Sequence[Path],
    rate: int = 250,
    instances_per_file: int | None = None,
    src: Path = SRC,
) -> str:
    """Summary of several profiles together."""
    stacks: Counter[tuple[str, ...]] = Counter()
    for path in paths:
        with path.open() as fh:
            stacks.update(parse(fh))
    instances = instances_per_file * len(paths) if instances_per_file else None
    return summarize(stacks, rate, instances, src)


def main(argv: list[str] | None = None) -> str:
    """Summarise the files given on the command line."""
    parser = argparse.ArgumentParser(prog="python -m bench.profile_summary", description=__doc__)
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--rate", type=int, default=250)
    parser.add_argument("--instances", type=int, help="instances received per profile file")
    parser.add_argument("--src", type=Path, default=SRC, help="the src/ the profile was taken of")
    args = parser.parse_args(argv)
    text = summarize_files(args.files, args.rate, args.instances, args.src)
    print(text)
    return text


if __name__ == "__main__":
    main()
