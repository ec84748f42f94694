"""The LLM judge for AI-feedback labelling: a vLLM engine asked which of two answers is better.

It reads its verdict from log-probabilities, not from sampled text: for each comparison it scores both labels
(" A", " B") after the judge prompt, and every pair is asked in both orders to cancel the judge's bias toward a
position. (A reward-model judge is the reward role's worker with the judge's settings.)
"""
from __future__ import annotations

from rlhf_dist.rollout.engine import RolloutEngine
from rlhf_dist.config.specs import EngineSpec, process_spec

JUDGE_LABEL_ROOM = 16  # positions past judge.max_prompt_tokens for the label tokens


def judge_engine_spec(cfg) -> EngineSpec:
    """From a labelling config: the judge model (default: the policy) with the engines' vLLM settings."""
    j = cfg.judge
    llm = dict(model=j.model or cfg.model.policy, dtype=cfg.model.dtype, max_model_len=j.max_prompt_tokens + JUDGE_LABEL_ROOM,
               enforce_eager=cfg.rollout.enforce_eager, gpu_memory_utilization=cfg.rollout.gpu_memory_utilization)
    return EngineSpec(process_spec(cfg), llm)


class JudgeEngine(RolloutEngine):
    role = "judge"

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
