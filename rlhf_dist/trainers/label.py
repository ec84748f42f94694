"""AI feedback (RLAIF): sample responses with the vLLM engines, rank them with a judge, write preference JSONL
in the format `rlhf-dist rm` and `rlhf-dist dpo` read (prompt, chosen, rejected)."""
from __future__ import annotations

import itertools
import json
import math
import time
from pathlib import Path

import torch

from rlhf_dist.data.chat import prompt_ids, require_template
from rlhf_dist.data.prompts import load_prompts
from rlhf_dist.dist import cpu_workers
from rlhf_dist.config.layout import pool_layout
from rlhf_dist.learner.frozen import RewardModelWorker
from rlhf_dist.model_shape import check_tp_heads
from rlhf_dist.outputs import open_append
from rlhf_dist.preflight import check_model_path, check_stop_tokens, prepare_tokenizer
from rlhf_dist.data.batch import shards
from rlhf_dist.rewards.functions import RuleRewards
from rlhf_dist.rewards.scorer import Scorer
from rlhf_dist.rollout.engine import RolloutEngine, engine_env, engine_spec
from rlhf_dist.rollout.requests import generation_seed, merged, submit_generate
from rlhf_dist.rollout.source import generate
from rlhf_dist.rollout.judge import JUDGE_LABEL_ROOM, JudgeEngine, judge_engine_spec
from rlhf_dist.runtime.roles import Roles, RoleSpec, role_gpus
from rlhf_dist.runtime.scaffold import open_run, ray_session
from rlhf_dist.config.specs import ModelSpec, RewardSpec, process_spec
from rlhf_dist.config.stages import LabelConfig

JUDGE_BATCH_SIZE = 16  # texts per forward pass of a reward-model judge


def label_roles(cfg: LabelConfig) -> list[RoleSpec]:
    """The rollout engines, and (for reward-model and LLM judges) the judge on its own pool."""
    p, m = cfg.placement, cfg.model
    env = engine_env(cfg)
    specs = [RoleSpec("rollout", RolloutEngine, p.rollout.pool, p.rollout.num_engines, engine_spec(cfg),
                      gpus_per_rank=p.rollout.tensor_parallel_size, env=env, seats=cpu_workers(cfg.cluster.device))]
    if cfg.judge.kind == "llm":
        specs.append(RoleSpec("judge", JudgeEngine, p.judge.pool, p.judge.num_gpus, judge_engine_spec(cfg), env=env))
    elif cfg.judge.kind == "reward_model":
        spec = RewardSpec(process_spec(cfg), ModelSpec(cfg.judge.model, m.dtype, m.attn_implementation), False, JUDGE_BATCH_SIZE,
                          cfg.data.apply_chat_template)
        specs.append(RoleSpec("judge", RewardModelWorker, p.judge.pool, p.judge.num_gpus, spec, env=env))
    return specs


def run_label(cfg: LabelConfig, log=print) -> Path:
    # 1. Model paths, the judge and the prompts are checked before any actor starts.
    m, j = cfg.model, cfg.judge
    tokenizer = prepare_tokenizer(
        "model.policy", m.policy, m.make_tiny, cfg.data.max_prompt_tokens + cfg.rollout.max_new_tokens,
        "data.max_prompt_tokens + rollout.max_new_tokens", log, who="policy",
    )
    check_tp_heads(cfg.placement.rollout.tensor_parallel_size, m.policy)
    check_stop_tokens(cfg.rollout.stop_token_ids, tokenizer, m.policy)
    if j.model is not None and j.kind != "llm":  # an LLM judge's model is checked with its tokenizer below
        check_model_path("judge.model", j.model)
    judge_tok = None
    if j.kind == "llm":
        # The judge prompt plus the label tokens must fit the judge model's positions.
        judge_tok = prepare_tokenizer("judge.model", j.model or m.policy, False, j.max_prompt_tokens + JUDGE_LABEL_ROOM,
                                      "judge.max_prompt_tokens + 16", log, who="judge")
        if cfg.data.apply_chat_template:
            require_template(judge_tok, "data.apply_chat_template (the judge reads its prompt as a user turn)")
    rules = RuleRewards([j.function]) if j.kind == "function" else None
    prompts = load_prompts(cfg.data, tokenizer)
    run = open_run(cfg, log, resumable=False)
    run_dir, log = run.dir, run.log
    n = cfg.rollout.n_samples_per_prompt
    log(f"label: {len(prompts.texts)} prompts x {n} samples, judge: {j.kind}; writing {run_dir / 'preferences.jsonl'}")

    specs = label_roles(cfg)
    with ray_session(cfg, pool_layout(cfg.placement.pools, role_gpus(specs)), log):
        _label(cfg, specs, prompts, tokenizer, rules, judge_tok, run_dir, log)
    return run_dir


