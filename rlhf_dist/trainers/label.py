"""AI feedback (RLAIF): sample responses with the vLLM engines, rank them with a judge, write preference JSONL
in the format `rlhf-dist rm` and `rlhf-dist dpo` read (prompt, chosen, rejected)."""
from __future__ import annotations

import itertools
import json
import math
import time
from pathlib import Path

from rlhf_dist.data.chat import prompt_ids, require_template
from rlhf_dist.metrics import RunLog, fresh_run_dir, write_config
from rlhf_dist.stage_config import LabelConfig, stage_derive, stage_roles


JUDGE_LABEL_ROOM = 16  # positions past judge.max_prompt_tokens for the label tokens


def run_label(cfg: LabelConfig, log=print) -> Path:
    from rlhf_dist.cluster import init_ray
    from rlhf_dist.data.prompts import load_prompts
    from rlhf_dist.model_shape import check_tp_heads
    from rlhf_dist.preflight import check_model_path, prepare_tokenizer
    from rlhf_dist.rewards.functions import RuleRewards

    # 1. Model paths, the judge and the prompts are checked before any actor starts.
    m, j = cfg.model, cfg.judge
    tokenizer = prepare_tokenizer(
        "model.policy", m.policy, m.make_tiny, cfg.data.max_prompt_tokens + cfg.rollout.max_new_tokens,
        "data.max_prompt_tokens + rollout.max_new_tokens", log, who="policy",
    )
    check_tp_heads(cfg.placement.rollout.tensor_parallel_size, m.policy)
    if j.model is not None:
        check_model_path("judge.model", j.model)
    if j.kind == "llm":
        # The judge prompt plus the label tokens must fit the judge model's positions.
        judge_tok = prepare_tokenizer("judge.model", j.model or m.policy, False, j.max_prompt_tokens + JUDGE_LABEL_ROOM,
                                      "judge.max_prompt_tokens + 16", log, who="judge")
        if cfg.data.apply_chat_template:
            require_template(judge_tok, "data.apply_chat_template (the judge reads its prompt as a user turn)")
    rules = RuleRewards([j.function]) if j.kind == "function" else None
    prompts = load_prompts(cfg.data, tokenizer)
    run_dir = fresh_run_dir(cfg.run.output_dir)
    log = RunLog(run_dir, log)
    write_config(run_dir, cfg, None)
    n = cfg.rollout.n_samples_per_prompt
    log(f"label: {len(prompts.texts)} prompts x {n} samples, judge: {j.kind}; writing {run_dir / 'preferences.jsonl'}")

    pools = stage_derive(cfg.placement.pools, stage_roles(cfg))
    started_ray = init_ray(cfg, pools, log)
    roles = None
    try:
        roles = LabelRoles(cfg, pools, log)
        judge = _judge(cfg, roles, rules, tokenizer)
        counts = {"written": 0, "ties": 0, "empty": 0, "too_long": 0}
        t0 = time.perf_counter()
        with (run_dir / "preferences.jsonl").open("w") as out:
            for start in range(0, len(prompts.texts), cfg.batch_size):
                idx = list(range(start, min(start + cfg.batch_size, len(prompts.texts))))
                texts = [prompts.texts[i] for i in idx]
                samples = roles.generate([prompts.ids[i] for i in idx for _ in range(n)], seed=cfg.run.seed * 1_000_003 + start)
                responses = [tokenizer.batch_decode(samples[k * n : (k + 1) * n], skip_special_tokens=True) for k in range(len(idx))]
                for prompt, resp, scores in zip(texts, responses, judge(texts, responses)):
                    row = "too_long" if scores is None else preference_row(prompt, resp, scores, j.kind)
                    if isinstance(row, str):
                        counts[row] += 1
                        continue
                    out.write(json.dumps(row) + "\n")
                    counts["written"] += 1
                log(f"labelled {idx[-1] + 1}/{len(prompts.texts)} prompts ({time.perf_counter() - t0:.1f} s)")
        log(
            f"wrote {counts['written']} preference pairs to {run_dir / 'preferences.jsonl'}; skipped {counts['ties']} "
            f"prompts whose samples the judge could not tell apart, {counts['empty']} with an empty best or worst sample, "
            f"{counts['too_long']} whose judge prompt exceeded judge.max_prompt_tokens"
        )
    finally:
        if roles is not None:
            roles.shutdown()
        if started_ray:
            import ray

            ray.shutdown()
    return run_dir


def preference_row(prompt: str, responses: list[str], scores: list[float], judge: str) -> dict | str:
    """The best and the worst sample as a pair; 'ties' or 'empty' when there is no usable pair."""
    best = max(range(len(scores)), key=lambda i: scores[i])
    worst = min(range(len(scores)), key=lambda i: scores[i])
    if scores[best] == scores[worst] or responses[best] == responses[worst]:
        return "ties"
    if not responses[best].strip() or not responses[worst].strip():
        return "empty"
    return {"prompt": prompt, "chosen": responses[best], "rejected": responses[worst],
            "chosen_score": scores[best], "rejected_score": scores[worst], "judge": judge}


