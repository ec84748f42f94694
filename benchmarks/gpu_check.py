"""GPU checks of the paths CPU tests cannot reach. Run on a CUDA machine with the stack installed:

    python benchmarks/gpu_check.py learner   [--model configs/models/qwen2.5-0.5b] [--batch 16] [--seq 1024]
    python benchmarks/gpu_check.py ipc       [--model ...] [--bucket-mb 256]
    python benchmarks/gpu_check.py attention [--model ...] [--batch 8] [--seq 512]

`learner`: the project's PolicyWorker under DeepSpeed ZeRO (stage 3 by default) in bf16 (one rank), PPO updates of random
tokens: training tokens/s and MFU. `ipc`: a model's weights handed from one process to another on the same
GPU through CUDA IPC buckets (benchmarks/ipc_buckets.py), against a plain device-to-device copy. `attention`: the
learner's log-probs with sdpa and with eager attention in bf16, each against an fp32 eager reference.
Each prints a table and writes JSON to --out (default benchmarks/results/gpu_WHAT.json). Models are built
from architecture-only configs with random weights: nothing is downloaded.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense bf16 FLOP/s, SXM parts


def peak_flops() -> tuple[float, str]:
    name = torch.cuda.get_device_name()
    for key, value in PEAK_BF16.items():
        if key in name:
            return value, name
    return float("nan"), name


def random_model_dir(config_dir: str, dtype: torch.dtype, out: Path) -> Path:
    """An HF model directory with random weights for an architecture-only config.json."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if (out / "config.json").is_file():
        return out
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(config_dir), dtype=dtype)
    model.save_pretrained(str(out), safe_serialization=True)
    return out


def random_batch(vocab: int, batch: int, seq: int, prompt: int, seed: int = 0) -> dict[str, torch.Tensor]:
    from rlhf_dist.data.batch import build_batch

    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(10, vocab, (prompt - (i % 7),), generator=g).tolist() for i in range(batch)]
    responses = [torch.randint(10, vocab, (seq - prompt - (i % 5),), generator=g).tolist() for i in range(batch)]
    return build_batch(prompts, responses, pad_id=0)


