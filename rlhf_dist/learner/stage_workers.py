"""Learner ranks of the supervised and preference stages. Like the PPO workers, each knows only how to load its
model and what it outputs for a micro-batch; the loss is handed in."""
from __future__ import annotations

import torch

from rlhf_dist.algorithms.preference import sequence_logprob
from rlhf_dist.learner import models
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
        s = self.settings
        if s.packing:
            return {"logprobs": models.packed_response_logprobs(self.engine, batch, s.max_length, self.pad_id)}
        logits = models.response_logits(self.engine, batch)
        tokens = batch["input_ids"][:, -batch["mask"].shape[1] :]
        return {"logprobs": models.token_logprobs(logits, tokens, 1.0)}


def _flat(batch: dict[str, torch.Tensor], keys) -> dict[str, torch.Tensor]:
    """[B, 2, ...] pair tensors -> [2B, ...] rows (chosen and rejected of a pair side by side)."""
    return {k: batch[k].flatten(0, 1) for k in keys}


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
        B = batch["input_ids"].shape[0]
        flat = _flat(batch, ("input_ids", "attention_mask"))
        logits = self.engine(input_ids=flat["input_ids"], attention_mask=flat["attention_mask"]).logits
        return {"scores": logits[:, 0].float().view(B, 2)}


class DPOWorker(StageWorker):
    def _pair_logps(self, model, batch) -> torch.Tensor:
        B = batch["input_ids"].shape[0]
        flat = _flat(batch, ("input_ids", "attention_mask", "mask"))
        logits = models.response_logits(model, flat)
        tokens = flat["input_ids"][:, -flat["mask"].shape[1] :]
        return sequence_logprob(models.token_logprobs(logits, tokens, 1.0), flat["mask"]).view(B, 2)

    def outputs(self, batch, with_entropy):
        return {"logps": self._pair_logps(self.engine, batch)}

    @torch.no_grad()
    def reference_logps(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
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
        out = [self._pair_logps(model, mb).float().cpu() for mb in _micro_batches(self._to_device(batch), self.spec.micro_batch_size)]
        return torch.cat(out)

    def drop_reference(self) -> bool:
        self._reference = None
        return True
