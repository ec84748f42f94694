"""The supervised and preference stages (`sft`, `rm`, `dpo`): one loop, read top to bottom.

Each step hands every learner rank its share of one batch and the stage's loss; the held-out set is scored
every `train.eval_every` steps and at the end of each epoch; the trained model is written in HuggingFace
format to RUN_DIR/final.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

import torch

from rlhf_dist.algorithms.losses import DPOLoss, PairwiseRewardLoss, SFTLoss
from rlhf_dist.data.batch import concat, split
from rlhf_dist.data.packing import gather_rows, plan_infer, plan_update, rank_shards
from rlhf_dist.data.stage_data import Examples, make_batch, train_eval_split
from rlhf_dist import checkpoint
from rlhf_dist.checkpoint import load_tensors, load_trainer_state
from rlhf_dist.config.layout import pool_layout
from rlhf_dist.learner.stage_workers import DPOWorker, RewardTrainWorker, SFTWorker
from rlhf_dist.metrics import MetricsWriter, set_aside_metrics_after
from rlhf_dist.outputs import fresh_owned_dir, write_file
from rlhf_dist.preflight import prepare_stage_model
from rlhf_dist.runtime.roles import Roles, RoleSpec, role_gpus
from rlhf_dist.runtime.scaffold import log_skipped, open_run, ray_session
from rlhf_dist.config.specs import LearnerSpec, ModelSpec, TrainSpec, lora_spec, process_spec
from rlhf_dist.config.stages import ConfigError, StageConfig
from rlhf_dist.sync.buckets import GATHER_BUCKET_MB


@dataclasses.dataclass(frozen=True)
class StageNumbers:
    """Batch arithmetic of a stage run, computed once and printed at start."""

    train_samples: int
    eval_samples: int
    ranks: int
    grad_accum: int
    steps_per_epoch: int
    dropped_per_epoch: int
    total_steps: int
    micro_batch: str = ""  # "8 samples, padded" or "1024 tokens, packed"

    def table(self) -> str:
        accum = "by token budget" if "tokens" in self.micro_batch else self.grad_accum
        rows = [
            ("training samples / held-out samples", f"{self.train_samples} / {self.eval_samples}"),
            ("micro-batch", self.micro_batch),
            ("learner ranks / grad accumulation", f"{self.ranks} / {accum}"),
            ("steps per epoch (samples left over each epoch)", f"{self.steps_per_epoch} ({self.dropped_per_epoch})"),
            ("optimizer steps in this run", self.total_steps),
        ]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)


def numbers(cfg: StageConfig, n_train: int, n_eval: int) -> StageNumbers:
    t, ranks = cfg.train, cfg.placement.learner.num_gpus
    per_epoch = n_train // t.batch_size
    if per_epoch == 0:
        raise ConfigError(f"train.batch_size: {t.batch_size} is larger than the training set ({n_train} samples)")
    total = per_epoch * t.epochs if t.max_steps is None else min(t.max_steps, per_epoch * t.epochs)
    # Held-out samples are split evenly over the ranks (ZeRO-3 ranks run each forward pass together).
    layout = "packed" if cfg.data.packing else "padded"
    micro = f"{t.micro_batch_size} samples" if t.micro_batch_tokens is None else f"{t.micro_batch_tokens} tokens"
    return StageNumbers(n_train, n_eval - n_eval % ranks, ranks, t.batch_size // (t.micro_batch_size * ranks),
                        per_epoch, n_train - per_epoch * t.batch_size, total, f"{micro}, {layout}")


def loss_for(kind: str, cfg: StageConfig):
    if kind == "sft":
        return SFTLoss()
    if kind == "rm":
        return PairwiseRewardLoss()
    return DPOLoss(cfg.dpo.beta, cfg.dpo.loss)


def learner_role(kind: str, cfg: StageConfig, total_steps: int) -> RoleSpec:
    """The stage's one role: DeepSpeed-trained ranks with the stage's batch sizes and optimiser.
    `total_steps`: the run's optimizer steps (from the data size), the LR schedule's length."""
    t, m, p = cfg.train, cfg.model, cfg.placement.learner
    # One optimizer step per train() call: the controller hands each rank its share of one batch.
    train = TrainSpec(micro_batch_size=t.micro_batch_size, mini_batch_size=t.batch_size, epochs=1, lr=t.lr,
                      weight_decay=t.weight_decay, grad_clip=t.grad_clip, dtype=m.dtype, role=p,
                      schedule=t.lr_schedule, total_steps=total_steps)
    ref = getattr(m, "reference", None)
    spec = LearnerSpec(
        process_spec(cfg), ModelSpec(m.path, m.dtype, m.attn_implementation, m.gradient_checkpointing), train,
        reference=ModelSpec(ref, m.dtype, m.attn_implementation) if ref else None,
        lora=lora_spec(m.lora, heads=("score",) if kind == "rm" else ()),  # a reward model's head trains whole
    )
    worker = {"sft": SFTWorker, "rm": RewardTrainWorker, "dpo": DPOWorker}[kind]
    return RoleSpec("learner", worker, p.pool, p.num_gpus, spec, rendezvous=True)


def run_stage(kind: str, cfg: StageConfig, log=print) -> Path:
    # 1. Model, data and arithmetic are checked before any actor starts.
    tokenizer = prepare_stage_model(cfg.model, cfg.data.max_length, log)
    train_set, eval_set = train_eval_split(cfg.data, kind, tokenizer, cfg.run.seed)
    nums = numbers(cfg, len(train_set), len(eval_set) if eval_set is not None else 0)
    run = open_run(cfg, log, table=nums.table())
    run_dir, log, resume = run.dir, run.log, run.resume
    log(f"{kind}: run directory {run_dir}\n{nums.table()}")
    log_skipped(log, train_set.skipped, "bad rows")
    role = learner_role(kind, cfg, nums.total_steps)
    with ray_session(cfg, pool_layout(cfg.placement.pools, role_gpus([role])), log):
        _run(kind, cfg, role, nums, (train_set, eval_set), tokenizer, run_dir, resume, log)
    return run_dir


def _run(kind, cfg: StageConfig, role: RoleSpec, nums, data, tokenizer, run_dir: Path, resume, log) -> None:
    train_set, eval_set = data
    learners = writer = None
    try:
        learners = StageLearners(cfg, role, log)
        if resume is not None:
            learners.load_checkpoint(str(resume.path))
            set_aside_metrics_after(run_dir, resume.step)
            log(f"resumed from {resume.path} (step {resume.step})")
        writer = MetricsWriter(run_dir, cfg.run, {**cfg.model_dump(mode="json"), "derived_table": nums.table()})
        loop(kind, cfg, nums, learners, (train_set, eval_set), tokenizer.pad_token_id, writer, log, run_dir, resume)
        t0 = time.perf_counter()
        with fresh_owned_dir(run_dir / "final", run_dir) as final:
            learners.save_hf(str(final))
            tokenizer.save_pretrained(str(final))
            if kind == "rm":
                stats = reward_stats(learners, eval_set if eval_set is not None and nums.eval_samples else train_set, tokenizer.pad_token_id, nums.ranks)
                stats["apply_chat_template"] = cfg.data.apply_chat_template  # the format it scores (data/chat.py)
                write_file(final / "reward_stats.json", json.dumps(stats, indent=1), owner=run_dir)
                log(f"reward scores mean {stats['mean']:.4f} std {stats['std']:.4f} over {stats['n']} responses (reward_stats.json)")
        log(f"saved the trained model to {run_dir / 'final'} in {time.perf_counter() - t0:.1f} s")
    finally:
        if writer is not None:
            writer.close()
        if learners is not None:
            learners.shutdown()


def loop(kind, cfg: StageConfig, nums: StageNumbers, learners, data, pad_id: int, writer, log, run_dir, resume) -> None:
    train_set, eval_set = data
    loss_fn = loss_for(kind, cfg)
    refs = load_tensors(resume) if resume is not None else {}
    if kind == "dpo" and not refs:
        # Once, before the first step; a resumed run reads them from its checkpoint (the model has moved on).
        t0 = time.perf_counter()
        refs["train"] = learners.reference_logps(train_set, pad_id)
        if nums.eval_samples:
            refs["eval"] = learners.reference_logps(eval_set, pad_id)
        learners.roles.call("learner", "drop_reference")
        log(f"reference log-probs for {len(train_set)} + {nums.eval_samples} pairs in {time.perf_counter() - t0:.1f} s")
    evaluate = lambda: learners.evaluate(eval_set, kind, pad_id, loss_fn, nums.eval_samples, refs.get("eval"))  # noqa: E731

    # Each epoch is a shuffle by a seeded generator; a checkpoint holds the generator's state at the start of
    # its epoch and the position in it, so a resumed run draws the same batches.
    gen = torch.Generator().manual_seed(cfg.run.seed)
    step, first_epoch, first_pos = 0, 0, 0
    if resume is not None:
        state = load_trainer_state(resume)
        step, first_epoch, first_pos = state["step"], state["epoch"], state["pos"]
        gen.set_state(torch.tensor(state["gen"], dtype=torch.uint8))
    elif nums.eval_samples:
        first = evaluate()
        writer.write(0, first)
        log("step 0: " + _brief(first))
    bs, every_log, every_ckpt = cfg.train.batch_size, max(1, nums.total_steps // 20), cfg.checkpoint.every_n_steps
    t_start, start_step = time.perf_counter(), step
    for epoch in range(first_epoch, cfg.train.epochs):
        epoch_gen = gen.get_state()
        order = torch.randperm(len(train_set), generator=gen).tolist()
        for s in range(first_pos if epoch == first_epoch else 0, nums.steps_per_epoch):
            if step == nums.total_steps:
                break
            step += 1
            t0 = time.perf_counter()
            idx = order[s * bs : (s + 1) * bs]
            batch = make_batch(train_set, idx, kind, pad_id)
            if kind == "dpo":
                batch["ref_logps"] = refs["train"][idx]
            metrics = learners.train(batch, loss_fn, seed=cfg.run.seed * 1000 + step)
            seconds = time.perf_counter() - t0
            metrics.update({"epoch": epoch + 1, "timing/step": seconds,
                            "timing/tokens_per_s": float(batch["attention_mask"].sum()) / seconds})
            end_of_epoch = s == nums.steps_per_epoch - 1 or step == nums.total_steps
            if nums.eval_samples and ((cfg.train.eval_every and step % cfg.train.eval_every == 0) or end_of_epoch):
                metrics.update(evaluate())
            writer.write(step, metrics)
            if step % every_log == 0 or step == nums.total_steps or any(k.startswith("eval/") for k in metrics):
                log(f"step {step}/{nums.total_steps} (epoch {epoch + 1}): {_brief(metrics)}")
            if every_ckpt and (step % every_ckpt == 0 or step == nums.total_steps):
                t0 = time.perf_counter()
                state = {"step": step, "epoch": epoch, "pos": s + 1, "gen": epoch_gen.tolist()}
                path = checkpoint.save(learners, state, run_dir, step, cfg.checkpoint.keep_last, refs)
                log(f"checkpoint {path} in {time.perf_counter() - t0:.1f} s")
    log(f"{step - start_step} steps in {time.perf_counter() - t_start:.1f} s")


def _brief(m: dict) -> str:
    keys = [k for k in m if k.endswith(("/loss", "/accuracy", "/margin")) and not k.startswith("rm/margin")]
    return " ".join(f"{k} {m[k]:.4f}" for k in keys)


class StageLearners:
    """The learner ranks of one stage: placed on their pool, rendezvoused, called together with deadlines."""

    def __init__(self, cfg: StageConfig, role: RoleSpec, log):
        self.cfg = cfg
        self.roles = Roles([role], cfg.placement.pools, cfg.run.name, cfg.cluster, cfg.timeouts, log)
        self.group = self.roles["learner"]
        info = self.roles.setup_info["learner"][0]
        log(f"learner: {len(self.group)} ranks, {info['params'] / 1e6:.2f}M parameters ({info['trainable'] / 1e6:.2f}M trained)")

    def _all(self, method: str, per_rank, what: str):
        return self.roles.wait([self.group.submit(method, per_rank=per_rank)], what)

    def train(self, batch, loss_fn, seed: int) -> dict:
        t, ranks = self.cfg.train, len(self.group)
        plans = plan_update(batch, loss_fn, ranks, t.batch_size, t.micro_batch_size, 1, t.micro_batch_tokens, self.cfg.data.packing, seed)
        if plans is None:
            per_rank = [(s, loss_fn, seed + r) for r, s in enumerate(split(batch, ranks))]
        else:
            per_rank = [(s, loss_fn, seed + r, p) for r, (s, p) in enumerate(zip(rank_shards(batch, plans), plans))]
        rows = self._all("train", per_rank, "learner update")
        return {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}

    def _passes(self, method: str, batch: dict, what: str, *args):
        """A pass without gradients by count, or by the plan the token budget or packing makes; results per rank
        and the plans (None: by count, each rank's rows contiguous)."""
        t = self.cfg.train
        plans = plan_infer(batch, len(self.group), t.micro_batch_size, t.micro_batch_tokens, self.cfg.data.packing)
        if plans is None:
            return self._all(method, [(s, *args) for s in split(batch, len(self.group))], what), None
        return self._all(method, [(s, *args, p) for s, p in zip(rank_shards(batch, plans), plans)], what), plans

    def _batch(self, ex: Examples, kind: str, pad_id: int, idx: list[int], ref=None):
        batch = make_batch(ex, idx, kind, pad_id)
        if ref is not None:
            batch["ref_logps"] = ref[idx]
        return batch

    def evaluate(self, ex: Examples, kind: str, pad_id: int, loss_fn, n: int, ref=None) -> dict:
        rows, _ = self._passes("evaluate", self._batch(ex, kind, pad_id, list(range(n)), ref), "held-out evaluation", loss_fn)
        return {f"eval/{k}": sum(r[k] for r in rows) / len(rows) for k in rows[0]}

    def reference_logps(self, ex: Examples, pad_id: int) -> torch.Tensor:
        """[N, 2] for every pair. The set is padded to split evenly over the ranks (ZeRO-3 ranks run each
        forward pass together) by repeating its first pairs; the repeats are dropped."""
        n, ranks = len(ex), len(self.group)
        idx = list(range(n)) + list(range((-n) % ranks))
        parts, plans = self._passes("reference_logps", self._batch(ex, "dpo", pad_id, idx), "reference log-probs")
        if plans is not None:
            return gather_rows([{"logps": p} for p in parts], plans, len(idx))["logps"][:n]
        return torch.cat(parts)[:n]

    def infer(self, batch) -> dict:
        parts, plans = self._passes("infer", batch, "learner inference")
        return concat(parts) if plans is None else gather_rows(parts, plans, len(batch["input_ids"]))

    def save_checkpoint(self, path: str) -> None:
        self.roles.call("learner", "save_checkpoint", f"{path}/learner")

    def load_checkpoint(self, path: str) -> None:
        self.roles.call("learner", "load_checkpoint", f"{path}/learner")

    def save_hf(self, path: str) -> None:
        self.roles.call("learner", "save_hf", path, GATHER_BUCKET_MB)

    def shutdown(self) -> None:
        self.roles.shutdown()


def reward_stats(learners: StageLearners, ex: Examples, pad_id: int, ranks: int, limit: int = 1024) -> dict:
    """Mean and std of the trained reward model's scores over held-out responses (chosen and rejected), so a
    PPO run can standardise them (reward.model_normalize)."""
    n = min(len(ex), limit)
    n -= n % ranks
    scores = learners.infer(make_batch(ex, list(range(n)), "rm", pad_id))["scores"].flatten()
    std = float(scores.std()) if scores.numel() > 1 else 1.0
    return {"mean": float(scores.mean()), "std": std if math.isfinite(std) and std > 0 else 1.0, "n": int(scores.numel())}
