"""Pools of GPUs -> Ray placement groups; roles map to pools; roles on one pool are colocated.

Each pool is one placement group of `nodes * gpus_per_node` bundles of one GPU. A role with k GPUs takes the
pool's first k bundles; when several roles share a pool, each of their actors asks for 1/len(roles) of the
bundle's GPU so they fit side by side. On a CPU-only machine the same code runs on Ray's logical GPUs.
"""
from __future__ import annotations

import dataclasses
import uuid

from rlhf_dist.config import Config, ConfigError, Derived, role_gpus
from rlhf_dist.errors import WaitTimeout


@dataclasses.dataclass(frozen=True)
class Slot:
    """Where one actor of a role goes."""

    pool: str
    bundle: int
    gpu_fraction: float


def check_cluster_fits(cfg: Config, derived: Derived, resources: dict, nodes: list[dict]) -> None:
    """Refuse layouts the cluster cannot hold, naming the pool and the shortfall. Pure: takes Ray's numbers."""
    have = int(resources.get("GPU", 0))
    left = have
    for name, need in derived.gpus_per_pool.items():
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
    for name, pool in cfg.placement.pools.items():
        if derived.gpus_per_pool[name] and pool.gpus_per_node > biggest:
            raise ConfigError(
                f"placement.pools.{name}.gpus_per_node: {pool.gpus_per_node} GPUs per node, but the largest node "
                f"in the cluster has {biggest}; short by {pool.gpus_per_node - biggest}"
            )


def role_slots(cfg: Config, derived: Derived) -> dict[str, list[Slot]]:
    """role -> one Slot per actor. Rollout engines with tensor parallelism take tp bundles each (the first given)."""
    out: dict[str, list[Slot]] = {}
    tp = cfg.placement.rollout.tensor_parallel_size
    for role, (pool, n) in role_gpus(cfg).items():
        frac = 1.0 / len(derived.roles_per_pool[pool])
        step = tp if role == "rollout" else 1
        out[role] = [Slot(pool, b, frac) for b in range(0, n, step)]
    return out


def create_pools(cfg: Config, derived: Derived, timeout_s: float) -> dict:
    """One placement group per used pool; waits for all of them, naming the pool that cannot be placed."""
    import ray
    from ray.util.placement_group import placement_group

    groups = {}
    for name, pool in cfg.placement.pools.items():
        n = derived.gpus_per_pool[name]
        if n == 0:
            continue
        # Whole pool size is reserved so that colocated roles and later scaling see the same GPUs.
        bundles = [{"GPU": 1.0} for _ in range(pool.gpus)]
        # Ray removes placement groups asynchronously: a restart (or the next job) must not reuse the name.
        unique = uuid.uuid4().hex[:8]
        groups[name] = placement_group(bundles, strategy="PACK", name=f"rlhf_dist/{cfg.run.name}/{name}/{unique}")
    for name, pg in groups.items():
        ready, _ = ray.wait([pg.ready()], timeout=timeout_s)
        if not ready:
            raise WaitTimeout(
                f"placement group for pool {name!r} ({cfg.placement.pools[name].gpus} GPUs) not placed within "
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
