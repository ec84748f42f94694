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
