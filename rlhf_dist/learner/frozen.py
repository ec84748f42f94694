"""The frozen inference workers: the reference policy and the reward model (plain classes that Ray wraps,
testable in one process, like the learners in rlhf_dist.learner.workers)."""
from __future__ import annotations

import torch

from rlhf_dist.config.specs import ReferenceSpec, RewardSpec
from rlhf_dist.learner import micro, models
from rlhf_dist.learner.deepspeed_setup import inference_ds_config
from rlhf_dist.learner.packed import last_token_scores
from rlhf_dist.learner.workers import _Base, _micro_batches


class ReferenceWorker(_Base):
    """Frozen reference policy: log-probs of the sampled tokens. A full replica per rank, or (zero_stage 3)
    one partition per rank, with all ranks running each forward pass together."""

    role = "reference"
    settings: ReferenceSpec

    @property
    def sharded(self) -> bool:
        return self.settings.zero_stage == 3

    def setup(self, master_addr: str | None = None, port: int | None = None) -> dict:
        m = self.settings.model
        path = m.path
        if not self.sharded:
            self.model = models.load_causal_lm(path, m.dtype, m.attn_implementation).to(self.device)
            self.model.eval().requires_grad_(False)
            return {"rank": self.rank}
        import deepspeed
        from transformers.integrations import HfDeepSpeedConfig

        self._rendezvous(master_addr, port)
        ds = inference_ds_config(self.settings.micro_batch_size, m.dtype, self.world_size)
        self._hf_ds = HfDeepSpeedConfig(ds)  # from_pretrained then loads the weights already partitioned
        model = models.load_causal_lm(path, m.dtype, m.attn_implementation).requires_grad_(False)
        self.model, *_ = deepspeed.initialize(model=model, config=ds)
        self.model.eval()
        return {"rank": self.rank}

    @torch.no_grad()
    def infer(self, batch: dict[str, torch.Tensor], plan=None) -> dict[str, torch.Tensor]:
        if plan is not None:
            with micro.layout(self, plan):
                return micro.infer(self._to_device(batch), plan, lambda mb: {"logprobs": self._logprobs(mb)})
        out = []
        for mb in _micro_batches(self._to_device(batch), self.settings.micro_batch_size):
            out.append(self._logprobs(mb).cpu())
        return {"logprobs": torch.cat(out)}

    def _logprobs(self, mb: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._token_logprobs(self.model, mb, self.settings.temperature)[0]


class RewardModelWorker(_Base):
    """Sequence-classification reward model (or labelling judge), scored at the last token; tokenizes text with
    its own tokenizer."""

    role = "reward"
    settings: RewardSpec

    def setup(self) -> dict:
        from transformers import AutoTokenizer

        m = self.settings.model
        path = m.path
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        if self.tokenizer.pad_token_id is None:  # Llama-3 has none; reward-model training pads with EOS too
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = models.load_reward_model(path, m.dtype, m.attn_implementation).to(self.device).eval()
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.shift, self.scale = 0.0, 1.0
        if self.settings.normalize:
            import json
            import os

            with open(os.path.join(path, "reward_stats.json")) as f:
                stats = json.load(f)
            self.shift, self.scale = stats["mean"], stats["std"]
        return {"rank": self.rank}

    @torch.no_grad()
    def score(self, pairs: list[tuple[str, str]]) -> list[float]:
        """Scores (prompt, response) pairs in the conversation format reward-model training used (data/chat.py)."""
        from rlhf_dist.data.chat import conversation_ids, right_padded

        s = self.settings
        from rlhf_dist.data.packing import sequence_groups

        rows = [conversation_ids(self.tokenizer, p, r, s.chat_template) for p, r in pairs]
        pad = self.tokenizer.pad_token_id
        out = [0.0] * len(rows)
        for g in sequence_groups([len(r) for r in rows], s.batch_size, s.micro_batch_tokens, s.packing):
            enc = {k: v.to(self.device) for k, v in right_padded([rows[i] for i in g], pad).items()}
            scores, _ = last_token_scores(self.model, enc, s.packing, s.model.attn_implementation, self.model.config.pad_token_id)
            for i, v in zip(g, ((scores.cpu() - self.shift) / self.scale).tolist()):
                out[i] = v
        return out
