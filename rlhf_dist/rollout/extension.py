"""vLLM worker extension: methods that run inside each vLLM worker (via `collective_rpc`) to receive weights.

Weights arrive bucket by bucket over the dedicated sync group and are streamed straight into
`reload_weights`, which takes HF checkpoint names and works for fp32 CPU (oneDNN pre-packed) and GPU models
alike. The checksum is taken over exactly the bytes handed to the loader.
"""
from __future__ import annotations

from rlhf_dist.sync.buckets import Bucket, checksum


class WeightReceiver:
    def rlhf_init_sync(self, master_addr: str, port: int, first_rank: int, world_size: int, backend: str, timeout_s: float):
        from rlhf_dist.sync.group import SyncGroup

        # With one engine per tensor-parallel group, a worker's vLLM rank is its TP rank.
        self._rlhf_sync = SyncGroup(master_addr, port, first_rank + self.rank, world_size, backend, timeout_s)
        self._rlhf_version = -1
        return self._rlhf_sync.rank

    def rlhf_receive(self, buckets: list[Bucket], version: int, verify: bool) -> dict:
        sums: list[int] = []
        device = self._rlhf_sync.device

        def stream():
            for bucket in buckets:
                flat = bucket.empty(device)
                self._rlhf_sync.broadcast(flat)
                if verify:
                    sums.append(checksum(flat))
                yield from bucket.unpack(flat)

        weights = stream()
        self.model_runner.reload_weights(weights_iterator=weights)
        # The loader may stop early on names it skips; the remaining broadcasts must still be received.
        for _ in weights:
            pass
        self._rlhf_version = version
        return {"version": version, "checksums": sums}

    def rlhf_version(self) -> int:
        return getattr(self, "_rlhf_version", -1)
