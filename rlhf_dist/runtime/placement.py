"""Pools of GPUs -> Ray placement groups, and the one place where actors get their slots.

Each pool is one placement group of `nodes * gpus_per_node` bundles of one GPU, reserved whole. A role with k
ranks of g GPUs each takes the pool's first k*g bundles, g consecutive bundles per rank (a tensor-parallel
engine's workers); when several roles share a pool, each actor asks for 1/len(roles) of its bundle's GPU so
they fit side by side. On a CPU-only machine the same code runs on Ray's logical GPUs.
"""
from __future__ import annotations

import dataclasses
import uuid

from rlhf_dist.errors import ConfigError, WaitTimeout
from rlhf_dist.config.layout import PoolLayout


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


def plan_slots(specs, layout: PoolLayout) -> dict[str, list[Slot]]:
    """role name -> one Slot per rank, for role specs with `name`, `pool`, `ranks` and `gpus_per_rank`."""
    out: dict[str, list[Slot]] = {}
    for s in specs:
        g = s.gpus_per_rank
        out[s.name] = [Slot(s.pool, tuple(range(r * g, (r + 1) * g)), layout.share(s.pool)) for r in range(s.ranks)]
    return out


def check_cluster_fits(pools: dict, layout: PoolLayout, resources: dict, nodes: list[dict]) -> None:
    """Refuse layouts the cluster cannot hold, naming the pool and the shortfall. Pure: takes Ray's numbers."""
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
    gpus_on_node = [int(n.get("Resources", {}).get("GPU", 0)) for n in nodes if n.get("Alive", True)]
    biggest = max(gpus_on_node, default=0)
    for name, pool in pools.items():
        if layout.gpus_per_pool[name] and pool.gpus_per_node > biggest:
            raise ConfigError(
                f"placement.pools.{name}.gpus_per_node: {pool.gpus_per_node} GPUs per node, but the largest node "
                f"in the cluster has {biggest}; short by {pool.gpus_per_node - biggest}"
            )


def create_pools(pools: dict, layout: PoolLayout, run_name: str, timeout_s: float) -> dict:
    """One placement group per used pool; waits for all of them, naming the pool that cannot be placed."""
    import ray
    from ray.util.placement_group import placement_group

    groups = {}
    for name, pool in pools.items():
        if layout.gpus_per_pool[name] == 0:
            continue
        # Whole pool size is reserved so that colocated roles and later scaling see the same GPUs.
        bundles = [{"GPU": 1.0} for _ in range(pool.gpus)]
        # Ray removes placement groups asynchronously: a restart (or the next job) must not reuse the name.
        unique = uuid.uuid4().hex[:8]
        groups[name] = placement_group(bundles, strategy="PACK", name=f"rlhf_dist/{run_name}/{name}/{unique}")
    for name, pg in groups.items():
        ready, _ = ray.wait([pg.ready()], timeout=timeout_s)
        if not ready:
            remove_pools(groups)
            raise WaitTimeout(
                f"placement group for pool {name!r} ({pools[name].gpus} GPUs) not placed within "
                f"{timeout_s:.0f} s: the cluster has {ray.available_resources().get('GPU', 0):.0f} free GPUs"
            )
    return groups


def remove_pools(groups: dict) -> None:
    from ray.util.placement_group import remove_placement_group

    for pg in groups.values():
        try:
            remove_placement_group(pg)
        except Exception:  # noqa: BLE001 - best effort at shutdown
            pass
