"""The state store's tables (SQLAlchemy 2 declarative).

Nothing here ever holds a prompt, a completion or a secret in clear: API keys
are stored as SHA-256 digests (keys are 256-bit random tokens, so a fast hash
is the right tool; a password hash would only add latency to every request).
Schema changes go through Alembic (``volt/store/migrations``).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, DateTime, Float, ForeignKey, Index, Integer, String, Text, func
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    spiffe_id: Mapped[str] = mapped_column(String(300), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    catalog: Mapped[str | None] = mapped_column(Text, nullable=True)
    """JSON: the models, metros and tiers it may use (``volt/store/catalog.py``); NULL: all."""


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    prefix: Mapped[str] = mapped_column(String(32))
    """The first characters of the key, to recognise it in listings."""
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


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
    __table_args__ = (Index("ix_usage_tenant_day", "tenant_id", "day"),)

    request_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(40))
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
