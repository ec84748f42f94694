"""A vLLM engine as a Ray actor: token ids in, token ids + sampled-token log-probs out."""
from __future__ import annotations

import os
import time

from rlhf_dist.dist import cpu_workers, node_id, node_ip, pin_cores
from rlhf_dist.errors import WeightSyncError, phase
from rlhf_dist.config.specs import EngineSpec, SamplingSpec, process_spec

RECEIVER = "rlhf_dist.sync.receiver.WeightReceiver"


def engine_env(cfg, threads: int | None = None) -> dict[str, str]:
    """Environment for an engine process, set before vLLM is imported there. `threads` (CPU): what vLLM sets up
    with (default cluster.threads_per_actor; an RL job's engines take their generation share, see
    rlhf_dist.runtime.threads.engine_threads)."""
    env = {
        # The engine core runs inside this actor's process: 3-4 s to start instead of about 18 s, and
        # collective_rpc reaches the worker directly.
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "TOKENIZERS_PARALLELISM": "false",
    }
    if cpu_workers(cfg.cluster.device):
        env.update(
            {
                "VLLM_CPU_KVCACHE_SPACE": str(cfg.rollout.kv_cache_gb),
                # Other roles share these cores; pinning vLLM's threads to cores would starve them.
                "VLLM_CPU_OMP_THREADS_BIND": "nobind",
                "OMP_NUM_THREADS": str(threads or cfg.cluster.threads_per_actor),
                # A compiled engine (rollout.enforce_eager false) needs torch's compiler, off in other workers.
                "TORCHDYNAMO_DISABLE": "1" if cfg.rollout.enforce_eager else "0",
            }
        )
    return env


# vLLM's default token budget of one scheduler step on CPU (SchedulerConfig.DEFAULT_MAX_NUM_BATCHED_TOKENS).
CPU_STEP_TOKENS = 4096


def scheduler_kwargs(device: str, max_model_len: int) -> dict:
    """CPU: no chunked prefill, and a step budget that holds the longest sequence whole.

    Every request is seeded (`sampling_params`). With chunked prefill, a step that cannot finish a request's
    prompt discards that request's sampled token and rewinds its generator by 4 offsets; a CPU
    `torch.Generator` has no offset, so any batch whose prompt tokens exceed one step's budget failed with
    "CPU Generator does not use offset". Without chunking, a prompt is prefilled in one step or waits for the
    next, so no sample is ever discarded, and the seeds still give the same tokens. Measured on 2 cores,
    64 prompts of 200-400 tokens x 64 new: no slower (0.52-0.68 s against 0.66-0.81 s with chunking).
    On GPUs the rewind works and vLLM's chunked prefill stays on (no CPU test reaches that default)."""
    if not cpu_workers(device):
        return {}
    # vLLM refuses a budget below max_model_len once chunking is off (a sequence would never fit one step).
    return dict(enable_chunked_prefill=False, max_num_batched_tokens=max(CPU_STEP_TOKENS, max_model_len))


# The ranks vLLM sizes its LoRA buffers for (vllm.config.lora.MaxLoRARanks); an adapter's rank fits under one.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def lora_engine(cfg) -> dict | None:
    """The adapter the engines serve with adapter-only sync (model.lora, sync.lora: adapter); None: plain weights.
    `slots`: adapters kept at once, one per weights version in flight (rollout.max_staleness + 1)."""
    lora = getattr(cfg.model, "lora", None)
    if lora is None or not hasattr(cfg, "sync") or cfg.sync.lora != "adapter":
        return None
    return {"rank": lora.rank, "alpha": lora.alpha, "target_modules": list(lora.target_modules),
            "slots": cfg.rollout.max_staleness + 1}


def llm_kwargs(cfg) -> dict:
    """The vLLM settings every engine uses (the rollout benchmark's direct vLLM too, so both sides match).
    `cfg`: a PPO or labelling config (both have these sections)."""
    max_model_len = cfg.data.max_prompt_tokens + cfg.rollout.max_new_tokens
    lora = lora_engine(cfg)
    if lora is not None:
        slots = lora["slots"]
        lora_kwargs = dict(enable_lora=True, max_lora_rank=min(r for r in VLLM_LORA_RANKS if r >= lora["rank"]),
                           max_loras=slots, max_cpu_loras=slots)
    else:
        lora_kwargs = {}
    return dict(
        model=cfg.model.policy,
        # vLLM would silently downcast an fp32 checkpoint to bf16 unless the dtype is explicit.
        dtype=cfg.model.dtype,
        max_model_len=max_model_len,
        enforce_eager=cfg.rollout.enforce_eager,
        gpu_memory_utilization=cfg.rollout.gpu_memory_utilization,
        # Log-probs after temperature, i.e. of the distribution the tokens were sampled from.
        logprobs_mode="processed_logprobs",
        **scheduler_kwargs(cfg.cluster.device, max_model_len),
        **lora_kwargs,
    )


