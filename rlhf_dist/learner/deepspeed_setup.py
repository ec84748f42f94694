"""DeepSpeed engine construction for a learner role (ZeRO 0-3, optional CPU offload)."""
from __future__ import annotations

import dataclasses

import torch

from rlhf_dist.config import Config, LearnerRole, LRSchedule


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
    role: LearnerRole  # ranks, ZeRO stage, offload
    schedule: LRSchedule = LRSchedule()
    total_steps: int = 1  # the stage's steps in the whole run (PPO steps, or optimizer steps)
    optimizer_steps_per_step: int = 1  # optimizer steps in one of those steps

    @property
    def grad_accum(self) -> int:
        return self.mini_batch_size // (self.micro_batch_size * self.role.num_gpus)


def ds_config(spec: TrainSpec) -> dict:
    role = spec.role
    zero: dict = {"stage": role.zero_stage}
    if role.offload and role.zero_stage > 0:
        zero["offload_optimizer"] = {"device": "cpu"}
        if role.zero_stage == 3:
            zero["offload_param"] = {"device": "cpu"}
    return {
        "train_micro_batch_size_per_gpu": spec.micro_batch_size,
        "gradient_accumulation_steps": spec.grad_accum,
        "train_batch_size": spec.micro_batch_size * spec.grad_accum * role.num_gpus,
        "gradient_clipping": spec.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": spec.dtype == "bfloat16"},
        "fp16": {"enabled": spec.dtype == "float16"},
        # A torch optimizer is used everywhere: DeepSpeed's own Adam kernels are JIT-compiled (about a minute).
        "zero_force_ds_cpu_optimizer": False,
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


def skip_shm_comm() -> None:
    """Keep DeepSpeed from JIT-compiling its shared-memory all-reduce on CPU (30-50 s of g++); gloo is used.

    DeepSpeed caches its op-compatibility table in the module and documents that edits to it persist.
    """
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def init_distributed(backend: str, master_addr: str, port: int, rank: int, world_size: int, timeout) -> None:
    import os

    import deepspeed

    # Ray gives each actor its own visible device(s), so the local device index is always 0.
    os.environ.update(
        {"LOCAL_RANK": "0", "RANK": str(rank), "WORLD_SIZE": str(world_size), "MASTER_ADDR": master_addr, "MASTER_PORT": str(port)}
    )
    deepspeed.init_distributed(
        dist_backend=backend,
        init_method=f"tcp://{master_addr}:{port}",
        rank=rank,
        world_size=world_size,
        timeout=timeout,
        auto_mpi_discovery=False,
        verbose=False,
    )


def inference_ds_config(cfg: Config, world_size: int) -> dict:
    """ZeRO-3 without an optimizer: weights partitioned, gathered per layer in the forward pass."""
    return {
        "train_micro_batch_size_per_gpu": cfg.ppo.micro_batch_size,
        "train_batch_size": cfg.ppo.micro_batch_size * world_size,
        "zero_optimization": {"stage": 3},
        "bf16": {"enabled": cfg.model.dtype == "bfloat16"},
        "fp16": {"enabled": cfg.model.dtype == "float16"},
        "steps_per_print": 2**31 - 1,
    }


def make_engine(model, spec: TrainSpec):
    import deepspeed

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay)
    from rlhf_dist.learner.schedule import make_scheduler

    # A callable: DeepSpeed builds the scheduler on its own view of the optimizer, steps and checkpoints it.
    scheduler = lambda opt: make_scheduler(opt, spec.schedule, spec.total_steps, spec.optimizer_steps_per_step)  # noqa: E731
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config(spec))
    return engine
