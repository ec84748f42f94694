"""Held-out evaluation through the job's rollout engines: greedy and sampled responses, scored by the run's
reward functions and reward model, with pass@k for verifiable rewards. Metrics are logged under `eval/`."""
from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from rlhf_dist.config import Config, ConfigError, DataConfig
from rlhf_dist.rewards.scorer import Scorer
from rlhf_dist.rollout.requests import generation_seed
from rlhf_dist.rollout.multiturn import EnvSpec
from rlhf_dist.rollout.source import EnvRound, generate, score_samples


def pass_at_k(n: int, c: int, k: int) -> float:
    """Chance that at least one of k responses drawn without replacement from n, c of them correct, is correct:
    1 - C(n-c, k) / C(n, k) (Chen et al. 2021), as a product so that large n cannot overflow."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n (n={n}, c={c}, k={k})")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def mean_pass_at_k(correct_per_prompt: list[int], n: int, k: int) -> float:
    return sum(pass_at_k(n, c, k) for c in correct_per_prompt) / len(correct_per_prompt)


class Evaluator:
    def __init__(self, cfg: Config, tokenizer, rules, log=print, env: EnvSpec | None = None):
        """`env`: an agent config's environment; each evaluation prompt is then an episode (greedy: every turn
        at temperature 0), scored by the functions and the environment's reward parts."""
        from rlhf_dist.data.prompts import load_prompts

        e = cfg.eval
        self.cfg, self.e, self.tokenizer, self.rules = cfg, e, tokenizer, rules
        self.env = None
        if env is not None:
            limit = cfg.timeouts.call_s * (env.limits.max_turns + 1) + env.limits.trajectory_timeout_s
            self.env = EnvRound(env, tokenizer, limit)
        data = DataConfig(
            prompts=e.prompts, prompt_key=e.prompt_key, label_key=e.label_key,
            apply_chat_template=cfg.data.apply_chat_template, max_prompt_tokens=cfg.data.max_prompt_tokens,
        )
        self.prompts = load_prompts(data, tokenizer, section="eval")
        names = list(rules.names if rules else [])
        declared = env.env_class.reward_names if env is not None else ()
        # pass@k only for a verifiable reward, named by eval.pass_function: a function's, or an environment's part
        # (checked at the first evaluation when the environment does not declare its reward_names).
        self.pass_name = e.pass_function
        if e.pass_function is not None and e.pass_function not in names + list(declared) and (env is None or declared):
            known = ", ".join(names + list(declared)) or "none"
            what = "reward.functions or the environment's reward parts" if env is not None else "reward.functions"
            raise ConfigError(f"eval.pass_function: {e.pass_function!r} is not one of {what} ({known})")
        if self.prompts.labels is None and rules:
            from rlhf_dist.rewards.functions import label_use

            for spec, fn in zip(rules.specs, rules.fns):
                if label_use(fn) == "required":
                    raise ConfigError(f"eval.label_key: reward function {spec.name!r} needs a label; set eval.label_key")
        log(f"eval: {len(self.prompts.texts)} prompts from {e.prompts}")

    def due(self, step: int) -> bool:
        every = self.e.every_n_steps
        return step == 0 or step == self.cfg.run.steps or bool(every and step % every == 0)

    def before_training(self, roles, writer, log) -> None:
        """Step 0: the policy as training starts."""
        from rlhf_dist.console import eval_metrics_brief

        metrics = self.run(roles)
        writer.write(0, metrics)
        log(f"step 0: {eval_metrics_brief(metrics)}")

    def run(self, roles, samples_path: Path | None = None) -> dict:
        t0 = time.perf_counter()
        metrics: dict[str, float] = {}
        rows: list[dict] = []
        if self.e.greedy:
            metrics.update(self._one(roles, "greedy", 1, {"temperature": 0.0}, rows))
        if self.e.n_samples:
            metrics.update(self._one(roles, "sampled", self.e.n_samples, None, rows))
        metrics["eval/seconds"] = time.perf_counter() - t0
        if samples_path is not None:
            import json

            from rlhf_dist.outputs import write_file

            write_file(samples_path, "".join(json.dumps(r) + "\n" for r in rows), owner=samples_path.parent)
        return metrics

    def _one(self, roles, mode: str, n: int, sampling: dict | None, rows: list) -> dict:
        p = self.prompts
        # The same seed at every evaluation (rlhf_dist.rollout.requests): the curve moves only with the weights.
        samples, _, episodes = generate(roles, p, list(range(len(p.ids))), n, generation_seed(self.cfg.run.seed, 0, 0), sampling,
                                        self.env)
        # Metrics only, nothing trained on: the functions' values as they returned them (float64).
        scorer = Scorer(self.rules, roles.reward_scores if roles.reward is not None else None, dtype=torch.float64)
        texts = score_samples(scorer, samples, self.tokenizer, p)
        out = {
            f"eval/{mode}/response_length": sum(len(s.response_ids) for s in samples) / len(samples),
            f"eval/{mode}/truncated_fraction": sum(s.truncated for s in samples) / len(samples),
        }
        for key in ("rollout/turns_mean", "rollout/tool_calls_mean"):  # an environment's episodes
            if key in episodes:
                out[f"eval/{mode}/{key.removeprefix('rollout/')}"] = episodes[key]
        columns = {name: [s.reward_parts[name] for s in samples] for name in samples[0].reward_parts}
        for name, values in columns.items():
            out[f"eval/{mode}/{name}"] = sum(values) / len(values)
        if self.pass_name is not None:
            if self.pass_name not in columns:
                raise ConfigError(f"eval.pass_function: {self.pass_name!r} is not one of the reward parts the evaluation "
                                  f"gave ({', '.join(columns) or 'none'})")
            correct = [v >= self.e.pass_threshold for v in columns[self.pass_name]]
            per_prompt = [sum(correct[i * n : (i + 1) * n]) for i in range(len(p.ids))]
            for k in ([1] if mode == "greedy" else self.e.k):
                out[f"eval/{mode}/pass@{k}"] = mean_pass_at_k(per_prompt, n, k)
        for s, text in zip(samples, texts):
            row = {"mode": mode, "prompt": p.texts[s.prompt_index], "response": text, **s.reward_parts}
            if p.labels is not None:
                row["label"] = p.labels[s.prompt_index]
            rows.append(row)
        return out
