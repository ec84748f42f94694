"""DeepSpeed engine construction for a learner role (ZeRO 0-3, optional CPU offload)."""
from __future__ import annotations

import torch

from rlhf_dist.config.specs import TrainSpec


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


def init_distributed(backend: str, master_addr: str, port: int, rank: int, world_size: int, rendezvous_s: float,
                     collective_s: float) -> None:
    """The role's default process group, then DeepSpeed on top of it. The rendezvous (every rank reaching the
    store) is bounded by `rendezvous_s`; each collective afterwards by `collective_s` (timeouts.collective_s)."""
    import datetime
    import os

    import deepspeed
    import torch.distributed as dist

    from rlhf_dist.dist import release_port, tcp_store

    if dist.is_initialized():
        # A process shared with another role (placement.share_processes): its group is this role's too, which the
        # sharing rule guarantees spans the same ranks. The port reserved for this role's store is not needed.
        release_port(port)
        if (dist.get_rank(), dist.get_world_size()) != (rank, world_size):
            raise RuntimeError(f"this process already joined a process group as rank {dist.get_rank()} of "
                               f"{dist.get_world_size()}, not rank {rank} of {world_size}")
        return
    # Ray gives each actor its own visible device(s), so the local device index is always 0.
    os.environ.update(
        {"LOCAL_RANK": "0", "RANK": str(rank), "WORLD_SIZE": str(world_size), "MASTER_ADDR": master_addr, "MASTER_PORT": str(port)}
    )
    # Our store (listening on the node address only; its deadline is the rendezvous), then the default group
    # (each collective bounded by collective_s).
    store = tcp_store(master_addr, port, world_size, rank == 0, datetime.timedelta(seconds=rendezvous_s))
    dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=datetime.timedelta(seconds=collective_s))
    # DeepSpeed finds the group initialised and only sets up its communication wrapper.
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, verbose=False,
                               timeout=datetime.timedelta(seconds=collective_s))


def inference_ds_config(micro_batch_size: int, dtype: str, world_size: int) -> dict:
    """ZeRO-3 without an optimizer: weights partitioned, gathered per layer in the forward pass."""
    return {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "train_batch_size": micro_batch_size * world_size,
        "zero_optimization": {"stage": 3},
        "bf16": {"enabled": dtype == "bfloat16"},
        "fp16": {"enabled": dtype == "float16"},
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
