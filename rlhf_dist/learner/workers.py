"""Learner and inference workers: plain classes that Ray wraps (`ray.remote(cls)`), testable in one process.

A learner worker is one data-parallel rank of a DeepSpeed engine. It computes model outputs for micro-batches
and minimises the loss it is handed; it knows nothing else of the algorithm.
"""
from __future__ import annotations

import contextlib
import time
from collections import defaultdict

import torch

from rlhf_dist import dist as D
from rlhf_dist.data.batch import from_wire
from rlhf_dist.errors import WaitTimeout, phase
from rlhf_dist.learner import lora, micro, models
from rlhf_dist.learner.packed import response_logprobs, response_outputs
from rlhf_dist.learner.deepspeed_setup import ds_config, init_distributed, make_engine, skip_shm_comm
from rlhf_dist.config.specs import LearnerSpec
from rlhf_dist.sync.buckets import Bucket, plan_buckets
from rlhf_dist.sync.sender import WeightSender


def _micro_batches(batch: dict[str, torch.Tensor], size: int):
    n = batch["input_ids"].shape[0]
    for i in range(0, n, size):
        yield {k: v[i : i + size] for k, v in batch.items()}


class _Base:
    role = "base"
    packed = False  # this call's layout: packed rows (set for a call by rlhf_dist.learner.micro.layout)
    real_tokens = computed_positions = 0  # what the forward passes held and computed, for the padding fraction

    def __init__(self, spec, rank: int, world_size: int):
        self.settings, self.rank, self.world_size = spec, rank, world_size  # this role's narrow spec
        proc = spec.process
        self.device = D.torch_device(proc.device)
        if self.device.type == "cpu":
            D.pin_cores()
            D.set_threads(proc.threads)
        self._seed()
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

    def _seed(self) -> None:
        """Seeded at construction and again before loading (a critic's value head is drawn then): in a process
        shared with other roles, each role's draws are those it would make alone."""
        torch.manual_seed(self.settings.process.seed + 1000 * self.rank)

    def ready(self) -> dict:
        import os

        return {"role": self.role, "rank": self.rank, "ip": D.node_ip(), "node": D.node_id(), "device": str(self.device),
                "pid": os.getpid()}

    def set_threads(self, n: int) -> int:
        """CPU: torch threads for the next calls (rlhf_dist.runtime.threads sets them per phase)."""
        D.set_threads(n)
        return n

    def master_endpoint(self) -> tuple[str, int]:
        return D.reserve_port()

    def _rendezvous(self, master_addr: str, port: int) -> None:
        """Join this role's DeepSpeed process group; a peer that never comes is a named error."""
        proc = self.settings.process
        if self.device.type == "cpu" and not proc.shm_comm:
            skip_shm_comm()
        t0 = time.perf_counter()
        try:
            init_distributed(
                D.backend_for(proc.device), master_addr, port, self.rank, self.world_size, proc.rendezvous_s, proc.collective_s
            )
        except (RuntimeError, torch.distributed.DistStoreError) as e:
            raise WaitTimeout(
                f"DeepSpeed rendezvous (rank {self.rank} of {self.world_size}) at {master_addr}:{port} gave up "
                f"after {time.perf_counter() - t0:.0f} s (timeouts.rendezvous_s): {str(e).splitlines()[0]}"
            ) from None

    def _to_device(self, batch: dict) -> dict[str, torch.Tensor]:
        """A shard as sent by rlhf_dist.data.batch.split (numpy arrays) or as tensors, on this rank's device."""
        return {k: from_wire(v).to(self.device) for k, v in batch.items()}

    def _response(self, model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Outputs at the positions predicting the response tokens, in this call's layout."""
        out, positions = response_outputs(model, batch, self.packed, self.settings.model.attn_implementation)
        self.real_tokens += int(batch["attention_mask"].sum())
        self.computed_positions += positions
        return out

    def _token_logprobs(self, model, batch, temperature: float, with_entropy: bool = False):
        """Log-probs of the response tokens (and entropies, or None), in this call's layout."""
        lp, ent, positions = response_logprobs(model, batch, self.packed, self.settings.model.attn_implementation, temperature, with_entropy)
        self.real_tokens += int(batch["attention_mask"].sum())
        self.computed_positions += positions
        return lp, ent

    def pop_positions(self) -> tuple[int, int]:
        """(real tokens, positions computed) by the forward passes since the last call."""
        return micro.pop_positions(self)


class LearnerWorker(_Base):
    """One rank of a DeepSpeed-trained model. Subclasses say how to load the model and what it outputs."""

    settings: LearnerSpec

    def setup(self, master_addr: str, port: int) -> dict:
        self.spec = self.settings.train
        t0 = time.perf_counter()
        with phase("DeepSpeed rendezvous"):
            self._rendezvous(master_addr, port)
        self._seed()
        self._hf_ds = None
        if self.spec.role.zero_stage == 3:
            # Makes from_pretrained build the model already partitioned (zero.Init), as large models need.
            from transformers.integrations import HfDeepSpeedConfig

            self._hf_ds = HfDeepSpeedConfig(ds_config(self.spec))
        with phase("model load"):
            model = self.load_model()
        if self.settings.model.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        if self.settings.lora is not None:
            model = lora.wrap(model, self.settings.lora, self.settings.process.seed, self.settings.model.gradient_checkpointing)
        with phase("DeepSpeed engine set-up"):
            self.engine = make_engine(model, self.spec)
        self.zero3 = self.spec.role.zero_stage == 3
        return {"rank": self.rank, "seconds": time.perf_counter() - t0, "params": self.num_params(),
                "trainable": lora.trainable(self.engine.module)}

    # --- what subclasses provide ---
    def load_model(self):
        raise NotImplementedError

    def outputs(self, batch: dict[str, torch.Tensor], with_entropy: bool) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    # --- shared mechanics ---
    def num_params(self) -> int:
        return sum(getattr(p, "ds_numel", p.numel()) for p in self.engine.module.parameters())

    @torch.no_grad()
    def infer(self, batch: dict[str, torch.Tensor], plan=None) -> dict[str, torch.Tensor]:
        """Outputs for a whole shard, in micro-batches, without gradients (e.g. old log-probs, old values);
        `plan`: the micro-batches and layout the controller chose (rlhf_dist.data.packing)."""
        self.engine.eval()
        if plan is not None:
            with micro.layout(self, plan):
                return micro.infer(self._to_device(batch), plan, lambda mb: self.outputs(mb, with_entropy=False))
        parts = defaultdict(list)
        for mb in _micro_batches(self._to_device(batch), self.spec.micro_batch_size):
            for k, v in self.outputs(mb, with_entropy=False).items():
                parts[k].append(v.float().cpu())
        return {k: torch.cat(v) for k, v in parts.items()}

    def train(self, batch: dict[str, torch.Tensor], loss_fn, seed: int, plan=None) -> dict[str, float]:
        """Epochs x mini-batches x micro-batches over this rank's shard; DeepSpeed steps at each mini-batch end.
        `plan`: the controller's mini- and micro-batches and layout (rlhf_dist.data.packing) instead."""
        cfg = self.spec
        self.engine.train()
        batch = self._to_device(batch)
        self.pop_positions()
        if plan is not None:
            with micro.layout(self, plan):
                return micro.with_padding(self, micro.update(self, batch, loss_fn, plan))
        n = batch["input_ids"].shape[0]
        mini = cfg.mini_batch_size // self.world_size
        gen = torch.Generator().manual_seed(seed)
        sums: dict[str, float] = defaultdict(float)
        count = 0
        grad_norms = []
        lr = self.engine.get_lr()[0]  # the rate of this call's first optimizer step
        for _ in range(cfg.epochs):
            order = torch.randperm(n, generator=gen).to(self.device)
            for start in range(0, n, mini):
                idx = order[start : start + mini]
                for mb in _micro_batches({k: v[idx] for k, v in batch.items()}, cfg.micro_batch_size):
                    out = self.outputs(mb, with_entropy=loss_fn.needs_entropy)
                    loss, metrics = loss_fn(out, mb)
                    self.engine.backward(loss)
                    self.engine.step()
                    for k, v in metrics.items():
                        sums[k] = max(sums[k], v) if k.endswith("_max") else sums[k] + v
                    count += 1
                norm = self.engine.get_global_grad_norm()
                if norm is not None:
                    grad_norms.append(float(norm))
        result = {k: v if k.endswith("_max") else v / max(count, 1) for k, v in sums.items()}
        result[f"{self.role}/lr"] = lr
        if grad_norms:
            result[f"{self.role}/grad_norm"] = sum(grad_norms) / len(grad_norms)
        return micro.with_padding(self, result)

    def _gathered(self, params):
        if self.zero3:
            import deepspeed

            return deepspeed.zero.GatheredParameters(params, modifier_rank=None)
        return contextlib.nullcontext()

    def named_full_params(self, pieces: dict[str, lora.Piece], dtype: torch.dtype | None = None):
        params = dict(self.engine.module.named_parameters())
        return [(p.name, p.shape, dtype or params[p.params[0]].dtype) for p in pieces.values()]

    def iter_full_buckets(self, buckets: list[Bucket], pieces: dict[str, lora.Piece]):
        """Yield (bucket, [full tensors]) with each bucket gathered in turn (all ranks must iterate together)."""
        params = dict(self.engine.module.named_parameters())
        for bucket in buckets:
            parts = [pieces[n] for n in bucket.names]
            ps = list({n: params[n] for part in parts for n in part.params}.values())
            with self._gathered(ps):
                yield bucket, [lora.materialize(part, params) for part in parts]

    # --- checkpoints: DeepSpeed writes each rank's partitions; RNG states are saved per rank ---
    def save_checkpoint(self, path: str) -> bool:
        import os
        import random

        # With an adapter the frozen base is left out: resume loads it from the model directory again.
        self.engine.save_checkpoint(path, tag="state", exclude_frozen_parameters=self.settings.lora is not None)
        rng = {"torch": torch.get_rng_state(), "python": random.getstate()}
        torch.save(rng, os.path.join(path, f"rng_rank{self.rank}.pt"))
        return True

    def load_checkpoint(self, path: str) -> bool:
        import os
        import random

        from rlhf_dist import safe_load

        with safe_load.weights_only_loads(f"{self.role} rank {self.rank}: checkpoint {path}"):
            load_path, _ = self.engine.load_checkpoint(path, tag="state", load_optimizer_states=True, load_lr_scheduler_states=True,
                                                       load_module_strict=self.settings.lora is None)
        if load_path is None:
            raise FileNotFoundError(f"{self.role} rank {self.rank}: no DeepSpeed checkpoint under {path}")
        rng = safe_load.load(os.path.join(path, f"rng_rank{self.rank}.pt"))
        torch.set_rng_state(rng["torch"])
        random.setstate(rng["python"])
        return True

    @torch.no_grad()
    def evaluate(self, batch: dict[str, torch.Tensor], loss_fn, plan=None) -> dict[str, float]:
        """The loss function's metrics on a held-out shard, without gradients: means over samples."""
        self.engine.eval()
        batch = self._to_device(batch)
        parts = micro.all_micro_batches(batch, plan) if plan is not None else _micro_batches(batch, self.spec.micro_batch_size)
        with micro.layout(self, plan):
            return self._evaluate(parts, loss_fn)

    def _evaluate(self, parts, loss_fn) -> dict[str, float]:
        sums: dict[str, float] = defaultdict(float)
        n = 0
        for mb in parts:
            size = mb["input_ids"].shape[0]
            _, metrics = loss_fn(self.outputs(mb, with_entropy=False), mb)
            for k, v in metrics.items():
                sums[k] += v * size
            n += size
        return {k: v / max(n, 1) for k, v in sums.items()}

    def _gather_state(self, payload: str, bucket_mb: float) -> dict[str, torch.Tensor]:
        """The payload's tensors on rank 0's host, gathered bucket by bucket (empty on the other ranks)."""
        pieces = lora.pieces(self.engine.module, payload)
        buckets = plan_buckets(self.named_full_params(pieces), int(bucket_mb * 2**20))
        state = {}
        for bucket, tensors in self.iter_full_buckets(buckets, pieces):
            if self.rank == 0:
                for name, t in zip(bucket.names, tensors):
                    state[name] = t.detach().to("cpu", copy=True)
        return state

    def save_hf(self, path: str, bucket_mb: float) -> str | None:
        """Gather the full weights bucket by bucket (`sync.bucket_mb`) and write a HuggingFace directory (rank 0 writes).
        With an adapter: the base with the adapter merged in, and (causal LMs) the adapter alone in path/adapter."""
        state = self._gather_state("merged", bucket_mb)
        adapter = self._gather_state("adapter", bucket_mb) if self.settings.lora is not None and not self.settings.lora.heads else None
        if self.rank != 0:
            return None
        lora.base_model(self.engine.module).save_pretrained(path, state_dict=state, safe_serialization=True)
        if adapter is not None:
            lora.write_adapter(f"{path}/adapter", self.engine.module, adapter)
        return path


class PolicyWorker(LearnerWorker):
    role = "policy"

    def load_model(self):
        m = self.settings.model
        return models.load_causal_lm(m.path, m.dtype, m.attn_implementation)

    def outputs(self, batch, with_entropy):
        logprobs, entropy = self._token_logprobs(self.engine, batch, self.settings.temperature, with_entropy)
        return {"logprobs": logprobs, **({"entropy": entropy} if with_entropy else {})}

    @torch.no_grad()
    def infer_reference(self, batch: dict[str, torch.Tensor], plan=None) -> dict[str, torch.Tensor]:
        """The reference's log-probs from this model with its adapter off (model.lora): its base weights."""
        with lora.reference_weights(self.engine.module):
            return self.infer(batch, plan)

    @torch.no_grad()
    def probe_logprobs(self, seqs: list[list[int]], starts: list[int]) -> list[list[float]]:
        """The weight probe (rlhf_dist.sync.probe): log-probs at temperature 1 of each sequence's tokens from its
        start on, one sequence at a time (no padding). Every rank runs it: ZeRO-3's gathers need them all."""
        self.engine.eval()
        out = []
        for ids, start in zip(seqs, starts):
            x = torch.tensor([list(ids)], device=self.device)
            R = x.shape[1] - start
            batch = {"input_ids": x, "attention_mask": torch.ones_like(x), "mask": torch.ones(1, R, device=self.device)}
            out.append(models.token_logprobs(models.response_logits(self.engine, batch), x[:, start:], 1.0)[0].tolist())
        return out

    # --- weight sync (rlhf_dist.sync.sender: rank 0 broadcasts; every rank joins the ZeRO-3 gathers) ---
    def sync_plan(self, bucket_mb: float, payload: str | None = None) -> list[Bucket]:
        """The bucket plan of `payload` (default: the run's, sync.lora), in the engines' dtype: the tensors are cast
        to it as they are packed."""
        self._sender = getattr(self, "_sender", None) or WeightSender(self.rank)
        self._pieces = lora.pieces(self.engine.module, payload or self.settings.sync_payload)
        return self._sender.plan(self.named_full_params(self._pieces, models.DTYPES[self.settings.model.dtype]), bucket_mb)

    def init_weight_sync(self, master_addr: str, port: int, world_size: int, backend: str) -> bool:
        p = self.settings.process
        self._sender.connect(master_addr, port, world_size, backend, p.rendezvous_s, p.collective_s)
        return True

    def broadcast_weights(self, verify: bool) -> dict:
        return self._sender.send(self.iter_full_buckets(self._sender.buckets, self._pieces), verify)


class CriticWorker(LearnerWorker):
    role = "critic"

    def load_model(self):
        m = self.settings.model
        return models.load_value_model(m.path, m.dtype, m.attn_implementation)

    def outputs(self, batch, with_entropy):
        return {"values": self._response(self.engine, batch)[..., 0].float()}
