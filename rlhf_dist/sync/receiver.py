"""The engines' side of weight sync: a vLLM worker extension whose methods run inside each vLLM worker (via
`collective_rpc`).

The bucket plan arrives once, when the sync group is set up; each sync then streams the buckets over the
dedicated group straight into the engine's loader: vLLM's `reload_weights` (HF checkpoint names; any model, GPU
and CPU), or for unquantized eager CPU Llama/Qwen2 models rlhf_dist.sync.cpu_reload (the same result in about
half the time). Each worker reports what the loader did with the tensors: the checksum over exactly the bytes
handed to it, the names it never took from the stream (never silently drained), and the engine parameters
vLLM's load_weights did not write. With adapter-only sync (`sync.lora: adapter`) the stream is a LoRA adapter,
loaded from the tensors as a new vLLM adapter per version (rlhf_dist.sync.adapters), and reported the same way.
"""
from __future__ import annotations

import time

import torch

from rlhf_dist.sync import adapters, cpu_reload
from rlhf_dist.sync.buckets import Bucket, checksum
from rlhf_dist.sync.group import SyncGroup


class WeightReceiver:
    def rlhf_init_sync(self, master_addr: str, port: int, first_rank: int, world_size: int, backend: str,
                       rendezvous_s: float, collective_s: float, buckets: list[Bucket], engine_load: str = "auto",
                       lora: dict | None = None) -> dict:
        """Joins the sync group. `engine_load` (sync.engine_load): "auto" loads CPU models that rlhf_dist.sync.cpu_reload
        accepts through it and every other model through vLLM's reload_weights; "vllm_reload" always the latter.
        `lora`: the adapter the stream carries (adapter-only sync), loaded as vLLM LoRA adapters instead.
        Returns this worker's sync rank and how it loads, said once in the run log."""
        # With one engine per tensor-parallel group, a worker's vLLM rank is its TP rank.
        self._rlhf_sync = SyncGroup(master_addr, port, first_rank + self.rank, world_size, backend, rendezvous_s, collective_s)
        self._rlhf_buckets = buckets
        self._rlhf_version = -1  # no weights received yet: the checkpoint loaded at start-up
        self._rlhf_adapters = adapters.EngineAdapters(self, lora) if lora is not None else None
        self._rlhf_payload = "adapter" if lora is not None else "full"
        model = self.model_runner.get_model()
        self._rlhf_packed = cpu_reload.PackedLayers(model)
        why_not = "sync.engine_load is vllm_reload"
        if engine_load == "auto":
            why_not = cpu_reload.unsupported(model, self.vllm_config, self._rlhf_packed)
        self._rlhf_lean = why_not is None
        how = "rlhf_dist.sync.cpu_reload" if why_not is None else f"vLLM's reload_weights ({why_not})"
        if lora is not None:
            how = f"vLLM LoRA adapters from tensors (rlhf_dist.sync.adapters, {lora['slots']} slots)"
        return {"rank": self._rlhf_sync.rank, "engine_load": how}

    def rlhf_set_plan(self, buckets: list[Bucket], payload: str | None = None) -> bool:
        """A new bucket plan (the sync benchmark compares bucket sizes, and adapter against merged weights); a run
        keeps the one agreed at set-up."""
        self._rlhf_buckets = buckets
        if payload is not None:
            self._rlhf_payload = "adapter" if payload == "adapter" else "full"
        return True

    def rlhf_receive(self, version: int, verify: bool) -> dict:
        sums: list = []
        group, buckets = self._rlhf_sync, self._rlhf_buckets
        waited = 0.0  # seconds blocked in broadcasts; the rest of the call is vLLM loading the weights
        taken = 0  # tensors the loader pulled from the stream
        t_start = time.perf_counter()

        def receive(i: int):
            flat = buckets[i].empty(group.device)
            return flat, group.start_broadcast(flat)

        def stream():
            nonlocal waited, taken
            incoming = receive(0) if buckets else None
            for i, bucket in enumerate(buckets):
                flat, work = incoming
                t0 = time.perf_counter()
                work.wait()
                waited += time.perf_counter() - t0
                # The next bucket arrives while the loader takes this one (two buckets held at most).
                incoming = receive(i + 1) if i + 1 < len(buckets) else None
                if verify:
                    sums.append(checksum(flat))  # before the loader sees the bytes
                for item in bucket.unpack(flat):
                    taken += 1
                    yield item

        weights = stream()
        self._rlhf_incoming = version
        written = self._rlhf_load(weights)
        # A loader that stops early leaves tensors in the stream: they are still received (the sender's
        # broadcasts must complete) and named in the report, which the controller refuses.
        consumed = taken
        left = [name for name, _ in weights]
        # Recorded only once the loader has returned: generate() checks it before sampling.
        self._rlhf_version = version
        total = time.perf_counter() - t_start
        return {"checksums": sums, "broadcast_s": waited, "load_s": total - waited, "consumed": consumed,
                "left_in_stream": left, "not_written": written}

    def _rlhf_load(self, weights) -> list[str]:
        """The lean CPU reload or vLLM's reload_weights, keeping what vLLM's own load_weights reports: the engine
        parameters it wrote (fused and sharded names). Returns the parameters it did not write, which vLLM itself
        would only log. An adapter stream becomes a LoRA adapter; its report: the tensors it did not take."""
        if getattr(self, "_rlhf_payload", "full") == "adapter":
            return self._rlhf_adapters.load(self._rlhf_incoming, weights, [n for b in self._rlhf_buckets for n in b.names])
        model = self.model_runner.get_model()
        # LoRA-enabled engines wrap each layer (`qkv_proj.base_layer.weight`); load_weights reports the plain names.
        expected = {name.replace(".base_layer.", ".") for name, _ in model.named_parameters()}
        if self._rlhf_lean:
            written = cpu_reload.load(model, self._rlhf_packed, weights)
            # What the runner's reload_weights clears after loading (no-ops for the text models this path takes).
            self.model_runner.reset_lora_state()
            self.model_runner.reset_encoder_cache()
            self.model_runner.reset_mm_cache()
            return sorted(expected - written)
        real, written = model.load_weights, set()

        def load_weights(items):
            loaded = real(items)
            written.update(loaded or ())
            return loaded

        model.load_weights = load_weights  # an instance attribute: the class's method is untouched
        try:
            self.model_runner.reload_weights(weights_iterator=weights)
        finally:
            del model.load_weights
        self._rlhf_packed.repack_tied()  # CPU: a tied LM head's packed copy is stale after reload_weights
        if getattr(self, "_rlhf_adapters", None) is not None:
            self._rlhf_adapters.forget()  # reload_weights removed every LoRA adapter the engine held
        return sorted(expected - written)

    def rlhf_version(self) -> int:
        return getattr(self, "_rlhf_version", -1)
