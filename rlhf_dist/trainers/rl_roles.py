"""The RL job's roles (policy, critic, reference, reward model, rollout engines) as role specs for the runtime,
and the verbs the loop uses on them. Start-up, placement and shutdown belong to rlhf_dist.runtime."""
from __future__ import annotations

from rlhf_dist.config import Config, Derived, derive, uses_critic
from rlhf_dist.config.derive import infer_budget
from rlhf_dist.config.passes import reference_role
from rlhf_dist.data.batch import concat, split
from rlhf_dist.data.packing import gather_rows, plan_infer, plan_update, rank_shards
from rlhf_dist.dist import cpu_workers
from rlhf_dist.learner.frozen import ReferenceWorker, RewardModelWorker
from rlhf_dist.learner.workers import CriticWorker, PolicyWorker
from rlhf_dist.rollout.engine import RolloutEngine, engine_env, engine_spec
from rlhf_dist.rollout.requests import merged, submit_generate
from rlhf_dist.data.batch import shards
from rlhf_dist.runtime.placement import plan_slots
from rlhf_dist.runtime.roles import Roles, RoleSpec
from rlhf_dist.runtime.threads import PhaseThreads, engine_threads, phase_threads_on
from rlhf_dist.config.specs import (
    LearnerSpec,
    ModelSpec,
    ReferenceSpec,
    RewardSpec,
    TrainSpec,
    lora_spec,
    process_spec,
)
from rlhf_dist.sync.weights import WeightSync


def _model(cfg: Config, path: str) -> ModelSpec:
    m = cfg.model
    return ModelSpec(path, m.dtype, m.attn_implementation, m.gradient_checkpointing)


def learner_spec(cfg: Config, role: str) -> LearnerSpec:
    """Policy or critic: its weights, batch sizes and optimiser (the two differ in weights and learning rate)."""
    p, m = cfg.ppo, cfg.model
    path, lr = (m.policy, p.policy_lr) if role == "policy" else (m.critic or m.policy, p.critic_lr)
    train = TrainSpec(micro_batch_size=p.micro_batch_size, mini_batch_size=p.mini_batch_size, epochs=p.epochs, lr=lr,
                      weight_decay=p.weight_decay, grad_clip=p.grad_clip, dtype=m.dtype, role=getattr(cfg.placement, role),
                      # The LR schedule counts PPO steps; the learners step it once per optimizer step.
                      schedule=p.lr_schedule, total_steps=cfg.run.steps,
                      optimizer_steps_per_step=derive(cfg).optimizer_steps_per_step)
    adapter = lora_spec(m.lora) if role == "policy" else lora_spec(m.critic_lora, heads=("score",))
    payload = "full" if role != "policy" or m.lora is None else cfg.sync.lora
    return LearnerSpec(process_spec(cfg), _model(cfg, path), train, temperature=cfg.rollout.temperature, lora=adapter,
                       sync_payload=payload)


def reference_spec(cfg: Config) -> ReferenceSpec:
    return ReferenceSpec(process_spec(cfg), _model(cfg, cfg.model.reference or cfg.model.policy),
                         cfg.placement.reference.zero_stage, cfg.ppo.micro_batch_size, cfg.rollout.temperature)


def reward_spec(cfg: Config) -> RewardSpec:
    return RewardSpec(process_spec(cfg), _model(cfg, cfg.reward.model), cfg.reward.model_normalize, cfg.ppo.micro_batch_size,
                      cfg.data.apply_chat_template, infer_budget(cfg), cfg.ppo.packing)


def role_specs(cfg: Config) -> list[RoleSpec]:
    """Only the roles this job uses: no critic for critic-free estimators, no reference without a KL term or the KL
    metric (nor with model.lora: the policy's ranks serve it), no reward model without reward.model."""
    p = cfg.placement

    def shares(role) -> bool:  # transformers keeps one ZeRO-3 setting per process: ZeRO-3 roles keep their own
        return p.share_processes and role.zero_stage != 3

    specs = [RoleSpec("policy", PolicyWorker, p.policy.pool, p.policy.num_gpus, learner_spec(cfg, "policy"), rendezvous=True,
                      yields_cpu=True, hostable=shares(p.policy))]
    if uses_critic(cfg):
        specs.append(RoleSpec("critic", CriticWorker, p.critic.pool, p.critic.num_gpus, learner_spec(cfg, "critic"), rendezvous=True,
                              yields_cpu=True, hostable=shares(p.critic)))
    if reference_role(cfg):
        specs.append(RoleSpec("reference", ReferenceWorker, p.reference.pool, p.reference.num_gpus, reference_spec(cfg),
                              rendezvous=p.reference.zero_stage == 3, yields_cpu=True, hostable=shares(p.reference)))
    if cfg.reward.model is not None:
        # In asynchronous mode the producer's thread scores beside the update: in the learners' processes its
        # calls would queue behind the update's.
        specs.append(RoleSpec("reward", RewardModelWorker, p.reward.pool, p.reward.num_gpus, reward_spec(cfg), yields_cpu=True,
                              hostable=shares(p.reward) and cfg.rollout.max_staleness == 0))
    threads = engine_threads(cfg.cluster, p.rollout.num_engines, p.rollout.tensor_parallel_size)
    specs.append(RoleSpec("rollout", RolloutEngine, p.rollout.pool, p.rollout.num_engines, engine_spec(cfg),
                          gpus_per_rank=p.rollout.tensor_parallel_size, env=engine_env(cfg, threads),
                          seats=cpu_workers(cfg.cluster.device)))
    return specs


