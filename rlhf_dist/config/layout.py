"""Pool arithmetic, computed once for every command: which roles share which pool and how many GPUs are reserved.

Pure (no Ray): the config checks call it before anything starts, and the runtime places actors by it.
"""
from __future__ import annotations

import dataclasses

from rlhf_dist.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class PoolLayout:
    gpus_per_pool: dict[str, int]  # GPUs reserved per pool (a used pool is reserved whole, 0 when unused)
    roles_per_pool: dict[str, list[str]]
    total_gpus: int

    def share(self, pool: str) -> float:
        """The GPU fraction each actor of a role on `pool` asks for: colocated roles fit side by side."""
        return 1.0 / len(self.roles_per_pool[pool])


def pool_layout(pools: dict, roles: dict[str, tuple[str, int]]) -> PoolLayout:
    """pools: name -> PoolConfig; roles: role -> (pool, GPUs it needs). Checks that each role fits its pool."""
    per_pool: dict[str, list[str]] = {name: [] for name in pools}
    for role, (pool, n) in roles.items():
        if pool not in pools:
            raise ConfigError(f"placement.{role}.pool: {pool!r} is not one of placement.pools ({', '.join(pools)})")
        size = pools[pool].gpus
        if n > size:
            raise ConfigError(
                f"placement.{role}: needs {n} GPUs but pool {pool!r} has {size} "
                f"({pools[pool].nodes} nodes x {pools[pool].gpus_per_node} GPUs); short by {n - size}"
            )
        per_pool[pool].append(role)
    gpus = {name: pools[name].gpus if per_pool[name] else 0 for name in pools}
    return PoolLayout(gpus, per_pool, sum(gpus.values()))


def check_tp_on_node(field: str, tp: int, pools: dict, pool: str) -> None:
    """A tensor-parallel engine's workers share one node, and a node's share of the pool holds whole engines:
    `tp` must divide the pool's `gpus_per_node` (its bundles are then packed on one node, runtime/placement.py)."""
    if pool not in pools:
        return  # pool_layout names the unknown pool
    per_node = pools[pool].gpus_per_node
    if tp > per_node:
        raise ConfigError(f"{field}: {tp} exceeds the GPUs per node of pool {pool!r} ({per_node}); a tensor-parallel "
                          "engine must fit on one node")
    if per_node % tp:
        raise ConfigError(f"{field}: {tp} does not divide the GPUs per node of pool {pool!r} ({per_node}); an engine's "
                          "GPUs must all be on one node, so each node must hold whole engines")


# Past this many search steps the per-node check gives up and lets Ray's placement (with its deadline) decide.
_SEARCH_LIMIT = 200_000


def place_on_nodes(pools: dict, layout: PoolLayout, node_gpus: list[int]) -> dict[str, tuple[int, ...]]:
    """Which nodes each used pool's per-node shares go to: pool -> `nodes` distinct node indices, each node
    holding at most its GPUs over all pools. Refuses, naming the first pool (in config order) that cannot be
    placed beside the pools before it. Pure: node_gpus are the GPUs of each node (Ray's, or cluster.node_gpus)."""
    used = [(name, pools[name].nodes, pools[name].gpus_per_node) for name in pools if layout.gpus_per_pool.get(name)]
    shown = ", ".join(map(str, node_gpus)) or "none"
    found: dict[str, tuple[int, ...]] = {}
    for k, (name, nodes, per_node) in enumerate(used):
        wide = sum(g >= per_node for g in node_gpus)
        if wide < nodes:
            raise ConfigError(
                f"placement.pools.{name}: needs {nodes} node(s) with {per_node} GPUs each, but the cluster has "
                f"{wide} such node(s) (GPUs per node: {shown})"
            )
        got = _search(used[: k + 1], list(node_gpus))
        if got is None:
            before = ", ".join(n for n, _, _ in used[:k])
            raise ConfigError(
                f"placement.pools.{name}: {nodes} node(s) x {per_node} GPUs cannot be placed beside pool(s) {before} "
                f"(GPUs per node: {shown}; a pool's share of each node stays on that node)"
            )
        if got is not _UNKNOWN:
            found = got
    return found


_UNKNOWN = object()


def _search(pools: list[tuple[str, int, int]], free: list[int]):
    """Depth-first over the pools' choices of distinct nodes; None when no placement exists."""
    import itertools

    steps = [0]
    seen: set = set()

    def go(i: int):
        if i == len(pools):
            return {}
        key = (i, tuple(free))
        if key in seen:
            return None
        name, nodes, per_node = pools[i]
        for choice in itertools.combinations([n for n, g in enumerate(free) if g >= per_node], nodes):
            steps[0] += 1
            if steps[0] > _SEARCH_LIMIT:
                return _UNKNOWN
            for n in choice:
                free[n] -= per_node
            rest = go(i + 1)
            for n in choice:
                free[n] += per_node
            if rest is _UNKNOWN:
                return _UNKNOWN
            if rest is not None:
                return {name: choice, **rest}
        seen.add(key)
        return None

    return go(0)
