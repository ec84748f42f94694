"""Pools of GPUs -> Ray placement groups, and the one place where actors get their slots.

A pool of `nodes x gpus_per_node` GPUs is one placement group per node, each of `gpus_per_node` one-GPU bundles
packed on one node (STRICT_PACK), the pool's groups on distinct nodes. Which node each group takes is decided
here, before anything is created (`place_on_nodes` over Ray's nodes), and each group is pinned to its node by
Ray's node-id label: the same decision on a CPU machine's logical GPUs as on a GPU cluster.

A role with k ranks of g GPUs each takes the pool's first k*g bundles, g consecutive bundles per rank (a
tensor-parallel engine's workers); g divides gpus_per_node (config/layout.py), so a rank's bundles are always
in one node's group. Bundle b of a pool is bundle b % gpus_per_node of its group b // gpus_per_node. When
several roles share a pool, each actor asks for 1/len(roles) of its bundle's GPU so they fit side by side.
"""
from __future__ import annotations

import dataclasses
import uuid

from rlhf_dist.errors import ConfigError, WaitTimeout
from rlhf_dist.config.layout import PoolLayout, place_on_nodes

NODE_LABEL = "ray.io/node-id"  # the label Ray gives every node: its id


@dataclasses.dataclass(frozen=True)
class Slot:
    """Where one actor of a role goes: its pool, the bundles it owns (several for a TP engine) and its share."""

    pool: str
    bundles: tuple[int, ...]
    gpu_fraction: float

    @property
    def bundle(self) -> int:
        """The bundle the actor itself is scheduled on."""
        return self.bundles[0]


@dataclasses.dataclass
class PoolGroups:
    """A started pool: its per-node placement groups and the node each one is pinned to."""

    name: str
    groups: list
    node_ids: list[str]
    gpus_per_node: int

    def locate(self, bundle: int) -> tuple[object, int]:
        """Pool-wide bundle index -> (placement group, bundle index inside it)."""
        return self.groups[bundle // self.gpus_per_node], bundle % self.gpus_per_node

    def node_of(self, bundle: int) -> str:
        return self.node_ids[bundle // self.gpus_per_node]


def plan_slots(specs, layout: PoolLayout) -> dict[str, list[Slot]]:
    """role name -> one Slot per rank, for role specs with `name`, `pool`, `ranks` and `gpus_per_rank`."""
    out: dict[str, list[Slot]] = {}
    for s in specs:
        g = s.gpus_per_rank
        out[s.name] = [Slot(s.pool, tuple(range(r * g, (r + 1) * g)), layout.share(s.pool)) for r in range(s.ranks)]
    return out


def alive_gpu_nodes(nodes: list[dict]) -> list[tuple[str, int]]:
    """(node id, GPUs) of Ray's live nodes, from `ray.nodes()`."""
    return [(n.get("NodeID", ""), int(n.get("Resources", {}).get("GPU", 0))) for n in nodes if n.get("Alive", True)]


def check_cluster_fits(pools: dict, layout: PoolLayout, resources: dict, nodes: list[dict]) -> dict[str, tuple[int, ...]]:
    """Refuse layouts the cluster cannot hold, naming the pool and the shortfall; returns the pools' node indices
    into `nodes`' live entries. Pure: takes Ray's numbers."""
    have = int(resources.get("GPU", 0))
    left = have
    for name, need in layout.gpus_per_pool.items():
        if need > left:
            taken = have - left
            raise ConfigError(
                f"placement.pools.{name}: needs {need} GPUs but the cluster has {have}"
                + (f", {taken} of them taken by the pools before it" if taken else "")
                + f"; short by {need - left}"
            )
        left -= need
    gpus_on_node = [g for _, g in alive_gpu_nodes(nodes)]
    biggest = max(gpus_on_node, default=0)
    for name, pool in pools.items():
        if layout.gpus_per_pool[name] and pool.gpus_per_node > biggest:
            raise ConfigError(
                f"placement.pools.{name}.gpus_per_node: {pool.gpus_per_node} GPUs per node, but the largest node "
                f"in the cluster has {biggest}; short by {pool.gpus_per_node - biggest}"
            )
    return place_on_nodes(pools, layout, gpus_on_node)


def _free_gpus(nodes: list[tuple[str, int]]) -> list[int]:
    """GPUs free on each node now (other jobs may hold some); the totals where Ray cannot say."""
    try:
        from ray._private.state import available_resources_per_node

        free = available_resources_per_node()
        return [int(free.get(node, {}).get("GPU", 0)) for node, _ in nodes]
    except Exception:  # noqa: BLE001 - an internal API: fall back to the totals
        return [g for _, g in nodes]


def create_pools(pools: dict, layout: PoolLayout, run_name: str, timeout_s: float) -> dict[str, PoolGroups]:
    """The used pools' per-node placement groups, each pinned to the node chosen for it; waits for all of them,
    naming the pool that cannot be placed."""
    import ray
    from ray.util.placement_group import placement_group

    nodes = alive_gpu_nodes(ray.nodes())
    try:  # where the free GPUs allow it; otherwise the totals' placement, and the deadline below names the pool
        chosen = place_on_nodes(pools, layout, _free_gpus(nodes))
    except ConfigError:
        chosen = place_on_nodes(pools, layout, [g for _, g in nodes])
    out: dict[str, PoolGroups] = {}
    # Ray removes placement groups asynchronously: a restart (or the next job) must not reuse a name.
    unique = uuid.uuid4().hex[:8]
    for name, pool in pools.items():
        if layout.gpus_per_pool[name] == 0:
            continue
        # Whole pool size is reserved so that colocated roles and later scaling see the same GPUs.
        picked = chosen.get(name) or tuple(range(pool.nodes))  # the search gave up: Ray places them (packed)
        ids = [nodes[i][0] for i in picked]
        groups = []
        for n, node in enumerate(ids):
            selector = [{NODE_LABEL: node}] * pool.gpus_per_node if name in chosen else None
            groups.append(placement_group([{"GPU": 1.0}] * pool.gpus_per_node, strategy="STRICT_PACK",
                                          name=f"rlhf_dist/{run_name}/{name}/node{n}/{unique}", bundle_label_selector=selector))
        out[name] = PoolGroups(name, groups, ids, pool.gpus_per_node)
    for name, pg in out.items():
        ready, _ = ray.wait([g.ready() for g in pg.groups], num_returns=len(pg.groups), timeout=timeout_s)
        if len(ready) < len(pg.groups):
            remove_pools(out)
            raise WaitTimeout(
                f"placement group for pool {name!r} ({pools[name].nodes} node(s) x {pools[name].gpus_per_node} GPUs) not "
                f"placed within {timeout_s:.0f} s: the cluster has {ray.available_resources().get('GPU', 0):.0f} free GPUs"
            )
        if name not in chosen:  # placed by Ray: read where
            pg.node_ids = [_group_node(g) for g in pg.groups]
    return out


def _group_node(pg) -> str:
    from ray.util.placement_group import placement_group_table

    return placement_group_table(pg).get("bundles_to_node_id", {}).get(0, "")


def remove_pools(pools: dict) -> None:
    from ray.util.placement_group import remove_placement_group

    for pool in pools.values():
        for pg in pool.groups:
            try:
                remove_placement_group(pg)
            except Exception:  # noqa: BLE001 - best effort at shutdown
                pass
