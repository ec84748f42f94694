"""The weight probe: a fixed set of token sequences (a few training prompts, each followed by a fixed response)
that the engines score after every verified sync and the learner scores too. The checksums prove the bytes
arrived; the probe proves the engines compute with them (a loader that writes a tensor wrongly, a layout the
engine reads differently, a stale cache), on the same tokens at every sync, whatever the mode (synchronous,
asynchronous, stale batches). Pure: built from token ids only. The limit it is held to is derived in
rlhf_dist.config.derive (sync.max_logprob_diff)."""
from __future__ import annotations

import dataclasses

@dataclasses.dataclass(frozen=True)
class ProbeSet:
    seqs: tuple[tuple[int, ...], ...]  # prompt then response ids
    starts: tuple[int, ...]  # where each response starts: the tokens compared are seqs[i][starts[i]:]

    @property
    def tokens(self) -> int:
        return sum(len(s) - b for s, b in zip(self.seqs, self.starts))


def probe_set(prompt_ids: list[list[int]], n: int, prompt_tokens: int = 16, response_tokens: int = 8) -> ProbeSet | None:
    """Prompt i's first `prompt_tokens` ids, then as its response the last `response_tokens` ids of prompt i+1:
    real text, fixed for the whole run (and its resumptions: the same prompt file gives the same set)."""
    prompts = [list(p) for p in prompt_ids if len(p) > 0]
    if n == 0 or not prompts:
        return None
    seqs, starts = [], []
    for i in range(min(n, len(prompts))):
        head = prompts[i][:prompt_tokens]
        tail = prompts[(i + 1) % len(prompts)][-response_tokens:]
        seqs.append(tuple(head + tail))
        starts.append(len(head))
    return ProbeSet(tuple(seqs), tuple(starts))


def worst_difference(engine: list[list[float]], learner: list[list[float]]) -> tuple[float, int, int]:
    """(largest |engine - learner|, sequence, token) over the probe's response tokens; NaN counts as infinite."""
    worst = (0.0, 0, 0)
    for i, (a, b) in enumerate(zip(engine, learner)):
        if len(a) != len(b):
            return float("inf"), i, min(len(a), len(b))
        for j, (x, y) in enumerate(zip(a, b)):
            d = abs(x - y)
            d = d if d == d else float("inf")
            if d > worst[0]:
                worst = (d, i, j)
    return worst
