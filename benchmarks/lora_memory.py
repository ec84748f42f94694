"""A learner rank's memory with and without a LoRA adapter, on CPU: one policy rank (DeepSpeed ZeRO-2, gloo, one
process per case) sets up and trains one step on a fixed batch; the process's peak resident memory and the bytes
of its parameters, gradients and optimizer states are printed as a table and JSON.

    python benchmarks/lora_memory.py MODEL_DIR [--rank 16] [--out results/lora_memory.json]

MODEL_DIR: e.g. `rlhf-dist make-tiny-model .cache/bench-512x8 --hidden-size 512 --layers 8` (34M parameters).
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path


def measure(model: str, rank: int | None) -> dict:
    """Runs in its own process (a fresh peak resident size)."""
    import torch

    from rlhf_dist.algorithms.losses import PolicyLoss
    from rlhf_dist.config import load_config
    from rlhf_dist.data.batch import build_batch
    from rlhf_dist.learner.workers import PolicyWorker
    from rlhf_dist.trainers.rl_roles import learner_spec

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "p.jsonl").write_text('{"prompt": "a"}\n')
        overrides = [f"model.policy={model}", "model.make_tiny=false", f"data.prompts={tmp}/p.jsonl", "placement.policy.num_gpus=1",
                     "placement.policy.zero_stage=2", "placement.critic.num_gpus=1", "ppo.rollout_batch_size=4", "rollout.n_samples_per_prompt=4",
                     "ppo.mini_batch_size=16", "ppo.micro_batch_size=16"]
        if rank:
            overrides.append(f"model.lora={{rank: {rank}, alpha: {2 * rank}}}")
        cfg = load_config("configs/demo_cpu.yaml", overrides)
        worker = PolicyWorker(learner_spec(cfg, "policy"), 0, 1)
        info = worker.setup(*worker.master_endpoint())
        g = torch.Generator().manual_seed(0)
        prompts = [torch.randint(3, 500, (32,), generator=g).tolist() for _ in range(16)]
        responses = [torch.randint(3, 500, (64,), generator=g).tolist() for _ in range(16)]
        batch = build_batch(prompts, responses, pad_id=2)
        batch["old_logprobs"] = worker.infer(batch)["logprobs"]
        batch["advantages"] = torch.randn(batch["mask"].shape, generator=g)
        worker.train(batch, PolicyLoss(name="ppo", clip_eps=0.2, aggregation="token_mean"), seed=0)
        opt = worker.engine.optimizer
        states = [t for s in getattr(opt, "optimizer", opt).state.values() for t in s.values() if torch.is_tensor(t)]
        module = worker.engine.module
        # ZeRO-2 keeps fp32 gradient partitions of what trains, not .grad on the parameters.
        trainable_bytes = sum(p.numel() * 4 for p in module.parameters() if p.requires_grad)
    return {"case": f"LoRA rank {rank}" if rank else "full fine-tuning", "params": info["params"], "trainable": info["trainable"],
            "param_MiB": sum(p.numel() * p.element_size() for p in module.parameters()) / 2**20,
            "grad_MiB": trainable_bytes / 2**20, "optimizer_MiB": sum(t.numel() * t.element_size() for t in states) / 2**20,
            "peak_rss_MiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--out")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: measure one case in this process
    args = ap.parse_args()
    if args.one is not None:
        print("RESULT " + json.dumps(measure(args.model, args.one or None)))
        return 0
    rows = []
    for rank in (0, args.rank):  # each case in a fresh process: peak memory is per process
        out = subprocess.run([sys.executable, __file__, args.model, "--one", str(rank)], capture_output=True, text=True, check=True)
        rows.append(json.loads(next(line for line in out.stdout.splitlines() if line.startswith("RESULT "))[7:]))
    cols = ["case", "params", "trainable", "param_MiB", "grad_MiB", "optimizer_MiB", "peak_rss_MiB"]
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(f"{r[c]:.1f}" if isinstance(r[c], float) else str(r[c]) for c in cols))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
