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
        self._rlhf_version = -1  # no weights received yet: the checkpoint loaded at start-up
        return self._rlhf_sync.rank

    def rlhf_receive(self, buckets: list[Bucket], version: int, verify: bool) -> dict:
        import time

        sums: list[int] = []
        device = self._rlhf_sync.device
        waited = 0.0  # seconds blocked in broadcasts; the rest of the call is vLLM loading the weights
        t_start = time.perf_counter()

        def stream():
            nonlocal waited
            for bucket in buckets:
                flat = bucket.empty(device)
                t0 = time.perf_counter()
                self._rlhf_sync.broadcast(flat)
                waited += time.perf_counter() - t0
                if verify:
                    sums.append(checksum(flat))
                yield from bucket.unpack(flat)

        weights = stream()
        self.model_runner.reload_weights(weights_iterator=weights)
        # The loader may stop early on names it skips; the remaining broadcasts must still be received.
        for _ in weights:
            pass
        # Recorded only once the loader has returned: generate() checks it before sampling.
        self._rlhf_version = version
        total = time.perf_counter() - t_start
        return {"checksums": sums, "broadcast_s": waited, "load_s": total - waited}

    def rlhf_version(self) -> int:
        return getattr(self, "_rlhf_version", -1)
