"""The step's pre-update passes (reference, critic, policy), only those rlhf_dist.config.passes says it needs, run in
parallel; and where the engine/learner log-prob probe comes from when the learner does not recompute."""
from __future__ import annotations

import dataclasses
import time

import torch

from rlhf_dist.config.passes import StepPasses


@dataclasses.dataclass
class PassOutputs:
    ref_logprobs: torch.Tensor | None  # None: no KL term uses the reference
    old_logprobs: torch.Tensor | None  # None: the update's first forward provides them
    values: torch.Tensor | None  # None: critic-free
    probe: float | None  # max |engine - learner| log-prob; None: measured by the update's first forward


def run_passes(roles, passes: StepPasses, batch: dict, engine_logprobs: torch.Tensor, timing: dict) -> PassOutputs:
    jobs = {}
    t0 = time.perf_counter()
    on_policy = passes.reference_on_policy  # model.lora: the policy's ranks, their adapter off
    roles.threads.phase(roles.reference if passes.reference and not on_policy else None,
                        roles.policy if passes.policy_infer or on_policy else None, roles.critic)
    if passes.reference:
        jobs["reference"] = (roles.submit_infer(roles.policy, batch, "infer_reference") if on_policy
                             else roles.submit_infer(roles.reference, batch))
    if passes.policy_infer:
        jobs["policy"] = roles.submit_infer(roles.policy, batch)
    if roles.critic is not None:
        jobs["critic"] = roles.submit_infer(roles.critic, batch)
    got = {role: roles.gather_infer(job, f"{role} pass") for role, job in jobs.items()}
    if jobs:
        timing["infer"] = time.perf_counter() - t0
    ref = got["reference"]["logprobs"] if "reference" in got else None
    learner = got["policy"]["logprobs"] if "policy" in got else None
    values = got["critic"]["values"] if "critic" in got else None
    probe = None if learner is None else float(((engine_logprobs - learner).abs() * batch["mask"]).max())
    old = engine_logprobs if passes.old_from == "engine" else learner
    return PassOutputs(ref, old, values, probe)


def update_batch(batch: dict, out: PassOutputs, engine_logprobs: torch.Tensor, advantages: torch.Tensor, needs_ref: bool) -> dict:
    """What the policy update reads: old log-probs when known, the engines' when the update measures the probe."""
    batch["advantages"] = advantages
    if out.old_logprobs is not None:
        batch["old_logprobs"] = out.old_logprobs
    if out.probe is None:
        batch["engine_logprobs"] = engine_logprobs
    if needs_ref:
        batch["ref_logprobs"] = out.ref_logprobs
    return batch


def reduce_ranks(rows: list[dict]) -> dict:
    """One value per metric over the ranks of one group: the max for `*_max` metrics, else the mean."""
    return {k: max(r[k] for r in rows) if k.endswith("_max") else sum(r[k] for r in rows) / len(rows) for k in rows[0]}