def role_slots(cfg: Config, derived: Derived) -> dict:
    """role -> one Slot per actor, as the runtime will place them."""
    return plan_slots(role_specs(cfg), derived.layout)


class RLRoles:
    """The started roles of one RL job, with the weight-sync path between policy and engines."""

    def __init__(self, cfg: Config, log=print, specs: list[RoleSpec] | None = None):
        """`specs`: the roles to start (default: `role_specs(cfg)`)."""
        self.cfg, t = cfg, cfg.timeouts
        self.roles = Roles(specs or role_specs(cfg), cfg.placement.pools, cfg.run.name, cfg.cluster, t, log)
        try:
            self.policy, self.critic = self.roles["policy"], self.roles.get("critic")
            self.reference, self.rollout, self.reward = self.roles.get("reference"), self.roles["rollout"], self.roles.get("reward")
            pl = cfg.placement
            self.sync = WeightSync(self.roles, self.roles.device, pl.rollout.pool == pl.policy.pool,
                                   pl.rollout.tensor_parallel_size, cfg.sync.bucket_mb, t, log,
                                   "full" if cfg.model.lora is None else cfg.sync.lora)
            on = phase_threads_on(cfg.cluster, pl.rollout.tensor_parallel_size)
            self.threads = PhaseThreads(self.roles, on, cfg.cluster.phase_cores)
        except BaseException:
            self.roles.shutdown()
            raise

    def wait(self, submitted: list, what: str) -> list:
        return self.roles.wait(submitted, what)

    def submit_generate(self, prompts: list[list[int]], seed: int, sampling: dict | None = None):
        """Start generation with the weights version last synced (each engine checks it holds that version).
        `sampling`: settings that replace the rollout's for this call (evaluation's greedy decoding)."""
        self.threads.phase(self.rollout)
        return submit_generate(self.rollout, prompts, seed, self.sync.version, sampling)

    def gather_generate(self, submitted) -> dict:
        return merged(self.roles.wait([submitted], "rollout.generate"))

    @property
    def version(self) -> int:
        """The weights version the engines were last synced to."""
        return self.sync.version

    def submit_infer(self, group, batch: dict, method: str = "infer"):
        """A pass over `batch` on the group's ranks: by count, or by the controller's plan (token budget, packing).
        `method`: the workers' pass (`infer_reference`: the policy with its LoRA adapter off)."""
        p = self.cfg.ppo
        plans = plan_infer(batch, len(group), p.micro_batch_size, infer_budget(self.cfg), p.packing)
        if plans is None:
            return group.submit(method, per_rank=[(s,) for s in split(batch, len(group))]), None
        return group.submit(method, per_rank=list(zip(rank_shards(batch, plans), plans))), (plans, len(batch["input_ids"]))

    def gather_infer(self, submitted, what: str) -> dict:
        job, plans = submitted
        parts = self.roles.wait([job], what)
        return concat(parts) if plans is None else gather_rows(parts, *plans)

    def submit_train(self, group, batch: dict, loss_fn, seed: int):
        p, n = self.cfg.ppo, len(group)
        plans = plan_update(batch, loss_fn, n, p.mini_batch_size, p.micro_batch_size, p.epochs, p.micro_batch_tokens, p.packing, seed)
        if plans is None:
            return group.submit("train", per_rank=[(s, loss_fn, seed + r) for r, s in enumerate(split(batch, n))])
        return group.submit("train", per_rank=[(s, loss_fn, seed + r, plan) for r, (s, plan) in enumerate(zip(rank_shards(batch, plans), plans))])

    def reward_scores(self, pairs: list[tuple[str, str]]) -> list[float]:
        self.threads.phase(self.reward)
        chunks = [c for c in shards(pairs, len(self.reward)) if c]
        parts = self.roles.call("reward", "score", per_rank=[(c,) for c in chunks], ranks=range(len(chunks)))
        return [s for p in parts for s in p]

    def sync_weights(self, version: int, verify: bool) -> dict:
        return self.sync.sync(version, verify)

    def learner_groups(self) -> list:
        return [g for g in (self.policy, self.critic) if g is not None]

    def save_checkpoint(self, path: str) -> None:
        """Every learner rank writes its own partitions (all ranks must join DeepSpeed's save)."""
        self.roles.wait([g.submit("save_checkpoint", f"{path}/{g.role}") for g in self.learner_groups()], "checkpoint save")

    def load_checkpoint(self, path: str) -> None:
        self.roles.wait([g.submit("load_checkpoint", f"{path}/{g.role}") for g in self.learner_groups()], "checkpoint load")

    def save_policy(self, path: str) -> None:
        self.roles.call("policy", "save_hf", path, self.cfg.sync.bucket_mb)

    def shutdown(self) -> None:
        self.roles.shutdown()
