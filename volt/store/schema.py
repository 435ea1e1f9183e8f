"""The state store's tables (SQLAlchemy 2 declarative).

Nothing here ever holds a prompt, a completion or a secret in clear. The
identity package keeps its own tables (``volt/identity/tables.py``) on the same
``Base``. Schema changes go through Alembic (``volt/store/migrations``).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, DateTime, Float, Index, Integer, String, Text, func
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Org(Base):
    """An organisation: every resource (key, usage record, and later lease,
    rack, job, file) belongs to one. Its SPIFFE ID is derived from the trust
    domain in configuration (``volt/identity/spiffe.py``), never stored."""

    __tablename__ = "orgs"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    catalog: Mapped[str | None] = mapped_column(Text, nullable=True)
    """JSON: the models, metros and tiers it may use (``volt/store/catalog.py``); NULL: all."""
    gpu_quota: Mapped[int | None] = mapped_column(Integer, nullable=True)
    """Most GPUs its Forge leases may hold at once; NULL: ``forge.default_gpu_quota``."""


class CatalogModel(Base):
    """A model Volt has served: known models answer 503, not 404, when no pod is up."""

    __tablename__ = "catalog_models"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    owned_by: Mapped[str] = mapped_column(String(100), default="volt")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Node(Base):
    """Inventory: every node that ever joined (the live state is in the scheduler)."""

    __tablename__ = "nodes"

    id: Mapped[str] = mapped_column(String(100), primary_key=True)
    metro: Mapped[str] = mapped_column(String(64), index=True)
    tier: Mapped[str] = mapped_column(String(64))
    engine: Mapped[str] = mapped_column(String(32))
    gpu_count: Mapped[int] = mapped_column(default=0)
    first_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class UsageRow(Base):
    """One request's usage, as its pod reported it (token counts only).

    ``request_id`` is the key, so a record delivered twice (a restart between
    storing and acknowledging) is stored once. ``day`` is the UTC date of the
    request's end, kept as text so grouping by day is the same SQL everywhere.
    """

    __tablename__ = "usage_records"
    __table_args__ = (Index("ix_usage_org_day", "org_id", "day"),)

    request_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    org_id: Mapped[str] = mapped_column(String(40))
    spiffe_id: Mapped[str] = mapped_column(String(300), default="")
    livemode: Mapped[bool] = mapped_column(Boolean, default=True)
    """False for requests made with a ``volt_sk_test_`` key: never billed."""
    key_id: Mapped[str] = mapped_column(String(40))
    model: Mapped[str] = mapped_column(String(200))
    endpoint: Mapped[str] = mapped_column(String(40))
    metro: Mapped[str] = mapped_column(String(64))
    tier: Mapped[str] = mapped_column(String(64))
    pod: Mapped[str] = mapped_column(String(100))
    stream: Mapped[bool] = mapped_column(Boolean)
    status: Mapped[str] = mapped_column(String(16))
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    cached_tokens: Mapped[int] = mapped_column(Integer)
    started_unix: Mapped[float] = mapped_column(Float)
    ended_unix: Mapped[float] = mapped_column(Float, index=True)
    day: Mapped[str] = mapped_column(String(10))


class Resource(Base):
    """A durable resource with a lifecycle: a Forge lease today; Vault racks and
    fine-tune jobs next. ``state`` moves only through the kind's transition table
    (``volt/lifecycle.py``), written by one writer (the scheduler); ``spec`` is
    what the tenant asked for and ``status`` what Volt made of it (JSON: no
    payload and no secret ever lives here)."""

    __tablename__ = "resources"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    org_id: Mapped[str] = mapped_column(String(40), index=True)
    state: Mapped[str] = mapped_column(String(32))
    spec: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text, default="{}")
    reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)
    version: Mapped[int] = mapped_column(Integer, default=1)
    __table_args__ = (
        Index("ix_resources_kind_org_created", "kind", "org_id", "created_at"),
        Index("ix_resources_kind_state", "kind", "state"),
    )


class ResourceEvent(Base):
    """Every transition a resource made: from, to, on what, why, when."""

    __tablename__ = "resource_events"

    resource_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[float] = mapped_column(Float)
    event: Mapped[str] = mapped_column(String(32))
    from_state: Mapped[str] = mapped_column(String(32))
    to_state: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str] = mapped_column(Text, default="")


class ResourceLogEntry(Base):
    """A resource's own log, as its owner reads it (a fine-tuning job's events):
    appended in the transaction of the change it tells of, never rewritten."""

    __tablename__ = "resource_log"

    resource_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    entry_id: Mapped[str] = mapped_column(String(40))
    at: Mapped[float] = mapped_column(Float)
    entry: Mapped[str] = mapped_column(Text)
    """The entry as its reader gets it (JSON)."""
    __table_args__ = (Index("ix_resource_log_entry", "resource_id", "entry_id", unique=True),)
