"""Which passes a step needs. The reference runs only for a KL term (or the asked-for KL metric), and on the policy's
own ranks (its base, the adapter off) when the policy trains a LoRA adapter; the policy's old log-probs are
recomputed only when the update can change the policy before a sample is seen again.
Reads the config by field names only, so the config models and derive can use it without an import cycle."""
from __future__ import annotations

import dataclasses


def kl_in_reward(ppo) -> bool:
    return ppo.kl_coef > 0 or ppo.kl_target is not None


def uses_reference(cfg) -> bool:
    p = cfg.ppo
    return kl_in_reward(p) or p.kl_loss_coef > 0 or p.log_kl


def reference_role(cfg) -> bool:
    """A reference role of its own runs: a KL needs it and the policy has no adapter to switch off."""
    return uses_reference(cfg) and cfg.model.lora is None


def single_update(cfg) -> bool:
    """One optimizer step on the whole batch: each sample's first forward in the update runs on the weights that
    sampled it, so its (detached) log-probs are the old log-probs. Not with adapter dropout: the update's forward
    drops what the engines' did not."""
    p, lora = cfg.ppo, cfg.model.lora
    return (p.epochs == 1 and p.mini_batch_size == p.rollout_batch_size * cfg.rollout.n_samples_per_prompt
            and (lora is None or lora.dropout == 0))


@dataclasses.dataclass(frozen=True)
class StepPasses:
    reference: bool  # the reference's forward pass runs
    reference_on_policy: bool  # ...on the policy's ranks, with the adapter off (model.lora)
    policy_infer: bool  # the learner recomputes old log-probs before the update
    old_from: str  # where old log-probs come from: "infer", "engine" or "first_forward" (of the update)

    @property
    def kl_measured(self) -> bool:
        """The per-token KL to the reference is known before the update (it needs policy log-probs then)."""
        return self.reference and self.old_from != "first_forward"


def step_passes(cfg) -> StepPasses:
    p = cfg.ppo
    reference = uses_reference(cfg)
    on_policy = reference and not reference_role(cfg)
    if p.old_logprobs == "engine":
        return StepPasses(reference, on_policy, policy_infer=False, old_from="engine")
    # The KL in the rewards, the asked-for KL metric and the off-policy correction (stale batches, or engine vs
    # learner weights) need the learner's log-probs before the update.
    off_policy = cfg.rollout.max_staleness > 0 or p.is_correction != "none"
    if single_update(cfg) and not kl_in_reward(p) and not p.log_kl and not off_policy:
        return StepPasses(reference, on_policy, policy_infer=False, old_from="first_forward")
    return StepPasses(reference, on_policy, policy_infer=True, old_from="infer")
