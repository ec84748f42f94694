"""How CPU engines load synced weights, on real vLLM, against vLLM's own reload and against transformers.

The receiver's two paths (rlhf_dist.sync.receiver: the lean CPU reload, rlhf_dist.sync.cpu_reload, and vLLM's
reload_weights) each load new weights first in turn: the engine's greedy log-probs then equal transformers' for
those weights, and loading the same weights through the other path leaves its samples unchanged, bit for bit. Llama- and Qwen2-shaped models
(biased q/k/v projections, tied embeddings: vLLM's reload alone left a tied LM head's packed copy stale), each
engine in its own interpreter."""
import json
import os
import subprocess
import sys

import pytest

SCRIPT = r"""
import json, sys
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM
from vllm import LLM, SamplingParams
from vllm.inputs import TokensPrompt

from rlhf_dist.sync import cpu_reload

path = sys.argv[1]
llm = LLM(model=path, dtype="float32", max_model_len=32, enforce_eager=True, gpu_memory_utilization=0.5,
          logprobs_mode="processed_logprobs", seed=0, worker_extension_cls="rlhf_dist.sync.receiver.WeightReceiver")
base = load_file(path + "/model.safetensors")
g = torch.Generator().manual_seed(0)
versions = [{k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in base.items()} for _ in range(2)]
vocab = llm.llm_engine.model_config.get_vocab_size()
prompts = [[(7 * i + 3 * j) % (vocab - 1) + 1 for j in range(4 + i % 9)] for i in range(48)]
hf = AutoModelForCausalLM.from_pretrained(path)

def sample(temperature):
    llm.reset_prefix_cache()
    params = [SamplingParams(max_tokens=8, temperature=temperature, logprobs=0, seed=i, ignore_eos=True) for i in range(len(prompts))]
    outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
    return [[(t, c.logprobs[i][t].logprob) for i, t in enumerate(c.token_ids)] for c in (o.outputs[0] for o in outs)]

def load(self, weights, lean):
    receiver = self._rlhf_load.__self__  # the vLLM worker (`self` may be the wrapper that forwards to it)
    if not hasattr(receiver, "_rlhf_packed"):  # what rlhf_init_sync finds once
        receiver._rlhf_packed = cpu_reload.PackedLayers(receiver.model_runner.get_model())
    receiver._rlhf_lean = lean
    return receiver._rlhf_load(iter(list(weights.items())))

def transformers_gap(weights, greedy):
    # Greedy: each first token is the argmax of transformers' next-token distribution, with its log-prob.
    hf.load_state_dict(weights, strict=False)
    hf.tie_weights()
    gap = 0.0
    with torch.no_grad():
        for p, out in zip(prompts, greedy):
            ref = torch.log_softmax(hf(torch.tensor([p])).logits[0, -1], -1)
            token, logprob = out[0]
            gap = max(gap, abs(float(ref[token]) - logprob), float(ref.max()) - float(ref[token]))
    return gap

def why_not(self):
    model = self.model_runner.get_model()
    return cpu_reload.unsupported(model, self.vllm_config, cpu_reload.PackedLayers(model))

why = llm.collective_rpc(why_not)[0]
tied = llm.collective_rpc(lambda self: getattr(self.model_runner.get_model(), "lm_head", None) is not None
                          and self.model_runner.get_model().lm_head.weight is self.model_runner.get_model().model.embed_tokens.weight)[0]
previous = sample(1.0)
rows = []
for i, w in enumerate(versions * 2):  # v0 v1 v0 v1: each path goes first with each version
    # Each new version goes through one path first and is checked there, against transformers and against what
    # the engine sampled before; then through the other path, which must give the same samples.
    first = i % 2 == 0  # lean first, then vLLM's first
    missed = llm.collective_rpc(load, args=(w, first))[0]; sampled, greedy = sample(1.0), sample(0.0)
    gap = transformers_gap(w, greedy)
    missed += llm.collective_rpc(load, args=(w, not first))[0]; again, greedy_again = sample(1.0), sample(0.0)
    rows.append({"first": "lean" if first else "vllm", "same": sampled == again and greedy == greedy_again,
                 "changed": sampled != previous, "missed": missed, "transformers_gap": gap})
    previous = again
print("REPORT " + json.dumps({"unsupported": why, "tied": tied, "rows": rows}))
"""


def _tied_qwen2(tmp_path) -> str:
    from transformers import AutoModelForCausalLM

    from rlhf_dist.data.tiny import make_tiny_model

    out = make_tiny_model(tmp_path / "qwen2", arch="qwen2")
    model = AutoModelForCausalLM.from_pretrained(out)
    model.config.tie_word_embeddings = True
    model.tie_weights()
    model.save_pretrained(out, safe_serialization=True)
    return str(out)


@pytest.mark.slow
@pytest.mark.parametrize("shape", ["llama", "qwen2-tied"])
def test_both_engine_load_paths_give_the_engine_the_new_weights(shape, tiny_model, tmp_path):
    path = tiny_model if shape == "llama" else _tied_qwen2(tmp_path)
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1", "OMP_NUM_THREADS": "2",
           "VLLM_CPU_OMP_THREADS_BIND": "nobind", "TORCHDYNAMO_DISABLE": "1", "VLLM_LOGGING_LEVEL": "ERROR"}
    done = subprocess.run([sys.executable, "-c", SCRIPT, path], env=env, capture_output=True, text=True, timeout=600, check=False)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("REPORT ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    report = json.loads(lines[-1].removeprefix("REPORT "))
    assert report["unsupported"] is None
    assert report["tied"] is (shape == "qwen2-tied")
    assert [row["first"] for row in report["rows"]] == ["lean", "vllm", "lean", "vllm"]
    for row in report["rows"]:
        assert row["same"] and row["changed"] and row["missed"] == [], row
        assert row["transformers_gap"] < 1e-4, row
