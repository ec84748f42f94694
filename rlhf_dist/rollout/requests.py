"""Generation requests to a group of engines, one rule for seeds and one for splitting over ranks.

Seeds: a call has one seed, and the sample at position j of the call is sampled with `seed + j`, wherever it
lands (each engine seeds its requests from its shard's first position), so the tokens never depend on the
number of engines. A call's seed is `generation_seed(run.seed, step, round)`: training uses rounds 1, 2, ...
of each step, evaluation round 0 of step 0 (the same draws at every evaluation, so its curve moves only with
the weights), labelling round 1 of step b+1 for its b-th batch.
"""
from __future__ import annotations

from rlhf_dist.data.batch import shard_bounds
from rlhf_dist.rollout.trajectory import Trajectory


def generation_seed(run_seed: int, step: int, round_: int) -> int:
    return run_seed * 1_000_003 + step * 10_007 + round_


def submit_generate(group, prompts: list[list[int]], seed: int | list[int], version: int | None,
                    sampling: dict | list[dict] | None = None):
    """Start generating `prompts` on the group's engines, in contiguous shards that cover every prompt (an engine
    with an empty shard is not called). `version`: the weights version each engine must hold (None: unchecked).
    `seed` and `sampling` may be lists, one per prompt (multi-turn rounds: each sample's seed and turn budget)."""
    def part(x, a, b):
        return x[a:b] if isinstance(x, list) else x

    per_rank = [(prompts[a:b], seed[a:b] if isinstance(seed, list) else seed + a, version, part(sampling, a, b))
                for a, b in shard_bounds(len(prompts), len(group)) if b > a]
    return group.submit("generate", per_rank=per_rank, ranks=range(len(per_rank)))


def merged(outs: list[dict]) -> dict:
    """The engines' answers in request order, and each engine's seconds."""
    return {
        "responses": [r for o in outs for r in o["responses"]],
        "logprobs": [r for o in outs for r in o["logprobs"]],
        "finish_reasons": [r for o in outs for r in o["finish_reasons"]],
        "engine_seconds": [o["seconds"] for o in outs] or [0.0],
    }


def trajectories(gen: dict, prompt_ids: list[list[int]], indices: list[int], groups: list[int], version: int) -> list[Trajectory]:
    """One single-turn trajectory per answer: row r answers prompt indices[r] and belongs to groups[r]."""
    if len(gen["responses"]) != len(indices):
        raise RuntimeError(f"the engines answered {len(gen['responses'])} of {len(indices)} requests")
    return [Trajectory.sampled(i, g, prompt_ids[i], r, lp, f, version)
            for i, g, r, lp, f in zip(indices, groups, gen["responses"], gen["logprobs"], gen["finish_reasons"])]
