"""Where a Forge lease goes: gang, topology-aware, best fit.

A lease asks for ``count`` GPUs of one model in a metro (and maybe a tier)
and gets all of them or none:

- up to one node's worth lands on **one node**, the one with the fewest free
  GPUs that still fit (best fit: a half-used node is filled before a whole
  one is broken, so whole nodes stay whole for the big leases);
- more than a node's worth takes **whole nodes** (the count must be a
  multiple of the node size) inside **one NVLink domain**, else inside **one
  rack**, choosing the domain (or rack) with the fewest whole nodes that
  still fit, so the big groups stay big. A node that does not say its
  domain or rack never joins a multi-node lease: its topology is unknown.

Kueue's topology-aware scheduling and Run:ai's bin-packing are the models.

``GpuPool`` keeps, per (metro, tier, GPU model), the nodes by free-GPU count
and the whole nodes by domain and rack, so a placement looks at a handful of
buckets rather than every node (``volt bench sched`` measures it at 10,000
nodes). It decides and keeps the books; it never talks to anything: the
scheduler (the single writer) calls ``place`` then ``allocate`` under one
lock, so two leases never take the same GPU.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import Literal

Scope = Literal["node", "nvlink_domain", "rack"]
TIE_SAMPLE = 32


@dataclass(frozen=True, slots=True)
class GpuNode:
    node_id: str
    metro: str
    tier: str
    gpu_model: str
    gpus: int
    nvlink_domain: str = ""
    rack: str = ""


@dataclass(frozen=True, slots=True)
class GpuRequest:
    gpu_model: str
    count: int
    metro: str
    tier: str | None = None


@dataclass(frozen=True, slots=True)
class GpuPlacement:
    nodes: tuple[tuple[str, int], ...]
    """(node id, GPUs taken there), in node-id order."""
    scope: Scope
    """What holds the whole lease: one node, one NVLink domain or one rack."""

    @property
    def count(self) -> int:
        return sum(gpus for _, gpus in self.nodes)


class Unplaceable(Exception):
    """No placement now. ``code`` says whether waiting can help:
    ``insufficient_capacity`` (it can) or ``invalid_shape`` (it cannot)."""

    def __init__(self, message: str, code: str = "insufficient_capacity") -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class Availability:
    metro: str
    tier: str
    gpu_model: str
    total: int
    free: int
    largest_on_node: int
    largest_in_nvlink_domain: int
    largest_in_rack: int

    @property
    def largest(self) -> int:
        return max(self.largest_on_node, self.largest_in_nvlink_domain, self.largest_in_rack)


def _first(ids: dict[str, None]) -> str:
    return next(iter(ids))


@dataclass
class _Shelf:
    """The schedulable nodes of one (metro, tier, GPU model)."""

    node_gpus: int = 0
    """The largest node size here: multi-node leases come in multiples of it."""
    sizes: set[int] = field(default_factory=set)
    """Every node size seen here (one, almost always)."""
    by_free: list[dict[str, None]] = field(default_factory=list)
    """free GPU count -> node ids (insertion-ordered sets)."""
    whole_by_domain: dict[str, dict[str, None]] = field(default_factory=dict)
    whole_by_rack: dict[str, dict[str, None]] = field(default_factory=dict)
    total: int = 0
    free: int = 0

    def level(self, free: int) -> dict[str, None]:
        while len(self.by_free) <= free:
            self.by_free.append({})
        return self.by_free[free]


class GpuPool:
    def __init__(self) -> None:
        self._nodes: dict[str, GpuNode] = {}
        self._free: dict[str, int] = {}
        self._taken: dict[str, int] = {}
        """GPUs leased per node; kept while a node is away, so it comes back
        with its leases' GPUs still taken."""
        self._schedulable: dict[str, bool] = {}
        self._shelves: dict[tuple[str, str, str], _Shelf] = {}

    # --- the fleet -------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._nodes)

    def node(self, node_id: str) -> GpuNode | None:
        return self._nodes.get(node_id)

    def free(self, node_id: str) -> int:
        return self._free.get(node_id, 0)

    def set_node(self, node: GpuNode, *, schedulable: bool = True) -> None:
        """Add a node or update what it is; GPUs already taken stay taken."""
        old = self._nodes.get(node.node_id)
        if old is not None:
            self._unshelve(old)
        self._nodes[node.node_id] = node
        self._free[node.node_id] = max(0, node.gpus - self._taken.get(node.node_id, 0))
        self._schedulable[node.node_id] = schedulable
        self._shelve(node)

    def set_schedulable(self, node_id: str, schedulable: bool) -> None:
        node = self._nodes.get(node_id)
        if node is None or self._schedulable[node_id] == schedulable:
            return
        self._unshelve(node)
        self._schedulable[node_id] = schedulable
        self._shelve(node)

    def remove(self, node_id: str) -> None:
        node = self._nodes.pop(node_id, None)
        if node is not None:
            self._unshelve(node)
            del self._free[node_id], self._schedulable[node_id]

    def _key(self, node: GpuNode) -> tuple[str, str, str]:
        return (node.metro, node.tier, node.gpu_model)

    def _shelve(self, node: GpuNode) -> None:
        shelf = self._shelves.setdefault(self._key(node), _Shelf())
        free = self._free[node.node_id]
        shelf.total += node.gpus
        if not self._schedulable[node.node_id]:
            return
        shelf.free += free
        shelf.node_gpus = max(shelf.node_gpus, node.gpus)
        shelf.sizes.add(node.gpus)
        shelf.level(free)[node.node_id] = None
        if free == node.gpus:
            if node.nvlink_domain:
                shelf.whole_by_domain.setdefault(node.nvlink_domain, {})[node.node_id] = None
            if node.rack:
                shelf.whole_by_rack.setdefault(node.rack, {})[node.node_id] = None

    def _unshelve(self, node: GpuNode) -> None:
        shelf = self._shelves[self._key(node)]
        free = self._free[node.node_id]
        shelf.total -= node.gpus
        if not self._schedulable[node.node_id]:
            return
        shelf.free -= free
        shelf.by_free[free].pop(node.node_id, None)
        for groups, name in ((shelf.whole_by_domain, node.nvlink_domain),
                             (shelf.whole_by_rack, node.rack)):
            members = groups.get(name)
            if members is not None:
                members.pop(node.node_id, None)
                if not members:
                    del groups[name]

    # --- the books -------------------------------------------------------------

    def allocate(self, placement: GpuPlacement) -> None:
        """Take a placement's GPUs (from ``place``, or reloaded after a restart)."""
        for node_id, gpus in placement.nodes:
            self._take(node_id, gpus)

    def release(self, placement: GpuPlacement) -> None:
        for node_id, gpus in placement.nodes:
            self._take(node_id, -gpus)

    def _take(self, node_id: str, gpus: int) -> None:
        taken = self._taken.get(node_id, 0) + gpus
        if taken > 0:
            self._taken[node_id] = taken
        else:
            self._taken.pop(node_id, None)
        node = self._nodes.get(node_id)
        if node is not None:
            self._unshelve(node)
            self._free[node_id] = max(0, node.gpus - taken)
            self._shelve(node)

    # --- deciding --------------------------------------------------------------

    def _shelves_for(self, request: GpuRequest) -> Iterator[tuple[str, _Shelf]]:
        for (metro, tier, model), shelf in self._shelves.items():
            if (metro == request.metro and model == request.gpu_model
                    and (request.tier is None or tier == request.tier)):
                yield tier, shelf

    def place(self, request: GpuRequest) -> GpuPlacement:
        """The best placement for ``request`` now, or ``Unplaceable`` saying why."""
        if request.count < 1:
            raise Unplaceable("gpu_count must be at least 1", "invalid_shape")
        shelves = list(self._shelves_for(request))
        if not shelves:
            where = f"{request.metro}" + (f", tier {request.tier}" if request.tier else "")
            raise Unplaceable(f"no {request.gpu_model} GPUs in {where}", "invalid_shape")
        node_gpus = max(shelf.node_gpus or 0 for _, shelf in shelves)
        if node_gpus == 0:
            raise Unplaceable(f"no {request.gpu_model} GPU can be leased now")
        if request.count <= node_gpus:
            return self._on_one_node(request, shelves)
        if request.count % node_gpus:
            raise Unplaceable(
                f"a lease larger than one node ({node_gpus} GPUs) takes whole nodes: "
                f"ask for a multiple of {node_gpus}", "invalid_shape")
        return self._on_whole_nodes(request, shelves, request.count // node_gpus, node_gpus)

    def _on_one_node(self, request: GpuRequest,
                     shelves: list[tuple[str, _Shelf]]) -> GpuPlacement:
        best: tuple[int, str] | None = None
        for _, shelf in shelves:
            for free in range(request.count, len(shelf.by_free)):
                if shelf.by_free[free]:
                    if best is None or free < best[0]:
                        best = (free, self._least_costly(shelf, shelf.by_free[free]))
                    break
        if best is None:
            raise Unplaceable(f"no node has {request.count} free {request.gpu_model} GPUs "
                              f"in {request.metro} now")
        return GpuPlacement(nodes=((best[1], request.count),), scope="node")

    def _least_costly(self, shelf: _Shelf, candidates: dict[str, None]) -> str:
        """Among nodes equally free, the one whose use costs the big leases
        least: a partly used node costs nothing more; a whole one costs its
        NVLink domain and rack a whole node, so take it from the group with
        the fewest whole nodes (or with no known group at all). Only the
        first ``TIE_SAMPLE`` candidates are looked at: this is a tie-break,
        and a placement must stay cheap at 10,000 nodes."""
        first = _first(candidates)
        if self._free[first] != self._nodes[first].gpus:
            return first

        def cost(node_id: str) -> tuple[int, int]:
            node = self._nodes[node_id]
            return (len(shelf.whole_by_domain.get(node.nvlink_domain, ())),
                    len(shelf.whole_by_rack.get(node.rack, ())))

        return min(islice(candidates, TIE_SAMPLE), key=cost)

    def _on_whole_nodes(self, request: GpuRequest, shelves: list[tuple[str, _Shelf]],
                        wanted: int, node_gpus: int) -> GpuPlacement:
        for scope in ("nvlink_domain", "rack"):
            best: list[str] | None = None
            for _, shelf in shelves:
                mixed = len(shelf.sizes) > 1
                groups = shelf.whole_by_domain if scope == "nvlink_domain" else shelf.whole_by_rack
                for members in groups.values():
                    if len(members) < wanted or (
                            not mixed and best is not None and len(members) >= len(best)):
                        continue
                    whole = ([node_id for node_id in members
                              if self._nodes[node_id].gpus == node_gpus]
                             if mixed else list(members))
                    if len(whole) >= wanted and (best is None or len(whole) < len(best)):
                        best = whole
            if best is not None:
                chosen = sorted(best[:wanted])
                return GpuPlacement(nodes=tuple((node_id, node_gpus) for node_id in chosen),
                                    scope=scope)
        raise Unplaceable(f"no NVLink domain or rack in {request.metro} has {wanted} whole "
                          f"free {request.gpu_model} nodes now")

    def place_first_fit(self, request: GpuRequest) -> GpuPlacement:
        """The baseline ``volt bench sched`` compares with: the first node (or
        group) in fleet order that fits, scanning every node."""
        candidates = [node for node in self._nodes.values()
                      if self._schedulable[node.node_id] and node.metro == request.metro
                      and node.gpu_model == request.gpu_model
                      and (request.tier is None or node.tier == request.tier)]
        node_gpus = max((node.gpus for node in candidates), default=0)
        if node_gpus and request.count <= node_gpus:
            for node in candidates:
                if self._free[node.node_id] >= request.count:
                    return GpuPlacement(nodes=((node.node_id, request.count),), scope="node")
        elif node_gpus and request.count % node_gpus == 0:
            wanted = request.count // node_gpus
            for scope in ("nvlink_domain", "rack"):
                groups: dict[str, list[str]] = {}
                for node in candidates:
                    group = getattr(node, scope)
                    if group and self._free[node.node_id] == node.gpus == node_gpus:
                        members = groups.setdefault(group, [])
                        members.append(node.node_id)
                        if len(members) == wanted:
                            return GpuPlacement(
                                nodes=tuple((node_id, node_gpus) for node_id in members),
                                scope=scope)
        raise Unplaceable("no fit")

    # --- reporting -------------------------------------------------------------

    def availability(self) -> list[Availability]:
        out = []
        for (metro, tier, model), shelf in sorted(self._shelves.items()):
            on_node = next((free for free in range(len(shelf.by_free) - 1, 0, -1)
                            if shelf.by_free[free]), 0)
            out.append(Availability(
                metro=metro, tier=tier, gpu_model=model, total=shelf.total, free=shelf.free,
                largest_on_node=on_node,
                largest_in_nvlink_domain=_largest_group(shelf.whole_by_domain.values(),
                                                        self._nodes),
                largest_in_rack=_largest_group(shelf.whole_by_rack.values(), self._nodes),
            ))
        return out

    def usable_by_whole_node(self) -> float:
        """The fraction of free GPUs on whole free nodes (what a lease of one
        whole node can use): 1.0 means no fragmentation."""
        free = sum(self._free[n] for n, ok in self._schedulable.items() if ok)
        whole = sum(node.gpus for node_id, node in self._nodes.items()
                    if self._schedulable[node_id] and self._free[node_id] == node.gpus)
        return whole / free if free else 1.0


def _largest_group(groups: Iterable[dict[str, None]], nodes: dict[str, GpuNode]) -> int:
    return max((sum(nodes[node_id].gpus for node_id in members) for members in groups),
               default=0)


__all__ = [
    "Availability",
    "GpuNode",
    "GpuPlacement",
    "GpuPool",
    "GpuRequest",
    "Unplaceable",
]
