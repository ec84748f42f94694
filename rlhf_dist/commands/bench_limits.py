"""The compute a step cannot avoid, measured in the same run as `bench step`, on the same work as its last step:
that step's prompts, its responses' lengths (vLLM alone is made to generate exactly as many tokens per response)
and the policy weights it started from. vLLM generating that batch alone, the policy's update alone on that
step's very tokens (the learner's epochs and optimizer steps), and a bare broadcast of the weights, each with all
of the machine (every core on CPU); the step's ratio to their sum."""
from __future__ import annotations

import statistics
import time

from rlhf_dist.commands.bench import DirectVLLM, RawBroadcaster
from rlhf_dist.config import Config


class VLLMAlone(DirectVLLM):
    """The framework's engine settings with every core and nothing else running."""

    def setup(self) -> dict:
        _all_cores()
        return super().setup()

    def run(self, prompts: list[list[int]], seed: int, lengths: list[int]) -> dict:
        """Each response exactly `lengths[i]` tokens (no end-of-sequence, stop token or stop string before)."""
        from vllm.inputs import TokensPrompt

        from rlhf_dist.rollout.engine import sampling_params

        # A step never finds its prompts cached: the engines drop the prefix cache at every weight sync.
        self.llm.reset_prefix_cache()
        params = sampling_params(self.spec.sampling, len(prompts), seed,
                                 [{"max_tokens": n, "min_tokens": n, "stop": []} for n in lengths])
        t0 = time.perf_counter()
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
        return {"seconds": time.perf_counter() - t0, "tokens": sum(len(o.outputs[0].token_ids) for o in outs)}


class PolicyAlone:
    """The policy in plain torch (no DeepSpeed, one process): forward, the framework's policy loss, backward,
    AdamW steps, over the whole batch as the config's update goes over it: `ppo.epochs` passes, an optimizer
    step per mini-batch, in micro-batches. (A critic, if any, is not counted.)"""

    def __init__(self, cfg: Config):
        import torch

        from rlhf_dist.algorithms.losses import PolicyLoss
        from rlhf_dist.dist import torch_device
        from rlhf_dist.learner import models

        _all_cores()
        m = cfg.model
        self.device = torch_device(cfg.cluster.device)
        self.model = models.load_causal_lm(m.policy, m.dtype, m.attn_implementation).to(self.device).train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.ppo.policy_lr)
        self.loss = PolicyLoss(name=cfg.ppo.policy_loss, clip_eps_high=cfg.ppo.clip_eps_high, old_from_forward=True)
        self.micro, self.temperature = cfg.ppo.micro_batch_size, cfg.rollout.temperature
        self.mini, self.epochs = cfg.ppo.mini_batch_size, cfg.ppo.epochs

    def ready(self) -> bool:
        return True

    def step(self, batch: dict) -> float:
        import torch

        from rlhf_dist.learner import models

        batch = {k: v.to(self.device) for k, v in batch.items()}
        t0 = time.perf_counter()
        n = batch["input_ids"].shape[0]
        for _ in range(self.epochs):
            for start in range(0, n, self.mini):
                mini = {k: v[start : start + self.mini] for k, v in batch.items()}
                m = mini["input_ids"].shape[0]
                for i in range(0, m, self.micro):
                    mb = {k: v[i : i + self.micro] for k, v in mini.items()}
                    logits = models.response_logits(self.model, mb)
                    tokens = mb["input_ids"][:, -mb["mask"].shape[1] :]
                    out = {"logprobs": models.token_logprobs(logits, tokens, self.temperature),
                           "entropy": torch.zeros_like(mb["mask"])}
                    loss, _ = self.loss(out, mb)
                    (loss * mb["input_ids"].shape[0] / m).backward()
                self.opt.step()
                self.opt.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    def weight_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.model.parameters())


def _all_cores() -> None:
    from rlhf_dist.dist import set_threads
    from rlhf_dist.runtime.threads import node_cores

    set_threads(node_cores())