def engine_spec(cfg) -> EngineSpec:
    r = cfg.rollout
    warmup = (0, 0)
    if r.warmup and hasattr(cfg, "ppo"):  # labelling has no step to warm up for
        per_engine = -(-cfg.ppo.rollout_batch_size * r.n_samples_per_prompt // cfg.placement.rollout.num_engines)
        warmup = (per_engine, cfg.data.max_prompt_tokens)
    sampling = SamplingSpec(r.max_new_tokens, r.temperature, r.top_p, r.top_k, r.min_p, tuple(r.stop), tuple(r.stop_token_ids))
    engine_load = cfg.sync.engine_load if hasattr(cfg, "sync") else "auto"  # labelling engines take no synced weights
    return EngineSpec(process_spec(cfg), llm_kwargs(cfg), cfg.placement.rollout.tensor_parallel_size, sampling, RECEIVER, warmup,
                      engine_load, lora_engine(cfg))


def sampling_params(r: SamplingSpec, n: int, seed: int | list[int], overrides: dict | list[dict] | None = None) -> list:
    """One seed per request: reproducible runs, and repeated prompts still get different samples (`seed + i`,
    or each request's own seed when given a list: a multi-turn sample's turns). `overrides` replaces settings
    for one call (evaluation: greedy is temperature 0), or per request when a list (a turn's token budget)."""
    from vllm import SamplingParams

    settings = dict(
        max_tokens=r.max_new_tokens, temperature=r.temperature, top_p=r.top_p, top_k=r.top_k, min_p=r.min_p,
        stop=list(r.stop), stop_token_ids=list(r.stop_token_ids), logprobs=0,
    )
    seeds = list(seed) if isinstance(seed, list) else [seed + i for i in range(n)]
    per = overrides if isinstance(overrides, list) else [overrides or {}] * n
    if len(seeds) != n or len(per) != n:
        raise ValueError(f"{n} prompts but {len(seeds)} seeds and {len(per)} sampling settings")
    return [SamplingParams(**{**settings, **o}, seed=s) for s, o in zip(seeds, per)]


class RolloutEngine:
    role = "rollout"

    def __init__(self, spec: EngineSpec, rank: int, world_size: int):
        self.settings, self.rank = spec, rank
        pin_cores()  # before vLLM starts its threads, which inherit the affinity (their binding is off)

    def setup(self) -> dict:
        import gc
        import logging

        from vllm import LLM

        # Everything imported so far lives as long as the process: frozen, vLLM's full collections during set-up
        # skip it (measured on CPU: LLM() 2.0 -> 1.0 s of CPU for the demo's model). vLLM unfreezes at shutdown.
        gc.freeze()

        # Rotary embeddings keep a cos/sin cache that no checkpoint holds; vLLM restores it on every reload
        # and warns that it "failed to load". The logprob-match test shows the reloaded model is exact.
        logging.getLogger("vllm.model_executor.model_loader.reload.layerwise").addFilter(
            lambda r: "RotaryEmbedding" not in r.getMessage()
        )

        s = self.settings
        t0 = time.perf_counter()
        tp = s.tensor_parallel_size
        kwargs = {}
        if tp > 1:
            # This actor holds no GPU; its TP workers use the bundles the runtime gave it (RLHF_DIST_BUNDLES,
            # one per worker, distinct across engines, all on this actor's node). GPU only (not exercised by the
            # CPU tests): vLLM starts the workers as Ray actors on exactly those bundles of the node's placement
            # group this actor runs in (RLHF_DIST_GROUP_BUNDLES: their indices there). The CPU
            # build has no Ray executor: the workers are child processes of this actor, and the runtime's
            # seats hold the same bundles' shares, so Ray's accounting matches a GPU run.
            if not os.environ.get("RLHF_DIST_SEATS"):  # the runtime left the bundles to vLLM's Ray workers
                os.environ["VLLM_RAY_BUNDLE_INDICES"] = os.environ["RLHF_DIST_GROUP_BUNDLES"]
                os.environ["VLLM_RAY_PER_WORKER_GPUS"] = os.environ["RLHF_DIST_GPU_SHARE"]
                kwargs["distributed_executor_backend"] = "ray"
            else:
                kwargs["distributed_executor_backend"] = "mp"
        if s.worker_extension:
            kwargs["worker_extension_cls"] = s.worker_extension
        with phase("vLLM engine start"):
            self.llm = LLM(**s.llm, tensor_parallel_size=tp, seed=s.process.seed + self.rank, **kwargs)
        if s.warmup[0] and s.sampling is not None:
            with phase("engine warm-up generation"):
                self._warm_up(*s.warmup)
        return {"rank": self.rank, "seconds": time.perf_counter() - t0, "pid": os.getpid()}

    def _warm_up(self, requests: int, prompt_tokens: int) -> None:
        """vLLM's first generation of a step-sized batch is many times slower than the next ones (first-call
        set-up of its kernels and buffers). Paid here, it overlaps the learners' start instead of step 1.
        Random ids share no prefix; the prefix cache is reset at every weight sync anyway."""
        import random

        vocab = self.llm.llm_engine.model_config.get_vocab_size()
        rng = random.Random(self.rank)
        prompts = [[rng.randrange(1, vocab) for _ in range(rng.randint(1, prompt_tokens))] for _ in range(requests)]
        self.generate(prompts, seed=0)

    def set_threads(self, n: int) -> int:
        """CPU: torch threads of this process, where a single-worker engine runs its model (multiprocessing is off).
        vLLM's CPU worker replaces torch.set_num_threads with a no-op to protect its core binding; the engines
        run unbound (VLLM_CPU_OMP_THREADS_BIND=nobind), so torch's own setter is safe and is called directly."""
        import torch

        torch._C.set_num_threads(n)
        return torch.get_num_threads()

    def ready(self) -> dict:
        import ray

        return {"role": self.role, "rank": self.rank, "ip": node_ip(), "node": node_id(), "pid": os.getpid(),
                "bundles": os.environ.get("RLHF_DIST_BUNDLES"), "gpu_ids": [str(g) for g in ray.get_gpu_ids()]}

    def score(self, seqs: list[list[int]], starts: list[int]) -> list[list[float]]:
        """The weight probe (rlhf_dist.sync.probe): log-probs of each sequence's tokens from its start on, as vLLM
        computes prompt log-probs (temperature 1: prompt tokens skip the sampling processors)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=list(s)) for s in seqs], params, use_tqdm=False)
        return [[o.prompt_logprobs[i][s[i]].logprob for i in range(start, len(s))] for o, s, start in zip(outs, seqs, starts)]

    def generate(self, prompts: list[list[int]], seed: int | list[int], version: int | None = None,
                 sampling: dict | list[dict] | None = None) -> dict:
        """`version`: the weights version the controller last synced; every worker must hold it.
        `sampling`: settings that replace the rollout's for this call. Each response's finish reason is
        'stop' (EOS, a stop string or stop token) or 'length' (cut at max_new_tokens)."""
        from vllm.inputs import TokensPrompt

        held = self.llm.collective_rpc("rlhf_version") if version is not None or self.settings.lora else None
        if version is not None and any(v != version for v in held):
            raise WeightSyncError(f"engine workers hold weights {held}, but version {version} was synced: refusing stale weights")

        params = sampling_params(self.settings.sampling, len(prompts), seed, sampling)
        t0 = time.perf_counter()
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False,
                                 lora_request=self._adapter(held[0] if held else -1))
        seconds = time.perf_counter() - t0
        responses, logprobs, finish = [], [], []
        for o in outs:
            c = o.outputs[0]
            ids = list(c.token_ids)
            responses.append(ids)
            logprobs.append([c.logprobs[i][t].logprob for i, t in enumerate(ids)])
            finish.append(c.finish_reason)
        return {"responses": responses, "logprobs": logprobs, "finish_reasons": finish, "seconds": seconds}

    def _adapter(self, version: int):
        """Adapter-only sync: the request for the adapter of `version` (rlhf_dist.sync.adapters); None before any
        sync (the warm-up samples the base) or with plain weights."""
        if not self.settings.lora or version < 0:
            return None
        from vllm.lora.request import LoRARequest

        from rlhf_dist.sync.adapters import IN_MEMORY, lora_id

        return LoRARequest(f"rlhf_dist-v{version}", lora_id(version), IN_MEMORY)

    def init_weight_sync(self, master_addr: str, port: int, first_rank: int, world_size: int, backend: str, buckets) -> list[dict]:
        """Join the sync group; `buckets` is the plan agreed once, used by every later receive. Per worker: its
        sync rank and how it loads the weights it receives."""
        p = self.settings.process
        return self.llm.collective_rpc(
            "rlhf_init_sync",
            args=(master_addr, port, first_rank, world_size, backend, p.rendezvous_s, p.collective_s, buckets, self.settings.engine_load,
                  self.settings.lora),
        )

    def set_sync_plan(self, buckets, payload: str | None = None) -> list[bool]:
        return self.llm.collective_rpc("rlhf_set_plan", args=(buckets, payload))

    def receive_weights(self, version: int, verify: bool) -> list[dict]:
        out = self.llm.collective_rpc("rlhf_receive", args=(version, verify))
        # Cached prefix KV was computed with the old weights; reload_weights does not drop it.
        self.llm.reset_prefix_cache()
        return out
