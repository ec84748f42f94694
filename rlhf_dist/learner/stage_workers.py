"""Learner ranks of the supervised and preference stages. Like the PPO workers, each knows only how to load its
model and what it outputs for a micro-batch; the loss is handed in."""
from __future__ import annotations

import torch

from rlhf_dist.algorithms.preference import sequence_logprob
from rlhf_dist.learner import micro, models
from rlhf_dist.learner.packed import last_token_scores
from rlhf_dist.learner.workers import LearnerWorker, _micro_batches


class StageWorker(LearnerWorker):
    role = "learner"

    def load_model(self):
        m = self.settings.model
        model = models.load_causal_lm(m.path, m.dtype, m.attn_implementation)
        self.pad_id = model.config.pad_token_id if model.config.pad_token_id is not None else 0
        return model


class SFTWorker(StageWorker):
    def outputs(self, batch, with_entropy):
        return {"logprobs": self._token_logprobs(self.engine, batch, 1.0)[0]}


class RewardTrainWorker(StageWorker):
    """A sequence-classification model with one output, trained on pairs; scores are read at the last real
    token, exactly as the PPO reward role reads them."""

    def load_model(self):
        from transformers import AutoTokenizer

        m = self.settings.model
        model = models.load_reward_model(m.path, m.dtype, m.attn_implementation)
        if model.config.pad_token_id is None:
            # The classifier finds the last real token by the pad id; it is saved with the model.
            tok = AutoTokenizer.from_pretrained(m.path)
            model.config.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        return model

    def outputs(self, batch, with_entropy):
        """[B, 2] scores of each pair's chosen and rejected sequences."""
        m = self.settings.model
        scores, positions = last_token_scores(self.engine, batch, self.packed, m.attn_implementation, self.engine.module.config.pad_token_id)
        self.real_tokens += int(batch["attention_mask"].sum())
        self.computed_positions += positions
        return {"scores": scores}


class DPOWorker(StageWorker):
    def _pair_logps(self, model, batch) -> torch.Tensor:
        """[B, 2] sequence log-probs of each pair's chosen and rejected responses."""
        return sequence_logprob(self._token_logprobs(model, batch, 1.0)[0], batch["mask"])

    def outputs(self, batch, with_entropy):
        return {"logps": self._pair_logps(self.engine, batch)}

    @torch.no_grad()
    def reference_logps(self, batch: dict[str, torch.Tensor], plan=None) -> torch.Tensor:
        """[B, 2] sequence log-probs under the frozen reference, called for every pair before training starts.
        Without model.reference the reference is this model before its first step, so no second copy is
        loaded (and under ZeRO-3 all ranks run it together)."""
        ref = self.settings.reference
        if ref is None:
            model = self.engine
            self.engine.eval()
        else:
            if getattr(self, "_reference", None) is None:
                self._reference = models.load_causal_lm(ref.path, ref.dtype, ref.attn_implementation).to(self.device)
                self._reference.eval().requires_grad_(False)
            model = self._reference
        if plan is not None:
            with micro.layout(self, plan):
                return micro.infer(self._to_device(batch), plan, lambda mb: {"logps": self._pair_logps(model, mb)})["logps"]
        out = [self._pair_logps(model, mb).float().cpu() for mb in _micro_batches(self._to_device(batch), self.spec.micro_batch_size)]
        return torch.cat(out)

    def drop_reference(self) -> bool:
        self._reference = None
        return True