def _judge(cfg: LabelConfig, roles: "LabelRoles", rules, tokenizer):
    """A function (prompts, [responses per prompt]) -> [scores per prompt]."""
    j = cfg.judge
    if j.kind == "function":
        return lambda prompts, responses: [rules([p] * len(r), r) for p, r in zip(prompts, responses)]
    if j.kind == "reward_model":
        def by_model(prompts, responses):
            flat = roles.call_judge("score", [(p, r) for p, rs in zip(prompts, responses) for r in rs])
            k = len(responses[0])
            return [flat[i * k : (i + 1) * k] for i in range(len(prompts))]

        return by_model
    from transformers import AutoTokenizer

    judge_tok = AutoTokenizer.from_pretrained(j.model or cfg.model.policy)
    labels = [list(judge_tok(lab, add_special_tokens=False)["input_ids"]) for lab in j.labels]

    chat = cfg.data.apply_chat_template

    def by_llm(prompts, responses):
        return [_round_robin(prompt, rs, j, judge_tok, labels, roles, chat) for prompt, rs in zip(prompts, responses)]

    return by_llm


def _round_robin(prompt: str, responses: list[str], j, judge_tok, labels, roles, chat: bool) -> list[float] | None:
    """Each sample's mean probability of being judged better, over every other sample, in both orders;
    None when a judge prompt is too long (a judge that cannot see both answers would be guessing)."""
    pairs = [(a, b) for a, b in itertools.permutations(range(len(responses)), 2)]
    texts = [j.template.format(prompt=prompt, a=responses[a], b=responses[b]) for a, b in pairs]
    # With chat templates on, the judge reads its prompt as a user turn, as the policy reads its prompts.
    ids = [prompt_ids(judge_tok, t, chat) for t in texts]
    if any(len(x) > j.max_prompt_tokens for x in ids):
        return None
    wins = [0.0] * len(responses)
    for (a, b), (lp_a, lp_b) in zip(pairs, roles.call_judge("label_logprobs", ids, labels)):
        p_a = 1 / (1 + math.exp(lp_b - lp_a))
        wins[a] += p_a
        wins[b] += 1 - p_a
    return [w / (2 * (len(responses) - 1)) for w in wins]


class LabelRoles:
    """The rollout engines and (for reward-model and LLM judges) the judge, on their pools."""

    def __init__(self, cfg: LabelConfig, pools_derived, log):
        import ray

        from rlhf_dist.errors import wait_all
        from rlhf_dist.groups import ActorGroup, worker_env
        from rlhf_dist.placement import Slot, check_cluster_fits, create_pools
        from rlhf_dist.rollout.engine import RolloutEngine, engine_env
        from rlhf_dist.rollout.judge import JudgeEngine, JudgeRewardWorker

        self.cfg, t = cfg, cfg.timeouts
        check_cluster_fits(cfg, pools_derived, ray.cluster_resources(), ray.nodes())
        self.pools = create_pools(cfg, pools_derived, t.actor_start_s)
        p = cfg.placement
        share = lambda pool: 1.0 / len(pools_derived.roles_per_pool[pool])  # noqa: E731
        env = {**worker_env(cfg.cluster.device, cfg.cluster.threads_per_actor), **engine_env(cfg)}
        tp = p.rollout.tensor_parallel_size
        engine_slots = [Slot(p.rollout.pool, b, share(p.rollout.pool)) for b in range(0, p.rollout.num_engines * tp, tp)]
        self.groups = {"rollout": ActorGroup("rollout", RolloutEngine, engine_slots, self.pools, (cfg,), env)}
        if cfg.judge.kind != "function":
            cls = JudgeEngine if cfg.judge.kind == "llm" else JudgeRewardWorker
            slots = [Slot(p.judge.pool, b, share(p.judge.pool)) for b in range(p.judge.num_gpus)]
            self.groups["judge"] = ActorGroup("judge", cls, slots, self.pools, (cfg,), env)
        t0 = time.perf_counter()
        for method, limit in (("ready", t.actor_start_s), ("setup", t.actor_start_s)):
            refs, labels = [], []
            for g in self.groups.values():
                r, lab = g.submit(method)
                refs, labels = refs + r, labels + lab
            wait_all(refs, labels, f"label actors {method}", limit)
        log(f"label actors up in {time.perf_counter() - t0:.1f} s ({', '.join(f'{k}: {len(g)}' for k, g in self.groups.items())})")

    def generate(self, prompts: list[list[int]], seed: int) -> list[list[int]]:
        g = self.groups["rollout"]
        parts = _chunks(prompts, len(g))
        offsets = [sum(len(c) for c in parts[:i]) for i in range(len(parts))]
        outs = g.call("generate", per_rank=[(c, seed + o) for c, o in zip(parts, offsets)], ranks=range(len(parts)),
                      timeout_s=self.cfg.timeouts.call_s)
        return [r for o in outs for r in o["responses"]]

    def call_judge(self, method: str, items: list, *extra) -> list:
        g = self.groups["judge"]
        parts = _chunks(items, len(g))
        outs = g.call(method, per_rank=[(c, *extra) for c in parts], ranks=range(len(parts)), timeout_s=self.cfg.timeouts.call_s)
        return [x for o in outs for x in o]

    def shutdown(self) -> None:
        from rlhf_dist.groups import stop_all

        stop_all(self.groups.values(), self.pools)


def _chunks(items: list, n: int) -> list[list]:
    """At most n nearly equal, non-empty, contiguous chunks covering every item."""
    size = math.ceil(len(items) / n)
    return [items[i : i + size] for i in range(0, len(items), size)]
