"""A tenant's catalog: the models, metros and tiers it may use.

Sovereignty is enforced here: a tenant limited to some metros is never
served anywhere else, whatever it asks for. ``None`` for a dimension means
no limit. Stored as JSON on the tenant's row; loaded with its API key.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec


class _Stored(msgspec.Struct, omit_defaults=True):
    models: list[str] | None = None
    metros: list[str] | None = None
    tiers: list[str] | None = None


@dataclass(frozen=True, slots=True)
class Catalog:
    models: frozenset[str] | None = None
    metros: frozenset[str] | None = None
    tiers: frozenset[str] | None = None

    def allows_model(self, model: str) -> bool:
        return self.models is None or model in self.models

    def to_json(self) -> str | None:
        if self == EVERYTHING:
            return None
        return msgspec.json.encode(_Stored(
            models=sorted(self.models) if self.models is not None else None,
            metros=sorted(self.metros) if self.metros is not None else None,
            tiers=sorted(self.tiers) if self.tiers is not None else None,
        )).decode()

    @classmethod
    def from_json(cls, text: str | None) -> Catalog:
        if not text:
            return EVERYTHING
        stored = msgspec.json.decode(text, type=_Stored)
        return cls(
            models=frozenset(stored.models) if stored.models is not None else None,
            metros=frozenset(stored.metros) if stored.metros is not None else None,
            tiers=frozenset(stored.tiers) if stored.tiers is not None else None,
        )


EVERYTHING = Catalog()