def measure_limits(cfg: Config, prompts: list[list[int]], responses: list[list[int]], repeats: int, log=print) -> dict:
    """Median seconds of each limit over `repeats` (after a warm-up), one role at a time, on the given prompts and
    responses (generation makes responses of their lengths; the update trains on them) with cfg's policy."""
    import ray
    import torch

    from rlhf_dist.data.batch import build_batch
    from rlhf_dist.dist import cpu_workers
    from rlhf_dist.rollout.engine import engine_env, engine_spec
    from rlhf_dist.runtime.groups import worker_env

    gpu = 0 if cpu_workers(cfg.cluster.device) else 1
    env = worker_env(cfg.cluster.device, cfg.cluster.threads_per_actor)
    opts = dict(num_cpus=0, num_gpus=gpu, runtime_env={"env_vars": env})
    deadline = cfg.timeouts.call_s

    def get(ref):
        return ray.get(ref, timeout=deadline)

    vllm = ray.remote(VLLMAlone).options(**{**opts, "runtime_env": {"env_vars": {**env, **engine_env(cfg)}}}).remote(engine_spec(cfg), 0, 1)
    lengths = [len(r) for r in responses]
    get(vllm.setup.remote())
    get(vllm.run.remote(prompts, 0, lengths))  # warm-up
    runs = [get(vllm.run.remote(prompts, 1 + r, lengths)) for r in range(repeats)]
    gen, gen_tokens = [x["seconds"] for x in runs], [x["tokens"] for x in runs]
    ray.kill(vllm)
    log(f"limit: vLLM alone {statistics.median(gen):.3f} s ({statistics.median(gen_tokens):.0f} tokens, the step's {sum(lengths)})")

    batch = build_batch(prompts, responses, pad_id=0)
    batch["advantages"] = torch.randn(batch["mask"].shape) * batch["mask"]
    policy = ray.remote(PolicyAlone).options(**opts).remote(cfg)
    get(policy.ready.remote())
    get(policy.step.remote(batch))
    upd = [get(policy.step.remote(batch)) for _ in range(repeats)]
    total = get(policy.weight_bytes.remote())
    ray.kill(policy)
    opt_steps = cfg.ppo.epochs * -(-len(prompts) // cfg.ppo.mini_batch_size)
    log(f"limit: policy update alone {statistics.median(upd):.3f} s ({opt_steps} optimizer steps)")

    # The transport the framework's sync picks: NCCL between pools on GPUs, gloo otherwise.
    pl = cfg.placement
    backend = "nccl" if gpu and pl.rollout.pool != pl.policy.pool else "gloo"
    ends = {**opts, "num_gpus": 1 if backend == "nccl" else 0}
    ranks = [ray.remote(RawBroadcaster).options(**ends).remote(cfg, r, 2) for r in range(2)]
    addr, port = get(ranks[0].endpoint.remote())
    get([b.init.remote(addr, port, backend) for b in ranks])
    chunk = int(cfg.sync.bucket_mb * 2**20)
    bc = get([b.broadcast.remote(total, chunk, repeats + 1) for b in ranks])[0][1:]
    for b in ranks:
        ray.kill(b)
    log(f"limit: bare broadcast of {total / 1e6:.1f} MB {statistics.median(bc):.3f} s")
    return {"generate": statistics.median(gen), "update": statistics.median(upd), "broadcast": statistics.median(bc),
            "weight_MB": total / 1e6, "generate_tokens": statistics.median(gen_tokens), "optimizer_steps": opt_steps,
            "prompt_tokens": sum(len(p) for p in prompts), "step_tokens": sum(lengths),
            "runs": {"generate": gen, "generate_tokens": gen_tokens, "update": upd, "broadcast": bc}}


def step_limits(cfg: Config, work: dict, repeats: int, log=print) -> dict:
    """The limits on the work `bench step` kept of its last step (bench.bench_step keep_last): its prompts and
    responses, and the weights it started from."""
    from rlhf_dist.config import derive
    from rlhf_dist.runtime.scaffold import ray_session

    same = cfg.model_copy(update={"model": cfg.model.model_copy(update={"policy": work["weights"]})})
    with ray_session(cfg, derive(cfg), log):
        out = measure_limits(same, work["prompts"], work["responses"], repeats, log)
    return {**out, "weights": work["weights"], "step": work["step"]}


def limit_summary(rows: list[dict], limits: dict) -> dict:
    """The last step's phases (the work the limits repeated) next to the limits, with both sides' tokens, and the
    step's ratio to the limits' sum; the median step after the first, for scale."""
    last = next(r for r in rows if r["step"] == limits["step"])
    limit = limits["generate"] + limits["update"] + limits["broadcast"]
    step_tokens, limit_tokens = last["tokens"], limits["generate_tokens"]
    table = [
        {"what": "generate", "step_s": last["generate"], "limit_s": limits["generate"], "step_tokens": step_tokens,
         "limit_tokens": limit_tokens, "limit": "vLLM alone, all cores, the step's prompts and response lengths"},
        {"what": "update", "step_s": last["update"], "limit_s": limits["update"], "step_tokens": step_tokens,
         "limit_tokens": limits["step_tokens"],
         "limit": f"policy forward/backward/optimizer alone on the step's tokens, all cores ({limits.get('optimizer_steps', 1)} optimizer steps)"},
        {"what": "sync", "step_s": last["sync"], "limit_s": limits["broadcast"], "limit": "bare broadcast of the weights"},
        {"what": "step", "step_s": last["step_s"], "limit_s": limit, "limit": "sum of the limits"},
    ]
    for r in table:
        r["ratio"] = r["step_s"] / r["limit_s"] if r["limit_s"] > 0 else None
    steady = [r["step_s"] for r in rows[1:]] or [last["step_s"]]
    return {"rows": table, "ratio": last["step_s"] / limit, "step": last["step"], "equal_work": step_tokens == limit_tokens,
            "median_step_s": statistics.median(steady)}
