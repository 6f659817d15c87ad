"""SQLAlchemy 2 typed models. Changing them needs an Alembic revision in ``migrations/``."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from ctnode.db.types import UTCDateTime

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base with a constraint naming convention (stable migration names)."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


UID = String(64)


class Instance(Base):
    """One stored SOP instance: its index keys, where it is, how it arrived."""

    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    study_instance_uid: Mapped[str] = mapped_column(UID, index=True)
    series_instance_uid: Mapped[str] = mapped_column(UID, index=True)
    patient_id: Mapped[str | None] = mapped_column(String(64))
    patient_name: Mapped[str | None] = mapped_column(String(324))
    study_date: Mapped[str | None] = mapped_column(String(8))
    study_time: Mapped[str | None] = mapped_column(String(16))
    accession_number: Mapped[str | None] = mapped_column(String(16))
    study_description: Mapped[str | None] = mapped_column(String(64))
    series_description: Mapped[str | None] = mapped_column(String(64))
    modality: Mapped[str | None] = mapped_column(String(16))
    series_number: Mapped[int | None] = mapped_column(Integer)
    instance_number: Mapped[int | None] = mapped_column(Integer)
    transfer_syntax_uid: Mapped[str] = mapped_column(UID)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    calling_ae: Mapped[str | None] = mapped_column(String(16))
    source_address: Mapped[str | None] = mapped_column(String(64))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: Path relative to ``<data_dir>/store``.
    path: Mapped[str] = mapped_column(String(400))
    #: The node whose data dir holds the file.
    node_name: Mapped[str] = mapped_column(String(64))
    #: Set when the file was removed (retention after storage commitment).
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # -- query/retrieve keys (revision 0005) --
    patient_birth_date: Mapped[str | None] = mapped_column(String(8))
    patient_sex: Mapped[str | None] = mapped_column(String(16))
    study_id: Mapped[str | None] = mapped_column(String(16))
    referring_physician_name: Mapped[str | None] = mapped_column(String(324))
    body_part_examined: Mapped[str | None] = mapped_column(String(16))
    series_date: Mapped[str | None] = mapped_column(String(8))
    series_time: Mapped[str | None] = mapped_column(String(16))
    rows: Mapped[int | None] = mapped_column(Integer)
    columns: Mapped[int | None] = mapped_column(Integer)
    number_of_frames: Mapped[int | None] = mapped_column(Integer)
    #: What the row holds: None for rows written before revision 0005 (without the keys above;
    #: ``ctnode db upgrade`` fills them from the stored files), ``INDEX_VERSION`` since.
    index_version: Mapped[int | None] = mapped_column(Integer)

    __table_args__ = (Index("ix_instances_patient_id", "patient_id"),)


class Job(Base):
    """A unit of outbound work (push, query, move, commit). Written only by queue.repository."""

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    peer: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))
    priority: Mapped[int] = mapped_column(Integer, default=0)
    not_before: Mapped[datetime] = mapped_column(UTCDateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer)
    #: Retry policy in force for this job (a snapshot: later config changes do not alter it).
    retry_policy: Mapped[dict[str, Any]] = mapped_column(JSON)
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: Jobs that read files from one node's disk run only there (None: any node).
    node_name: Mapped[str | None] = mapped_column(String(64))
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    last_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    idempotency_key: Mapped[str | None] = mapped_column(String(128), unique=True)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    progress: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ix_jobs_claim", "state", "not_before", "priority"),)


class JobItem(Base):
    """One instance a job handles, with its own outcome."""

    __tablename__ = "job_items"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    seq: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16))
    sop_class_uid: Mapped[str | None] = mapped_column(String(64))
    sop_instance_uid: Mapped[str | None] = mapped_column(String(64))
    transfer_syntax_uid: Mapped[str | None] = mapped_column(String(64))
    path: Mapped[str | None] = mapped_column(String(1024))
    status: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: Storage commitment: the transaction that last asked for this item.
    transaction_uid: Mapped[str | None] = mapped_column(String(64), index=True)


class JobEvent(Base):
    """The event trail of a job (claimed, attempt outcome, retry scheduled, ...)."""

    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    event: Mapped[str] = mapped_column(String(32))
    attempt: Mapped[int | None] = mapped_column(Integer)
    node: Mapped[str | None] = mapped_column(String(128))
    status: Mapped[int | None] = mapped_column(Integer)
    message: Mapped[str | None] = mapped_column(Text)


class Node(Base):
    """A running ``ctnode run`` process, seen through its heartbeat (for status and --wait)."""

    __tablename__ = "nodes"

    owner: Mapped[str] = mapped_column(String(128), primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    pid: Mapped[int] = mapped_column(Integer)
    version: Mapped[str] = mapped_column(String(32))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime)
    stopped_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class CommitTransaction(Base):
    """A storage commitment request, persisted before its N-ACTION is sent."""

    __tablename__ = "commit_transactions"

    transaction_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    #: Peer name and the AE title a valid report must come from.
    peer: Mapped[str] = mapped_column(String(64))
    peer_ae_title: Mapped[str] = mapped_column(String(16))
    #: open (N-ACTION not yet confirmed), requested (waiting for the report), reported,
    #: expired (deadline passed), superseded (a newer transaction replaced it)
    state: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    deadline: Mapped[datetime | None] = mapped_column(UTCDateTime)
    reported_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    event_type: Mapped[int | None] = mapped_column(Integer)


class InstanceCommitment(Base):
    """A peer's confirmed storage commitment of one instance."""

    __tablename__ = "instance_commitments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    peer: Mapped[str] = mapped_column(String(64))
    transaction_uid: Mapped[str] = mapped_column(String(64))
    committed_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (UniqueConstraint("sop_instance_uid", "peer"),)


