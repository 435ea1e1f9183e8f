"""Identity's tables in the state store (migration ``0004_identity``).

No secret is stored in a form that can be used: API keys, device codes,
refresh tokens, console session ids and OIDC ``state`` values are stored as
hashes (keys under a keyed hash whose key is not in the store), and looked up
by those hashes or by a non-secret id.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, Float, ForeignKey, Integer, LargeBinary, String, func
from sqlalchemy.orm import Mapped, mapped_column

from volt.store.schema import Base


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("orgs.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    mode: Mapped[str] = mapped_column(String(8))
    role: Mapped[str] = mapped_column(String(16))
    scopes: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))
    """HMAC-SHA256 of the secret under the keyring's ``api-key-hmac``, hex."""
    prefix: Mapped[str] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    created_by: Mapped[str] = mapped_column(String(300), default="")
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    rpm_limit: Mapped[int | None] = mapped_column(Integer, nullable=True)
    tpm_limit: Mapped[int | None] = mapped_column(Integer, nullable=True)


class User(Base):
    """A person, as an OIDC issuer knows them; ``id`` is what SPIFFE IDs carry."""

    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    issuer: Mapped[str] = mapped_column(String(300))
    subject: Mapped[str] = mapped_column(String(300))
    email: Mapped[str] = mapped_column(String(300), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Member(Base):
    __tablename__ = "members"

    org_id: Mapped[str] = mapped_column(ForeignKey("orgs.id"), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), primary_key=True)
    role: Mapped[str] = mapped_column(String(16))
    source: Mapped[str] = mapped_column(String(16))
    """``oidc``: from the issuer's group claim at the last sign-in; ``manual``: set by an owner."""
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class DeviceGrant(Base):
    __tablename__ = "device_grants"

    device_code_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_code: Mapped[str] = mapped_column(String(16), unique=True)
    client_id: Mapped[str] = mapped_column(String(100))
    scopes: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    org_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    user_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    interval_s: Mapped[int] = mapped_column(Integer)
    last_poll_unix: Mapped[float | None] = mapped_column(Float, nullable=True)
    expires_unix: Mapped[float] = mapped_column(Float)
    created_unix: Mapped[float] = mapped_column(Float)


class RefreshToken(Base):
    __tablename__ = "refresh_tokens"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    family_id: Mapped[str] = mapped_column(String(40), index=True)
    client_id: Mapped[str] = mapped_column(String(100))
    org_id: Mapped[str] = mapped_column(String(40))
    user_id: Mapped[str] = mapped_column(String(40))
    scopes: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    """``active`` (the one usable token of its family), ``rotated`` (used once:
    presenting it again revokes the family) or ``revoked``."""
    created_unix: Mapped[float] = mapped_column(Float)
    expires_unix: Mapped[float] = mapped_column(Float)


class RevokedTokenFamily(Base):
    """Access tokens carry their family id; a revoked family's tokens are refused
    until they would have expired anyway."""

    __tablename__ = "revoked_token_families"

    family_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    revoked_unix: Mapped[float] = mapped_column(Float)
    expires_unix: Mapped[float] = mapped_column(Float)


class OidcLogin(Base):
    """A sign-in in progress: what the callback must check."""

    __tablename__ = "oidc_logins"

    state_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    issuer_name: Mapped[str] = mapped_column(String(100))
    nonce: Mapped[str] = mapped_column(String(100))
    code_verifier: Mapped[str] = mapped_column(String(200))
    return_to: Mapped[str] = mapped_column(String(500))
    expires_unix: Mapped[float] = mapped_column(Float)


class ConsoleSession(Base):
    __tablename__ = "console_sessions"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    issuer_name: Mapped[str] = mapped_column(String(100))
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_unix: Mapped[float] = mapped_column(Float)
    expires_unix: Mapped[float] = mapped_column(Float)


class AuditEventRow(Base):
    """One leaf of the audit log's Merkle tree: ``body`` is the canonical
    encoding of the event, and the leaf hash is SHA-256(0x00 || body)."""

    __tablename__ = "audit_events"

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    event_id: Mapped[str] = mapped_column(String(40), unique=True)
    org_id: Mapped[str] = mapped_column(String(40))
    time_unix: Mapped[float] = mapped_column(Float)
    body: Mapped[bytes] = mapped_column(LargeBinary)


class AuditNode(Base):
    """The hash of a complete subtree: ``level`` 0 are leaf hashes; the node at
    (level, position) covers leaves [position·2^level, (position+1)·2^level)."""

    __tablename__ = "audit_nodes"

    level: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    position: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    hash: Mapped[bytes] = mapped_column(LargeBinary(32))


class AuditCheckpoint(Base):
    __tablename__ = "audit_checkpoints"

    tree_size: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    root_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    time_ms: Mapped[int] = mapped_column(BigInteger)
    key_id: Mapped[str] = mapped_column(String(64))
    signature: Mapped[bytes] = mapped_column(LargeBinary(64))


class SigningKey(Base):
    """Public halves of Volt's signing keys, so anyone can check a signature."""

    __tablename__ = "signing_keys"

    key_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    purpose: Mapped[str] = mapped_column(String(32))
    public_key: Mapped[bytes] = mapped_column(LargeBinary(32))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
