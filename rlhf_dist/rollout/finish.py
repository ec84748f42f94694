"""Why each response ended, and DAPO's overlong filtering: a response cut at max_new_tokens has no ending the
reward could judge, so with `ppo.mask_truncated` it is left out of the loss instead of trained on as complete."""
from __future__ import annotations

import torch

TRUNCATED = "length"  # vLLM's finish reason for a response cut at max_tokens; EOS and stop strings give "stop"
TIMEOUT = "timeout"  # a multi-turn episode stopped at its deadline: unfinished, like a cut response
UNFINISHED = (TRUNCATED, TIMEOUT)


def truncated_flags(finish_reasons: list[str | None]) -> torch.Tensor:
    """[N] bool: True where the response was cut at the token limit (or an episode at its deadline)."""
    return torch.tensor([r in UNFINISHED for r in finish_reasons], dtype=torch.bool)


def drop_truncated(mask: torch.Tensor, truncated: torch.Tensor) -> torch.Tensor:
    """The [N, T] loss mask with every token of truncated responses set to 0."""
    return mask * (~truncated).to(mask.dtype).unsqueeze(1)