class IncomingCommitment(Base):
    """A storage commitment request a peer sent us (N-ACTION; ctnode as SCP) and its report.
    Written only by ``commitment_scp.transactions``."""

    __tablename__ = "incoming_commitments"

    transaction_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    #: The requesting peer (its file's name), its AE title and address when it asked.
    peer: Mapped[str] = mapped_column(String(64), index=True)
    calling_ae: Mapped[str] = mapped_column(String(16))
    peer_address: Mapped[str] = mapped_column(String(64))
    #: local or upstream (``commitment_scp.mode`` when the request came), and the upstream peers.
    mode: Mapped[str] = mapped_column(String(16))
    upstream: Mapped[list[str]] = mapped_column(JSON)
    #: pending (report not yet answered by the peer), reported, failed (gave up sending it)
    state: Mapped[str] = mapped_column(String(16), index=True)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: Upstream mode: when what is not committed by then is reported as failed.
    deadline: Mapped[datetime | None] = mapped_column(UTCDateTime)
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    reported_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: 1 all committed, 2 failures exist (once decided).
    event_type: Mapped[int | None] = mapped_column(Integer)
    #: The job that sends the report on a new association.
    report_job_id: Mapped[int | None] = mapped_column(Integer)
    report_attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)


class IncomingCommitmentItem(Base):
    """One instance of an incoming commitment request, with ctnode's answer for it."""

    __tablename__ = "incoming_commitment_items"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    transaction_uid: Mapped[str] = mapped_column(
        ForeignKey("incoming_commitments.transaction_uid", ondelete="CASCADE"), index=True
    )
    seq: Mapped[int] = mapped_column(Integer)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    sop_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    #: pending, committed, failed
    state: Mapped[str] = mapped_column(String(16))
    #: PS3.4 J.3.3 Failure Reason when failed (0x0110, 0x0112, 0x0119, ...).
    failure_reason: Mapped[int | None] = mapped_column(Integer)


class RouteArrival(Base):
    """The routing decisions of one instance as made at ingest (issue 14, revision 0007).

    Inserted in the same transaction as the instance's row (``storage.rows``): one row per
    routed instance, whatever the number of its destinations. Only the primary key is indexed
    (rows are appended and removed in key order, so each insert is one append to one B-tree):
    the forwarder expands each into its ``route_matches`` rows and deletes it
    (``routing.arrivals``); readers count an arrival as its decisions, pending.
    """

    __tablename__ = "route_arrivals"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID)
    study_instance_uid: Mapped[str] = mapped_column(UID)
    series_instance_uid: Mapped[str] = mapped_column(UID)
    #: The node whose store holds the instance (its forwarder expands the row).
    node_name: Mapped[str] = mapped_column(String(64))
    matched_at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: JSON list of [route, destination, trigger, stable_after, commit], one per destination.
    decisions: Mapped[str] = mapped_column(Text)


class RouteMatch(Base):
    """A routing decision: one instance to forward to one destination by one route (issue 14).

    Written by ``routing.forwarder`` when it expands the instance's ``route_arrivals`` row
    (``matched_at`` kept from it), or by ``routes replay``; its state is then written only by
    the forwarder. At most one per instance and destination: an instance reaches each
    destination once, whatever routes match it.
    """

    __tablename__ = "route_matches"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    route: Mapped[str] = mapped_column(String(64))
    destination: Mapped[str] = mapped_column(String(64))
    sop_instance_uid: Mapped[str] = mapped_column(UID)
    #: Not indexed: a study's decisions are found through ``instances`` (its study index).
    study_instance_uid: Mapped[str] = mapped_column(UID)
    series_instance_uid: Mapped[str] = mapped_column(UID)
    #: The route's trigger, stable_after and commit when it matched (the decision as made).
    trigger: Mapped[str] = mapped_column(String(16))
    stable_after: Mapped[float] = mapped_column(Float)
    commit: Mapped[bool] = mapped_column(Boolean)
    #: The node whose store holds the instance (its forwarder sends it).
    node_name: Mapped[str] = mapped_column(String(64))
    #: pending (waiting for its study/series to be stable), queued (in a forward job),
    #: delivered, failed (``error`` says why)
    state: Mapped[str] = mapped_column(String(16))
    #: The forward that took it: a token written before the job exists, then the job's id.
    #: Not indexed (each index costs every ingest a write): rows are found by state first.
    batch: Mapped[str | None] = mapped_column(String(64))
    job_id: Mapped[int | None] = mapped_column(Integer)
    matched_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        UniqueConstraint("sop_instance_uid", "destination"),
        Index("ix_route_matches_state_node", "state", "node_name"),
    )