def _label(cfg: LabelConfig, specs, prompts, tokenizer, rules, judge_tok, run_dir: Path, log) -> None:
    j, n = cfg.judge, cfg.rollout.n_samples_per_prompt
    roles = None
    try:
        roles = LabelRoles(cfg, specs, log)
        judge = _judge(cfg, roles, rules, judge_tok)
        counts = {"written": 0, "ties": 0, "empty": 0, "too_long": 0}
        t0 = time.perf_counter()
        with open_append(run_dir / "preferences.jsonl") as out:  # a fresh run directory: a new file
            for b, start in enumerate(range(0, len(prompts.texts), cfg.batch_size)):
                idx = list(range(start, min(start + cfg.batch_size, len(prompts.texts))))
                texts = [prompts.texts[i] for i in idx]
                samples, _, _ = generate(roles, prompts, idx, n, generation_seed(cfg.run.seed, b + 1, 1))
                decoded = tokenizer.batch_decode([s.response_ids for s in samples], skip_special_tokens=True)
                responses = [decoded[k * n : (k + 1) * n] for k in range(len(idx))]
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


def _judge(cfg: LabelConfig, roles: "LabelRoles", rules, judge_tok):
    """A function (prompts, [responses per prompt]) -> [scores per prompt]. `judge_tok`: an LLM judge's
    tokenizer (checked in run_label)."""
    j = cfg.judge
    if j.kind in ("function", "reward_model"):
        scorer = Scorer(rules, (lambda pairs: roles.call_judge("score", pairs)) if j.kind == "reward_model" else None,
                        dtype=torch.float64)

        def by_score(prompts, responses):
            k = len(responses[0])
            flat = [r for rs in responses for r in rs]
            totals, _ = scorer([p for p in prompts for _ in range(k)], flat, None, [0] * len(flat))
            return [totals[i * k : (i + 1) * k].tolist() for i in range(len(prompts))]

        return by_score
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
    """The started engines and judge, with the verbs labelling uses on them."""

    def __init__(self, cfg: LabelConfig, specs: list[RoleSpec], log):
        self.roles = Roles(specs, cfg.placement.pools, cfg.run.name, cfg.cluster, cfg.timeouts, log)
        self.groups = self.roles.groups

    def submit_generate(self, prompts: list[list[int]], seed: int, sampling: dict | None = None):
        return submit_generate(self.groups["rollout"], prompts, seed, None, sampling)  # no syncs: nothing to check

    def gather_generate(self, submitted) -> dict:
        return merged(self.roles.wait([submitted], "rollout.generate"))

    version = 0  # the engines keep the weights they loaded

    def call_judge(self, method: str, items: list, *extra) -> list:
        parts = [c for c in shards(items, len(self.groups["judge"])) if c]
        outs = self.roles.call("judge", method, per_rank=[(c, *extra) for c in parts], ranks=range(len(parts)))
        return [x for o in outs for x in o]

    def shutdown(self) -> None:
        self.roles.shutdown()
