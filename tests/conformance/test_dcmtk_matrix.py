"""Inbound conformance matrix: DCMTK SCUs (``storescu``, ``echoscu``, ``findscu``, ``movescu``,
``getscu``) into one ctnode SCP, each case naming the PS3.5 / PS3.7 / PS3.8 clause it checks.

Stores are checked on what ctnode wrote: where the sender did not convert, the stored data set
is byte for byte the one the test file holds (the files are written by DCMTK, so ``storescu``
sends exactly those bytes); where ``storescu`` converted (it found no context for the file's own
transfer syntax), the stored instance is compared value for value with the file.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ctnode.daemon import Runtime
from ctnode.dicom.contexts import EXPLICIT_VR_LE, IMPLICIT_VR_LE
from tests.conformance.matrix_helpers import (
    Sample,
    assert_same_dataset_bytes,
    assert_same_values,
    find_instance,
    make_sample,
    transfer_syntax_of,
)
from tests.helpers.node import make_settings, running_node, write_peers
from tests.helpers.procs import run_tool

CALLERS = ("STORESCU", "ECHOSCU", "FINDSCU", "MOVESCU", "GETSCU")

#: A storescu association profile proposing CT Image Storage in Explicit VR Big Endian only.
BIG_ENDIAN_ONLY = """\
[[TransferSyntaxes]]
[BigEndian]
TransferSyntax1 = BigEndianExplicit

[[PresentationContexts]]
[BigEndianOnly]
PresentationContext1 = CTImageStorage\\BigEndian

