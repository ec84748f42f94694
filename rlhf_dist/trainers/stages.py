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
from rlhf_dist.data.stage_data import Examples, make_batch, train_eval_split
from rlhf_dist.errors import wait_all
from rlhf_dist import checkpoint
from rlhf_dist.checkpoint import find_resume, load_tensors, load_trainer_state
from rlhf_dist.metrics import MetricsWriter, RunLog, fresh_run_dir, set_aside_metrics_after, write_config
from rlhf_dist.stage_config import ConfigError, StageConfig, stage_derive, stage_roles


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

    def table(self) -> str:
        rows = [
            ("training samples / held-out samples", f"{self.train_samples} / {self.eval_samples}"),
            ("learner ranks / grad accumulation", f"{self.ranks} / {self.grad_accum}"),
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
    return StageNumbers(n_train, n_eval - n_eval % ranks, ranks, t.batch_size // (t.micro_batch_size * ranks),
                        per_epoch, n_train - per_epoch * t.batch_size, total)


def loss_for(kind: str, cfg: StageConfig):
    if kind == "sft":
        return SFTLoss()
    if kind == "rm":
        return PairwiseRewardLoss()
    return DPOLoss(cfg.dpo.beta, cfg.dpo.loss)


def run_stage(kind: str, cfg: StageConfig, log=print) -> Path:
    from rlhf_dist.cluster import init_ray
    from rlhf_dist.preflight import prepare_stage_model

    # 1. Model, data and arithmetic are checked before any actor starts.
    tokenizer = prepare_stage_model(cfg.model, cfg.data.max_length, log)
    train_set, eval_set = train_eval_split(cfg.data, kind, tokenizer, cfg.run.seed)
    nums = numbers(cfg, len(train_set), len(eval_set) if eval_set is not None else 0)
    resume = find_resume(cfg)
    run_dir = resume.run_dir if resume else fresh_run_dir(cfg.run.output_dir)
    log = RunLog(run_dir, log)
    write_config(run_dir, cfg, resume, nums.table())
    log(f"{kind}: run directory {run_dir}\n{nums.table()}")
    if train_set.skipped:
        log(f"skipped {len(train_set.skipped)} bad rows (data.skip_bad_lines), first ones:\n  " + "\n  ".join(train_set.skipped[:5]))
    pools = stage_derive(cfg.placement.pools, stage_roles(cfg))
    started_ray = init_ray(cfg, pools, log)
    learners = writer = None
    try:
        # The learners' LR schedule needs the run's length, which only the data size gives.
        sized = cfg.model_copy(update={"train": cfg.train.model_copy(update={"max_steps": nums.total_steps})})
        learners = StageLearners(kind, sized, pools, log)
        if resume is not None:
            learners.load_checkpoint(str(resume.path))
            set_aside_metrics_after(run_dir, resume.step)
            log(f"resumed from {resume.path} (step {resume.step})")
        writer = MetricsWriter(run_dir, cfg.run, {**cfg.model_dump(mode="json"), "derived_table": nums.table()})
        loop(kind, cfg, nums, learners, (train_set, eval_set), tokenizer.pad_token_id, writer, log, run_dir, resume)
        t0 = time.perf_counter()
        final = run_dir / "final"
        learners.save_hf(str(final))
        tokenizer.save_pretrained(str(final))
        if kind == "rm":
            stats = reward_stats(learners, eval_set if eval_set is not None and nums.eval_samples else train_set, tokenizer.pad_token_id, nums.ranks)
            (final / "reward_stats.json").write_text(json.dumps(stats, indent=1))
            log(f"reward scores mean {stats['mean']:.4f} std {stats['std']:.4f} over {stats['n']} responses (reward_stats.json)")
        log(f"saved the trained model to {final} in {time.perf_counter() - t0:.1f} s")
    finally:
        if writer is not None:
            writer.close()
        if learners is not None:
            learners.shutdown()
        if started_ray:
            import ray

            ray.shutdown()
    return run_dir


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
        learners.group.call("drop_reference", timeout_s=cfg.timeouts.call_s)
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

    def __init__(self, kind: str, cfg: StageConfig, pools_derived, log):
        import ray

        from rlhf_dist.groups import ActorGroup, worker_env
        from rlhf_dist.learner.stage_workers import DPOWorker, RewardTrainWorker, SFTWorker
        from rlhf_dist.placement import Slot, check_cluster_fits, create_pools

        self.cfg, t = cfg, cfg.timeouts
        check_cluster_fits(cfg, pools_derived, ray.cluster_resources(), ray.nodes())
        self.pools = create_pools(cfg, pools_derived, t.actor_start_s)
        role = cfg.placement.learner
        cls = {"sft": SFTWorker, "rm": RewardTrainWorker, "dpo": DPOWorker}[kind]
        slots = [Slot(role.pool, b, 1.0) for b in range(role.num_gpus)]
        env = worker_env(cfg.cluster.device, cfg.cluster.threads_per_actor)
        t0 = time.perf_counter()
        self.group = ActorGroup("learner", cls, slots, self.pools, (cfg,), env)
        self.group.call("ready", timeout_s=t.actor_start_s)
        addr, port = self.group.call("master_endpoint", ranks=[0], timeout_s=t.call_s)[0]
        info = self.group.call("setup", addr, port, timeout_s=t.actor_start_s)
        log(f"learner: {len(self.group)} ranks up in {time.perf_counter() - t0:.1f} s, {info[0]['params'] / 1e6:.2f}M parameters")

    def _all(self, method: str, per_rank, what: str):
        refs, labels = self.group.submit(method, per_rank=per_rank)
        return wait_all(refs, labels, what, self.cfg.timeouts.call_s)

    def train(self, batch, loss_fn, seed: int) -> dict:
        shards = split(batch, len(self.group))
        rows = self._all("train", [(s, loss_fn, seed + r) for r, s in enumerate(shards)], "learner update")
        return {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}

    def _shards(self, ex: Examples, kind: str, pad_id: int, idx: list[int], ref=None):
        batch = make_batch(ex, idx, kind, pad_id)
        if ref is not None:
            batch["ref_logps"] = ref[idx]
        return split(batch, len(self.group))

    def evaluate(self, ex: Examples, kind: str, pad_id: int, loss_fn, n: int, ref=None) -> dict:
        shards = self._shards(ex, kind, pad_id, list(range(n)), ref)
        rows = self._all("evaluate", [(s, loss_fn) for s in shards], "held-out evaluation")
        return {f"eval/{k}": sum(r[k] for r in rows) / len(rows) for k in rows[0]}

    def reference_logps(self, ex: Examples, pad_id: int) -> torch.Tensor:
        """[N, 2] for every pair. The set is padded to split evenly over the ranks (ZeRO-3 ranks run each
        forward pass together) by repeating its first pairs; the repeats are dropped."""
        n, ranks = len(ex), len(self.group)
        idx = list(range(n)) + list(range((-n) % ranks))
        parts = self._all("reference_logps", [(s,) for s in self._shards(ex, "dpo", pad_id, idx)], "reference log-probs")
        return torch.cat(parts)[:n]

    def infer(self, batch) -> dict:
        return concat(self._all("infer", [(s,) for s in split(batch, len(self.group))], "learner inference"))

    def save_checkpoint(self, path: str) -> None:
        self.group.call("save_checkpoint", f"{path}/learner", timeout_s=self.cfg.timeouts.call_s)

    def load_checkpoint(self, path: str) -> None:
        self.group.call("load_checkpoint", f"{path}/learner", timeout_s=self.cfg.timeouts.call_s)

    def save_hf(self, path: str) -> None:
        self.group.call("save_hf", path, timeout_s=self.cfg.timeouts.call_s)

    def shutdown(self) -> None:
        from rlhf_dist.groups import stop_all

        stop_all([self.group], self.pools)


def reward_stats(learners: StageLearners, ex: Examples, pad_id: int, ranks: int, limit: int = 1024) -> dict:
    """Mean and std of the trained reward model's scores over held-out responses (chosen and rejected), so a
    PPO run can standardise them (reward.model_normalize)."""
    n = min(len(ex), limit)
    n -= n % ranks
    scores = learners.infer(make_batch(ex, list(range(n)), "rm", pad_id))["scores"].flatten()
    std = float(scores.std()) if scores.numel() > 1 else 1.0
    return {"mean": float(scores.mean()), "std": std if math.isfinite(std) and std > 0 else 1.0, "n": int(scores.numel())}
