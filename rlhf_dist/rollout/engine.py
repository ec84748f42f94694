"""A vLLM engine as a Ray actor: token ids in, token ids + sampled-token log-probs out."""
from __future__ import annotations

import os
import time

from rlhf_dist.config import Config
from rlhf_dist.dist import use_cuda
from rlhf_dist.learner.models import DTYPES


def engine_env(cfg: Config) -> dict[str, str]:
    """Environment for an engine process, set before vLLM is imported there."""
    env = {
        # The engine core runs inside this actor's process: 3-4 s to start instead of about 18 s, and
        # collective_rpc reaches the worker directly.
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "TOKENIZERS_PARALLELISM": "false",
    }
    if cfg.cluster.device != "cuda":
        env.update(
            {
                "VLLM_CPU_KVCACHE_SPACE": str(cfg.rollout.kv_cache_gb),
                # Other roles share these cores; pinning vLLM's threads to cores would starve them.
                "VLLM_CPU_OMP_THREADS_BIND": "nobind",
                "OMP_NUM_THREADS": str(cfg.cluster.threads_per_actor),
            }
        )
    return env


def llm_kwargs(cfg: Config) -> dict:
    """The vLLM settings every engine uses (the rollout benchmark's direct vLLM too, so both sides match)."""
    return dict(
        model=cfg.model.policy,
        # vLLM would silently downcast an fp32 checkpoint to bf16 unless the dtype is explicit.
        dtype=DTYPES[cfg.model.dtype],
        max_model_len=cfg.data.max_prompt_tokens + cfg.rollout.max_new_tokens,
        enforce_eager=cfg.rollout.enforce_eager,
        gpu_memory_utilization=cfg.rollout.gpu_memory_utilization,
        # Log-probs after temperature, i.e. of the distribution the tokens were sampled from.
        logprobs_mode="processed_logprobs",
    )


def sampling_params(cfg: Config, n: int, seed: int, overrides: dict | None = None) -> list:
    """One seed per request: reproducible runs, and repeated prompts still get different samples.
    `overrides` replaces settings for one call (evaluation: greedy is temperature 0)."""
    from vllm import SamplingParams

    r = cfg.rollout
    settings = dict(
        max_tokens=r.max_new_tokens, temperature=r.temperature, top_p=r.top_p, top_k=r.top_k, min_p=r.min_p,
        stop=list(r.stop), stop_token_ids=list(r.stop_token_ids), logprobs=0,
    )
    settings.update(overrides or {})
    return [SamplingParams(**settings, seed=seed + i) for i in range(n)]


class RolloutEngine:
    role = "rollout"

    def __init__(self, cfg: Config, rank: int, world_size: int):
        self.cfg, self.rank = cfg, rank

    def setup(self) -> dict:
        import logging

        from vllm import LLM

        # Rotary embeddings keep a cos/sin cache that no checkpoint holds; vLLM restores it on every reload
        # and warns that it "failed to load". The logprob-match test shows the reloaded model is exact.
        logging.getLogger("vllm.model_executor.model_loader.reload.layerwise").addFilter(
            lambda r: "RotaryEmbedding" not in r.getMessage()
        )

        cfg = self.cfg
        t0 = time.perf_counter()
        tp = cfg.placement.rollout.tensor_parallel_size
        kwargs = {}
        if tp > 1:
            # GPU: vLLM starts its TP workers as Ray actors inside this engine's placement group. The CPU build
            # has no Ray executor; there the workers are child processes of this actor.
            kwargs["distributed_executor_backend"] = "ray" if use_cuda(cfg.cluster.device) else "mp"
        self.llm = LLM(
            **llm_kwargs(cfg),
            tensor_parallel_size=tp,
            seed=cfg.run.seed + self.rank,
            worker_extension_cls="rlhf_dist.rollout.extension.WeightReceiver",
            **kwargs,
        )
        return {"rank": self.rank, "seconds": time.perf_counter() - t0, "pid": os.getpid()}

    def ready(self) -> dict:
        from rlhf_dist.dist import node_ip

        return {"role": self.role, "rank": self.rank, "ip": node_ip(), "pid": os.getpid()}

    def generate(self, prompts: list[list[int]], seed: int, version: int | None = None, sampling: dict | None = None) -> dict:
        """`version`: the weights version the controller last synced; every worker must hold it.
        `sampling`: settings that replace the rollout's for this call. Each response's finish reason is
        'stop' (EOS, a stop string or stop token) or 'length' (cut at max_new_tokens)."""
        from vllm.inputs import TokensPrompt

        if version is not None:
            held = self.llm.collective_rpc("rlhf_version")
            if any(v != version for v in held):
                from rlhf_dist.errors import WeightSyncError

                raise WeightSyncError(f"engine workers hold weights {held}, but version {version} was synced: refusing stale weights")

        params = sampling_params(self.cfg, len(prompts), seed, sampling)
        t0 = time.perf_counter()
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
        seconds = time.perf_counter() - t0
        responses, logprobs, finish = [], [], []
        for o in outs:
            c = o.outputs[0]
            ids = list(c.token_ids)
            responses.append(ids)
            logprobs.append([c.logprobs[i][t].logprob for i, t in enumerate(ids)])
            finish.append(c.finish_reason)
        return {"responses": responses, "logprobs": logprobs, "finish_reasons": finish, "seconds": seconds}

    def init_weight_sync(self, master_addr: str, port: int, first_rank: int, world_size: int, backend: str) -> list[int]:
        return self.llm.collective_rpc(
            "rlhf_init_sync",
            args=(master_addr, port, first_rank, world_size, backend, self.cfg.timeouts.rendezvous_s),
        )

    def receive_weights(self, buckets, version: int, verify: bool) -> list[dict]:
        out = self.llm.collective_rpc("rlhf_receive", args=(buckets, version, verify))
        # Cached prefix KV was computed with the old weights; reload_weights does not drop it.
        self.llm.reset_prefix_cache()
        return out