[[Profiles]]
[BigEndianOnly]
PresentationContexts = BigEndianOnly
"""


@dataclass
class Scp:
    """The ctnode SCP under test and a scratch directory for its test files."""

    runtime: Runtime
    work: Path

    @property
    def port(self) -> str:
        return str(self.runtime.server.port)

    def stored(self, sample: Sample) -> Path:
        """The file ctnode stored for *sample*."""
        return find_instance(self.runtime.store.root, sample.sop_instance)

    def sample(self, name: str) -> Sample:
        """A new instance in the transfer syntax of recipe *name*."""
        return make_sample(self.work, name)


@pytest.fixture(scope="module")
def scp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scp]:
    """One in-process ctnode SCP (SQLite) for the module; the DCMTK tools' default calling AE
    titles are configured peers that may echo and store."""
    tmp = tmp_path_factory.mktemp("dcmtk-matrix")
    write_peers(
        tmp,
        {
            ae.lower(): {
                "ae_title": ae,
                "host": "127.0.0.1",
                "port": 104,
                "accept": ["echo", "store"],
            }
            for ae in CALLERS
        },
    )
    with running_node(make_settings(tmp, f"sqlite:///{tmp / 'ctnode.db'}")) as runtime:
        yield Scp(runtime, tmp / "work")


def _storescu(scp: Scp, *options: str, files: list[Path]) -> str:
    """Run storescu (debug output) into the SCP; returns its output, asserting success."""
    done = run_tool(
        [
            "storescu",
            "-d",
            "-aet",
            "STORESCU",
            "-aec",
            "CTNODE",
            *options,
            "127.0.0.1",
            scp.port,
            *map(str, files),
        ],
        timeout=60,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    return output


def _ac_contexts(output: str) -> list[tuple[str, str, str]]:
    """(context result, abstract syntax, accepted transfer syntax) of every presentation context
    in the A-ASSOCIATE-AC a DCMTK tool printed with ``-d``."""
    ac = output.split("BEGIN A-ASSOCIATE-AC", 1)[1].split("END A-ASSOCIATE-AC", 1)[0]
    found = []
    for block in re.split(r"Context ID:\s+\d+ ", ac)[1:]:
        result = block.split(")", 1)[0].lstrip("(")
        abstract = re.search(r"Abstract Syntax: =?(\S+)", block)
        accepted = re.search(r"Accepted Transfer Syntax: =?(\S+)", block)
        found.append(
            (result, abstract.group(1) if abstract else "", accepted.group(1) if accepted else "")
        )
    return found


# ------------------------------------------------------------------ transfer syntaxes

#: (storescu option, sample recipe, transfer syntax ctnode must store, "bytes" when storescu
#: sends the file as it is, "values" when storescu converts it).
STORE_CASES = [
    pytest.param("-x=", "explicit", EXPLICIT_VR_LE, "bytes", id="PS3.5 A.2 explicit LE -x="),
    pytest.param("-xe", "explicit", EXPLICIT_VR_LE, "bytes", id="PS3.5 A.2 explicit LE -xe"),
    pytest.param("-xi", "implicit", IMPLICIT_VR_LE, "bytes", id="PS3.5 A.1 implicit LE -xi"),
    pytest.param("-xi", "explicit", IMPLICIT_VR_LE, "values", id="PS3.5 A.1 -xi converts"),
    pytest.param("-xb", "explicit", EXPLICIT_VR_LE, "bytes", id="PS3.5 A.3 -xb explicit file"),
    pytest.param("-xb", "big", EXPLICIT_VR_LE, "values", id="PS3.5 A.3 -xb big endian file"),
    pytest.param("-xd", "deflated", "1.2.840.10008.1.2.1.99", "bytes", id="PS3.5 A.5 deflate -xd"),
    pytest.param(
        "-xs", "jpeg_sv1", "1.2.840.10008.1.2.4.70", "bytes", id="PS3.5 A.4.1 JPEG SV1 -xs"
    ),
    pytest.param("-xy", "jpeg_baseline", "1.2.840.10008.1.2.4.50", "bytes", id="PS3.5 A.4.1 -xy"),
    pytest.param("-xx", "jpeg_extended", "1.2.840.10008.1.2.4.51", "bytes", id="PS3.5 A.4.1 -xx"),
    pytest.param("-xv", "j2k_lossless", "1.2.840.10008.1.2.4.90", "bytes", id="PS3.5 A.4.4 -xv"),
    pytest.param("-xw", "j2k", "1.2.840.10008.1.2.4.91", "bytes", id="PS3.5 A.4.4 -xw"),
    pytest.param("-xt", "jls_lossless", "1.2.840.10008.1.2.4.80", "bytes", id="PS3.5 A.4.3 -xt"),
    pytest.param("-xu", "jls_near", "1.2.840.10008.1.2.4.81", "bytes", id="PS3.5 A.4.3 -xu"),
    pytest.param("-xr", "rle", "1.2.840.10008.1.2.5", "bytes", id="PS3.5 A.4.2 RLE -xr"),
]


@pytest.mark.parametrize(("option", "recipe", "stored_syntax", "compare"), STORE_CASES)
def test_storescu_transfer_syntax(
    scp: Scp, option: str, recipe: str, stored_syntax: str, compare: str
) -> None:
    """storescu with each transfer-syntax option: ctnode accepts the syntax it supports (PS3.5
    Annex A; PS3.8 9.3.3.2, one syntax per accepted context), answers 0x0000 and stores the data
    set as received: byte-identical to the file when storescu sent it unchanged, value-equal
    when storescu had to convert it (big endian is refused, so a big endian file arrives as
    explicit little endian)."""
    sample = scp.sample(recipe)
    _storescu(scp, option, files=[sample.path])
    stored = scp.stored(sample)
    assert transfer_syntax_of(stored) == stored_syntax
    if compare == "bytes":
        assert_same_dataset_bytes(stored, sample.path)
    else:
        assert_same_values(stored, sample.path)


def test_storescu_big_endian_alone_is_refused(scp: Scp) -> None:
    """PS3.5 A.3 explicit big endian proposed alone (a storescu association profile): ctnode
    rejects the context with result 4, transfer syntaxes not supported (PS3.8 9.3.3.2), and
    storescu reports that no presentation context is acceptable; nothing is stored."""
    profile = scp.work / "big-endian-only.cfg"
    profile.parent.mkdir(parents=True, exist_ok=True)
    profile.write_text(BIG_ENDIAN_ONLY)
    sample = scp.sample("big")
    done = run_tool(
        [
            "storescu",
            "-d",
            "-aet",
            "STORESCU",
            "-aec",
            "CTNODE",
            "-xf",
            str(profile),
            "BigEndianOnly",
            "127.0.0.1",
            scp.port,
            str(sample.path),
        ]
    )
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert "No Acceptable Presentation Contexts" in output
    assert _ac_contexts(output) == [("Transfer Syntaxes Not Supported", "CTImageStorage", "")]
    assert not list(scp.runtime.store.root.rglob(f"{sample.sop_instance}*"))


def test_storescu_combined_context_gets_first_supported_syntax(scp: Scp) -> None:
    """PS3.8 9.3.3.2: one context proposing big endian, explicit and implicit little endian
    (``-xb +C``): ctnode accepts it with exactly one transfer syntax, the first of the
    proposer's list it supports (explicit little endian), and a big endian file converted by
    storescu is stored value-equal."""
    sample = scp.sample("big")
    output = _storescu(scp, "-xb", "+C", "-R", files=[sample.path])
    assert _ac_contexts(output) == [("Accepted", "CTImageStorage", "LittleEndianExplicit")]
    stored = scp.stored(sample)
    assert transfer_syntax_of(stored) == EXPLICIT_VR_LE
    assert_same_values(stored, sample.path)


def test_storescu_required_contexts_several_syntaxes_one_association(scp: Scp) -> None:
    """PS3.8 9.3.2.2 several presentation contexts on one association (``storescu -R``, one
    per SOP class and syntax): explicit and implicit little endian instances arrive on their
    own contexts and are stored byte-identical."""
    samples = [scp.sample("explicit"), scp.sample("implicit")]
    _storescu(scp, "-R", files=[s.path for s in samples])
    for sample in samples:
        assert_same_dataset_bytes(scp.stored(sample), sample.path)


def test_storescu_user_identity_is_ignored(scp: Scp) -> None:
    """PS3.7 D.3.3.7 user identity (user name and passcode, no response requested): ctnode
    does not support it, ignores the sub-item, accepts the association and stores."""
    sample = scp.sample("explicit")
    output = _storescu(scp, "-usr", "modality", "-pwd", "secret", files=[sample.path])
    ac = output.split("BEGIN A-ASSOCIATE-AC", 1)[1]
    assert re.search(r"User Identity Negotiation Response:\s+none", ac), ac
    assert_same_dataset_bytes(scp.stored(sample), sample.path)


# ------------------------------------------------------------------ maximum PDU

PDU_CASES = [
    pytest.param(["-pdu", "4096"], id="PS3.8 D.1 max PDU small 4096"),
    pytest.param(["-pdu", "4097"], id="PS3.8 D.1 max PDU odd 4097"),
    pytest.param(["-pdu", "131072"], id="PS3.8 D.1 max PDU large 131072"),
    pytest.param(["--max-send-pdu", "4096"], id="PS3.8 9.3.5 PDV fragments of 4096"),
    pytest.param(["--max-send-pdu", "8192"], id="PS3.8 9.3.5 PDV fragments of 8192"),
    pytest.param(["--max-send-pdu", "131072"], id="PS3.8 9.3.5 PDVs up to ctnode's maximum"),
]


@pytest.mark.parametrize("options", PDU_CASES)
def test_storescu_max_pdu(scp: Scp, options: list[str]) -> None:
    """storescu with a small, odd or large receive maximum, or sending data sets cut into PDVs
    of a given size: ctnode announces its own maximum (262144) in the A-ASSOCIATE-AC,
    reassembles the fragments and stores the data set byte-identical (PS3.8 9.3.5, D.1)."""
    sample = scp.sample("explicit")
    output = _storescu(scp, *options, files=[sample.path])
    assert re.search(r"Their Max PDU Receive Size:\s+262144", output), output[-2000:]
    assert_same_dataset_bytes(scp.stored(sample), sample.path)


@pytest.mark.parametrize(
    "options",
    [
        pytest.param([], id="PS3.7 A.4 C-ECHO default"),
        pytest.param(["-pdu", "4096"], id="PS3.8 D.1 C-ECHO max PDU 4096"),
        pytest.param(["-pdu", "4097"], id="PS3.8 D.1 C-ECHO max PDU odd 4097"),
        pytest.param(["-pdu", "131072"], id="PS3.8 D.1 C-ECHO max PDU 131072"),
        pytest.param(["--repeat", "3"], id="PS3.7 9.3.5 three C-ECHO on one association"),
    ],
)
def test_echoscu(scp: Scp, options: list[str]) -> None:
    """echoscu with each receive maximum: Verification is accepted (PS3.4 A) and every C-ECHO
    is answered Success (PS3.7 9.3.5), then the association is released."""
    done = run_tool(
        ["echoscu", "-v", "-aet", "ECHOSCU", "-aec", "CTNODE", *options, "127.0.0.1", scp.port]
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert output.count("Received Echo Response (Success)") == (3 if "--repeat" in options else 1)


# ------------------------------------------------------------------ Q/R callers without permission

QR_CASES = [
    pytest.param(
        ["findscu", "-aet", "FINDSCU", "-S", "-k", "QueryRetrieveLevel=STUDY", "-k", "PatientID"],
        {"FINDStudyRootQueryRetrieveInformationModel"},
        id="PS3.4 C.4.1 findscu Study Root FIND",
    ),
    pytest.param(
        ["findscu", "-aet", "FINDSCU", "-P", "-k", "QueryRetrieveLevel=PATIENT", "-k", "PatientID"],
        {"FINDPatientRootQueryRetrieveInformationModel"},
        id="PS3.4 C.4.1 findscu Patient Root FIND",
    ),
    pytest.param(
        [
            "movescu",
            "-aet",
            "MOVESCU",
            "-S",
            "-aem",
            "MOVESCU",
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            "StudyInstanceUID=1.2.3",
        ],
        {
            "FINDStudyRootQueryRetrieveInformationModel",
            "MOVEStudyRootQueryRetrieveInformationModel",
        },
        id="PS3.4 C.4.2 movescu Study Root MOVE",
    ),
    pytest.param(
        [
            "getscu",
            "-aet",
            "GETSCU",
            "-S",
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            "StudyInstanceUID=1.2.3",
        ],
        {"GETStudyRootQueryRetrieveInformationModel"},
        id="PS3.4 C.4.3 getscu Study Root GET",
    ),
]


@pytest.mark.parametrize(("command", "abstracts"), QR_CASES)
def test_query_retrieve_scu_without_permission_is_rejected(
    scp: Scp, command: list[str], abstracts: set[str]
) -> None:
    """ctnode is a Query/Retrieve SCP, but these callers' peer files accept only echo and store
    (``accept`` has no find, move or get): every context they propose is one they may not use,
    so the association is rejected 1/1/3, calling AE title not recognised (PS3.8 9.3.4), as for
    any caller asking only for what it may not do. getscu's storage contexts, proposed with the
    SCP role for C-GET sub-operations, belong to ``get`` too."""
    done = run_tool([command[0], "-d", *command[1:], "-aec", "CTNODE", "127.0.0.1", scp.port])
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert "Association Rejected" in output, output[-2000:]
    assert "Calling AE Title Not Recognized" in output, output[-2000:]
    assert all(a.startswith(("FIND", "MOVE", "GET")) for a in abstracts)


# ------------------------------------------------------------------ on demand: the cross product


@pytest.mark.ondemand
@pytest.mark.parametrize("pdu", ["4096", "16384"], ids=lambda p: f"PS3.8 9.3.5 PDVs {p}")
@pytest.mark.parametrize(("option", "recipe", "stored_syntax", "compare"), STORE_CASES)
def test_storescu_transfer_syntax_in_small_pdus(
    scp: Scp, option: str, recipe: str, stored_syntax: str, compare: str, pdu: str
) -> None:
    """Every transfer-syntax case again with storescu receiving and sending PDUs of a given
    size (PS3.8 9.3.5, D.1): the stored data set is the same as with default PDUs."""
    sample = scp.sample(recipe)
    _storescu(scp, option, "-pdu", pdu, "--max-send-pdu", pdu, files=[sample.path])
    stored = scp.stored(sample)
    assert transfer_syntax_of(stored) == stored_syntax
    if compare == "bytes":
        assert_same_dataset_bytes(stored, sample.path)
    else:
        assert_same_values(stored, sample.path)
