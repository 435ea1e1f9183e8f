"""What the scheduler records: the model catalog and the node inventory."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select

from volt.store.database import Database
from volt.store.schema import CatalogModel, Node
from volt.wire import ModelCard, NodeHello


class Inventory:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def models(self) -> list[ModelCard]:
        async with self.db.session() as session:
            rows = (await session.scalars(select(CatalogModel).order_by(CatalogModel.id))).all()
        return [
            ModelCard(id=row.id, created=int(row.created_at.timestamp()), owned_by=row.owned_by)
            for row in rows
        ]

    async def add_models(self, model_ids: set[str]) -> None:
        async with self.db.session() as session, session.begin():
            known = set((await session.scalars(
                select(CatalogModel.id).where(CatalogModel.id.in_(model_ids))
            )).all())
            for model_id in sorted(model_ids - known):
                session.add(CatalogModel(id=model_id, owned_by="volt"))

    async def places(self) -> tuple[set[str], set[str]]:
        """The metros and tiers of every node ever recorded."""
        async with self.db.session() as session:
            rows = (await session.execute(select(Node.metro, Node.tier).distinct())).all()
        return {row.metro for row in rows}, {row.tier for row in rows}

    async def record_node(self, hello: NodeHello) -> None:
        now = datetime.now(UTC)
        async with self.db.session() as session, session.begin():
            node = await session.get(Node, hello.node_id)
            if node is None:
                session.add(Node(
                    id=hello.node_id, metro=hello.metro, tier=hello.tier, engine=hello.engine,
                    gpu_count=len(hello.gpus), first_seen=now, last_seen=now,
                ))
            else:
                node.metro, node.tier, node.engine = hello.metro, hello.tier, hello.engine
                node.gpu_count, node.last_seen = len(hello.gpus), now