def cuda_time(fn, repeats: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        out.append(time.perf_counter() - t0)
    return out


def check_learner(args) -> dict:
    from rlhf_dist.algorithms.losses import PolicyLoss
    from rlhf_dist.config import load_config
    from rlhf_dist.dist import free_port
    from rlhf_dist.learner.workers import PolicyWorker

    model_dir = random_model_dir(args.model, torch.bfloat16, Path(args.work) / "model")
    cfg = load_config(None, base={
        "model": {"policy": str(model_dir), "dtype": "bfloat16", "attn_implementation": "sdpa",
                  "gradient_checkpointing": args.gradient_checkpointing},
        "data": {"prompts": "unused.jsonl", "max_prompt_tokens": args.seq},
        "rollout": {"max_new_tokens": args.seq},
        "reward": {"functions": [{"name": "rlhf_dist.rewards.rules:char_fraction"}]},
        "ppo": {"rollout_batch_size": args.batch, "mini_batch_size": args.batch, "micro_batch_size": args.micro, "epochs": 1},
        "placement": {"pools": {"g": {"gpus_per_node": 1}}, "policy": {"pool": "g", "num_gpus": 1, "zero_stage": args.zero_stage},
                      "critic": {"pool": "g"}, "reference": {"pool": "g"}, "rollout": {"pool": "g"}},
        "cluster": {"device": "cuda"},
    })
    worker = PolicyWorker(cfg, rank=0, world_size=1)
    t0 = time.perf_counter()
    info = worker.setup("127.0.0.1", free_port())
    setup_s = time.perf_counter() - t0
    batch = random_batch(worker.engine.module.config.vocab_size, args.batch, args.seq, args.seq // 4)
    R = batch["mask"].shape[1]
    batch["old_logprobs"] = torch.full((args.batch, R), -10.0)
    batch["advantages"] = torch.randn(args.batch, R)
    loss = PolicyLoss()
    tokens = int(batch["attention_mask"].sum())
    torch.cuda.reset_peak_memory_stats()
    times = cuda_time(lambda: worker.train(batch, loss, seed=0), args.repeats, warmup=2)
    med = statistics.median(times)
    params = info["params"]
    peak, name = peak_flops()
    tps = tokens / med
    return {
        "device": name, "model": args.model, "params": params, "zero_stage": args.zero_stage, "dtype": "bfloat16", "attention": "sdpa",
        "gradient_checkpointing": args.gradient_checkpointing, "batch": args.batch, "micro_batch": args.micro,
        "seq": args.seq, "tokens_per_step": tokens, "setup_s": setup_s, "step_s_median": med, "step_s_all": times,
        "tokens_per_s": tps, "model_tflops_per_s": 6 * params * tps / 1e12,
        "mfu": 6 * params * tps / peak, "peak_flops": peak,
        "peak_memory_gb": torch.cuda.max_memory_allocated() / 2**30,
    }


def _ipc_receiver(conn) -> None:
    try:
        _ipc_receive_loop(conn)
    except BaseException as e:  # noqa: BLE001 - the sender must hear of it instead of waiting
        import traceback

        conn.send({"error": f"{type(e).__name__}: {e}\n{traceback.format_exc()}"})


def _ipc_receive_loop(conn) -> None:
    import torch

    from benchmarks.ipc_buckets import open_bucket

    torch.cuda.init()
    conn.send({"ready": True})
    own: dict[str, torch.Tensor] = {}
    while True:
        msg = conn.recv()
        if msg is None:
            break
        buckets, handles, sums, verify = msg
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for bucket, handle, s in zip(buckets, handles, sums):
            for name, view in open_bucket(bucket, handle, s if verify else None):
                if name not in own:
                    own[name] = torch.empty_like(view)
                own[name].copy_(view)  # the engine's load: into its own parameters
        torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        from rlhf_dist.sync.buckets import checksum

        conn.send({"seconds": seconds, "checksum": sum(checksum(v) for v in own.values()) if verify else None})


def check_ipc(args) -> dict:
    import multiprocessing as mp

    from transformers import AutoConfig, AutoModelForCausalLM

    from rlhf_dist.sync.buckets import checksum, plan_buckets
    from benchmarks.ipc_buckets import share_bucket

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(args.model), dtype=torch.bfloat16).cuda()
    params = dict(model.named_parameters())
    buckets = plan_buckets([(n, tuple(p.shape), p.dtype) for n, p in params.items()], int(args.bucket_mb * 2**20))
    nbytes = sum(b.nbytes for b in buckets)
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_ipc_receiver, args=(child,), daemon=True)
    proc.start()

    def answer(what: str, timeout_s: float = 120) -> dict:
        # Never wait forever on the other process: a dead or stuck receiver is an error naming the step.
        if not parent.poll(timeout_s):
            raise TimeoutError(f"ipc receiver gave no answer within {timeout_s:.0f} s ({what}); alive: {proc.is_alive()}")
        msg = parent.recv()
        if "error" in msg:
            raise RuntimeError(f"ipc receiver failed ({what}): {msg['error']}")
        return msg

    answer("start-up")
    rows = []
    for repeat in range(args.repeats + 1):
        for verify in (False, True):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            shared = [share_bucket(b, [params[n].data for n in b.names], torch.device("cuda")) for b in buckets]
            torch.cuda.synchronize()
            pack_s = time.perf_counter() - t0
            parent.send((buckets, [h for _, h, _ in shared], [s for _, _, s in shared], verify))
            got = answer(f"round {repeat}, verify={verify}")
            total = time.perf_counter() - t0
            if verify:
                want = sum(checksum(params[n].data) for b in buckets for n in b.names)
                assert got["checksum"] == want, "receiver's weights differ from the sender's"
            del shared
            if repeat:  # the first round warms up both processes
                rows.append({"verify": verify, "pack_share_s": pack_s, "receive_s": got["seconds"], "total_s": total,
                             "GB_per_s": nbytes / total / 1e9})
    parent.send(None)
    proc.join(timeout=60)
    flat = torch.empty(nbytes // 2, dtype=torch.bfloat16, device="cuda")
    dst = torch.empty_like(flat)
    copy = cuda_time(lambda: dst.copy_(flat), args.repeats, warmup=2)
    med = lambda key, v: statistics.median(r[key] for r in rows if r["verify"] == v)  # noqa: E731
    return {
        "device": torch.cuda.get_device_name(), "model": args.model, "bytes": nbytes, "buckets": len(buckets),
        "bucket_mb": args.bucket_mb, "rows": rows,
        "ipc_GB_per_s_median": med("GB_per_s", False), "ipc_verified_GB_per_s_median": med("GB_per_s", True),
        "d2d_copy_GB_per_s_median": nbytes / statistics.median(copy) / 1e9,
    }


def check_attention(args) -> dict:
    from transformers import AutoConfig, AutoModelForCausalLM

    from rlhf_dist.learner.models import response_logits, token_logprobs

    model_dir = random_model_dir(args.model, torch.float32, Path(args.work) / "model_fp32")
    vocab = AutoConfig.from_pretrained(model_dir).vocab_size
    batch = {k: v.cuda() for k, v in random_batch(vocab, args.batch, args.seq, args.seq // 4).items()}
    tokens = batch["input_ids"][:, -batch["mask"].shape[1] :]
    mask = batch["mask"].bool()

    def logprobs(model):
        return token_logprobs(response_logits(model, batch), tokens, 1.0)

    ref_model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager").cuda().eval()
    with torch.no_grad():
        ref = logprobs(ref_model)[mask].double()
    del ref_model
    out = {"device": torch.cuda.get_device_name(), "model": args.model, "batch": args.batch, "seq": args.seq, "rows": []}
    for impl in ("sdpa", "eager"):
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16, attn_implementation=impl).cuda()
        with torch.no_grad():
            got = logprobs(model.eval())[mask].double()
        model.train()

        def step():
            model.zero_grad(set_to_none=True)
            (-logprobs(model)[mask].mean()).backward()

        torch.cuda.reset_peak_memory_stats()
        times = cuda_time(step, args.repeats, warmup=2)
        out["rows"].append({
            "attention": impl, "dtype": "bfloat16",
            "rel_err_vs_fp32_eager": float((got - ref).norm() / ref.norm()),
            "max_abs_err": float((got - ref).abs().max()),
            "fwd_bwd_s_median": statistics.median(times),
            "peak_memory_gb": torch.cuda.max_memory_allocated() / 2**30,
        })
        del model
        torch.cuda.empty_cache()
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["learner", "ipc", "attention"])
    p.add_argument("--model", default="configs/models/qwen2.5-0.5b", help="directory with an architecture-only config.json")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--micro", type=int, default=4)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--bucket-mb", type=float, default=256)
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--zero-stage", type=int, default=3, choices=[0, 1, 2, 3], help="learner: DeepSpeed ZeRO stage")
    p.add_argument("--work", default=os.environ.get("GPU_CHECK_WORK", "/tmp/rlhf_dist_gpu_check"))
    p.add_argument("--out", default=None)
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device", file=sys.stderr)
        return 2
    Path(args.work).mkdir(parents=True, exist_ok=True)
    result = {"learner": check_learner, "ipc": check_ipc, "attention": check_attention}[args.what](args)
    result.update({"torch": torch.__version__, "transformers": __import__("transformers").__version__})
    out = Path(args.out or f"benchmarks/results/gpu_{args.what}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    shown = {k: v for k, v in result.items() if not isinstance(v, (list, dict))}
    for row in result.get("rows", []):
        print("  " + "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    width = max(len(k) for k in shown)
    print("\n".join(f"{k:<{width}}  {v:.4g}" if isinstance(v, float) else f"{k:<{width}}  {v}" for k, v in shown.items()))
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
