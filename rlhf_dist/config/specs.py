"""The narrow settings each worker receives: what its role needs, never the whole config.

Built from a command's config by that command's role list (trainers/rl_roles.py, trainers/stages.py,
trainers/label.py); plain frozen dataclasses, so workers can be constructed in one process in tests.
"""
from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class ProcessSpec:
    """How a worker process runs: device, threads, seeds and the deadlines of its process groups."""

    device: str  # "auto", "cpu" or "cuda"
    threads: int  # CPU only: torch threads in the process
    seed: int
    rendezvous_s: float  # joining a process group
    collective_s: float  # one collective inside a group
    shm_comm: bool = False  # CPU only: DeepSpeed's JIT-compiled shared-memory all-reduce


def process_spec(cfg) -> ProcessSpec:
    """From any command's config (they share the run, cluster and timeouts sections)."""
    return ProcessSpec(cfg.cluster.device, cfg.cluster.threads_per_actor, cfg.run.seed, cfg.timeouts.rendezvous_s,
                       cfg.timeouts.collective_s, cfg.cluster.deepspeed_shm_comm)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    path: str
    dtype: str
    attn_implementation: str = "sdpa"
    gradient_checkpointing: bool = False


@dataclasses.dataclass(frozen=True)
class LoraSpec:
    """A LoRA adapter on a learner (model.lora, model.critic_lora); `heads`: modules outside the adapter that train
    whole (a value or reward head)."""

    rank: int
    alpha: float
    dropout: float
    target_modules: tuple[str, ...]
    path: str | None = None
    heads: tuple[str, ...] = ()


def lora_spec(lora, heads: tuple[str, ...] = ()) -> LoraSpec | None:
    if lora is None:
        return None
    return LoraSpec(lora.rank, lora.alpha, lora.dropout, tuple(lora.target_modules), lora.path, heads)


@dataclasses.dataclass(frozen=True)
class TrainSpec:
    """What a learner rank needs to know to train, whatever the stage (PPO, SFT, reward model, DPO)."""

    micro_batch_size: int  # samples per forward/backward on one rank
    mini_batch_size: int  # samples per optimizer step, across all ranks
    epochs: int  # passes over each batch handed to train()
    lr: float
    weight_decay: float
    grad_clip: float
    dtype: str
    role: Any  # a LearnerRole: ranks, ZeRO stage, offload
    schedule: Any = None  # an LRSchedule (None: a constant rate)
    total_steps: int = 1  # the stage's steps in the whole run (PPO steps, or optimizer steps)
    optimizer_steps_per_step: int = 1  # optimizer steps in one of those steps

    @property
    def grad_accum(self) -> int:
        return self.mini_batch_size // (self.micro_batch_size * self.role.num_gpus)


@dataclasses.dataclass(frozen=True)
class LearnerSpec:
    """A DeepSpeed-trained rank: policy, critic, or the SFT/RM/DPO learner."""

    process: ProcessSpec
    model: ModelSpec
    train: TrainSpec
    temperature: float = 1.0  # policy: log-probs of the distribution the engines sampled from
    reference: ModelSpec | None = None  # DPO: a separate frozen reference (None: the model before training)
    lora: LoraSpec | None = None  # train an adapter; the base weights stay frozen
    sync_payload: str = "full"  # policy: what weight sync sends ("full", "adapter" or "merged"; sync.lora)


@dataclasses.dataclass(frozen=True)
class ReferenceSpec:
    process: ProcessSpec
    model: ModelSpec
    zero_stage: int  # 0: a full replica per rank; 3: partitioned over the ranks
    micro_batch_size: int
    temperature: float


@dataclasses.dataclass(frozen=True)
class RewardSpec:
    """A sequence-classification scorer (the PPO reward model, or a labelling judge)."""

    process: ProcessSpec
    model: ModelSpec
    normalize: bool  # standardise with reward_stats.json beside the model
    batch_size: int
    chat_template: bool  # score the pair as a conversation in the model's own template (data/chat.py)
    micro_batch_tokens: int | None = None  # micro-batches by token budget instead of batch_size texts
    packing: bool = False


@dataclasses.dataclass(frozen=True)
class SamplingSpec:
    max_new_tokens: int
    temperature: float
    top_p: float
    top_k: int = 0  # 0: off
    min_p: float = 0.0  # 0: off
    stop: tuple[str, ...] = ()  # strings that end a response
    stop_token_ids: tuple[int, ...] = ()  # token ids that end a response, besides EOS


@dataclasses.dataclass(frozen=True)
class EngineSpec:
    """A vLLM engine: the LLM() arguments, its tensor-parallel size and sampling settings."""

    process: ProcessSpec
    llm: dict  # keyword arguments of vllm.LLM (model, dtype, max_model_len, ...)
    tensor_parallel_size: int = 1
    sampling: SamplingSpec | None = None  # None: an engine that only scores (the LLM judge)
    worker_extension: str | None = None  # the weight receiver, for engines that take synced weights
    warmup: tuple[int, int] = (0, 0)  # (requests, prompt tokens) generated once at set-up; (0, 0): none
    engine_load: str = "auto"  # sync.engine_load: how the receiver loads synced weights
    lora: dict | None = None  # adapter sync: {"rank", "alpha", "target_modules", "slots"}; requests use the newest
