"""Judges for AI-feedback labelling: a reward model, a Python function, or an LLM asked which answer is better.

The LLM judge reads its verdict from log-probabilities, not from sampled text: for each comparison it scores
both labels (" A", " B") after the judge prompt, and every pair is asked in both orders to cancel the
judge's bias toward a position.
"""
from __future__ import annotations

import os

from rlhf_dist.learner.models import DTYPES
from rlhf_dist.learner.workers import RewardModelWorker


class JudgeRewardWorker(RewardModelWorker):
    """A reward model scoring `prompt + response` texts, configured by the label config's judge section."""

    role = "judge"

    def model_path(self) -> str:
        return self.cfg.judge.model

    def normalize(self) -> bool:
        return False

    def batch_size(self) -> int:
        return 16


class JudgeEngine:
    role = "judge"

    def __init__(self, cfg, rank: int, world_size: int):
        self.cfg, self.rank = cfg, rank

    def ready(self) -> dict:
        from rlhf_dist.dist import node_ip

        return {"role": self.role, "rank": self.rank, "ip": node_ip(), "pid": os.getpid()}

    def setup(self) -> dict:
        from vllm import LLM

        from rlhf_dist.trainers.label import JUDGE_LABEL_ROOM

        cfg, j = self.cfg, self.cfg.judge
        self.llm = LLM(
            model=j.model or cfg.model.policy,
            dtype=DTYPES[cfg.model.dtype],
            max_model_len=j.max_prompt_tokens + JUDGE_LABEL_ROOM,
            enforce_eager=cfg.rollout.enforce_eager,
            gpu_memory_utilization=cfg.rollout.gpu_memory_utilization,
            seed=cfg.run.seed + self.rank,
        )
        return {"rank": self.rank}

    def label_logprobs(self, prompts: list[list[int]], labels: list[list[int]]) -> list[list[float]]:
        """[prompt][label] log-probability of the label's tokens right after the judge prompt."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        requests = [TokensPrompt(prompt_token_ids=p + lab) for p in prompts for lab in labels]
        # One generated token is the least vLLM allows; only the prompt's log-probs are read.
        outs = self.llm.generate(requests, SamplingParams(max_tokens=1, prompt_logprobs=0), use_tqdm=False)
        scores = []
        for (p, lab), o in zip(((p, lab) for p in prompts for lab in labels), outs):
            ids = o.prompt_token_ids
            scores.append(sum(o.prompt_logprobs[i][ids[i]].logprob for i in range(len(p), len(p) + len(lab))))
        k = len(labels)
        return [scores[i * k : (i + 1) * k] for i in range(len(prompts))]
