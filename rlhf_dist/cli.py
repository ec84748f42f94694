"""rlhf-dist: command-line entry point."""
from __future__ import annotations

import argparse
import sys


def _train(args) -> int:
    from rlhf_dist.config import load_config
    from rlhf_dist.trainers.ppo import train

    cfg = load_config(args.config, args.overrides)
    run_dir = train(cfg)
    print(f"done: metrics in {run_dir / 'metrics.jsonl'}")
    return 0


def _stage(args) -> int:
    from rlhf_dist.stage_config import load_stage_config

    cfg = load_stage_config(args.command, args.config, args.overrides)
    if args.command == "label":
        from rlhf_dist.trainers.label import run_label

        run_dir = run_label(cfg)
        print(f"done: preference pairs in {run_dir / 'preferences.jsonl'}")
        return 0
    from rlhf_dist.trainers.stages import run_stage

    run_dir = run_stage(args.command, cfg)
    print(f"done: model in {run_dir / 'final'}, metrics in {run_dir / 'metrics.jsonl'}")
    return 0


def _pipeline(args) -> int:
    from rlhf_dist.trainers.pipeline import run_pipeline

    run_pipeline(args.config_dir, args.overrides)
    return 0


def _plan(args) -> int:
    from rlhf_dist.config import load_config
    from rlhf_dist.plan import format_plan, plan, plan_json

    result = plan(load_config(args.config, args.overrides))
    print(plan_json(result) if args.json else format_plan(result))
    if not result["fits"]:
        bad = [name for name, p in result["pools"].items() if not p["fits"]]
        print(f"rlhf-dist plan: pool(s) {', '.join(bad)} do not fit cluster.gpu_memory_gb", file=sys.stderr)
        return 1
    return 0


def _bench(args) -> int:
    from rlhf_dist import bench
    from rlhf_dist.config import load_config

    overrides = list(args.overrides)
    if args.what == "step":
        overrides += [f"run.steps={args.steps}", "run.save_final=false", "run.progress_bar=false",
                      f"run.output_dir={args.run_dir}"]
    cfg = load_config(args.config, overrides)
    if args.what == "rollout":
        result = bench.bench_rollout(cfg, args.prompts, args.prompt_len, args.repeats)
        columns = ["path", "engines", "repeat", "prompts", "tokens", "seconds", "tokens_per_s", "requests_per_s", "tokens_per_s_per_engine"]
    elif args.what == "sync":
        result = bench.bench_sync(cfg, [float(x) for x in args.bucket_mb.split(",")], args.repeats)
        columns = ["path", "bucket_mb", "buckets", "repeat", "MB", "seconds", "GB_per_s", "gather_pack_s", "broadcast_s", "engine_load_s"]
    else:
        result = bench.bench_step(cfg)
        if args.limit_repeats:  # the limits for the same batch, measured in the same command
            from rlhf_dist.bench_limits import limit_summary, step_limits

            result["limits"] = step_limits(cfg, args.limit_repeats)
            result["limit_summary"] = limit_summary(result["rows"], result["limits"])
        columns = ["step", "generate", "score", "infer", "update", "sync", "other", "step_s", "outside_compute"]
    print(bench.table(result["rows"], columns))
    summary_key = {"rollout": ("tokens_per_s", ("path",)), "sync": ("GB_per_s", ("path", "bucket_mb")),
                   "step": ("step_s", ())}[args.what]
    result["summary"] = bench.medians(result["rows"], *summary_key)
    print("\n" + bench.table(result["summary"], list(result["summary"][0])))
    if "limit_summary" in result:
        lim = result["limit_summary"]
        print("\n" + bench.table(lim["rows"], ["what", "step_median_s", "limit_s", "ratio", "limit"]))
        print(f"step / limit: {lim['ratio']:.2f}x (median of {lim['steps_in_median']} steps after the first)")
    if "verification" in result:
        c = result["verification"]
        print(f"verification: median sync {c['median_verified_s']:.4f} s verified, {c['median_unverified_s']:.4f} s not "
              f"({100 * c['share_of_sync']:.1f}% of a verified sync)")
    print(f"written to {bench.write(args.out, args.what, {'config': args.config, 'overrides': args.overrides, **result})}")
    return 0


def _export(args) -> int:
    from rlhf_dist.export import export

    out = export(args.checkpoint, args.out_dir, role=args.role)
    print(f"{args.role} from {args.checkpoint} written to {out} (HuggingFace format)")
    return 0


def _make_tiny(args) -> int:
    from rlhf_dist.data.tiny import make_tiny_model

    out = make_tiny_model(args.out_dir, hidden_size=args.hidden_size, num_layers=args.layers, seed=args.seed, arch=args.arch)
    print(f"tiny model and tokenizer written to {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rlhf-dist", description="Distributed RLHF on Ray.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="run PPO from a YAML config")
    p.add_argument("config", help="YAML config file")
    p.add_argument("overrides", nargs="*", help="dotted.key=value overrides, e.g. run.steps=5")
    p.set_defaults(fn=_train)

    for name, text in (
        ("sft", "supervised fine-tuning on demonstrations (loss on response tokens only)"),
        ("rm", "train a reward model on preference pairs (Bradley-Terry)"),
        ("dpo", "direct preference optimisation (sigmoid or IPO loss) against a frozen reference"),
        ("label", "AI feedback: sample responses, rank them with a judge, write preference JSONL"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("config", help="YAML config file")
        p.add_argument("overrides", nargs="*", help="dotted.key=value overrides, e.g. train.epochs=1")
        p.set_defaults(fn=_stage)

    p = sub.add_parser("pipeline", help="SFT -> reward model -> PPO, each stage reading the previous one's output")
    p.add_argument("config_dir", help="a directory holding sft.yaml, rm.yaml and ppo.yaml")
    p.add_argument("overrides", nargs="*", help="STAGE:dotted.key=value, e.g. ppo:run.steps=10")
    p.set_defaults(fn=_pipeline)

    p = sub.add_parser("plan", help="check GPU arithmetic and estimate per-GPU memory for each role (starts nothing)")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--json", action="store_true", help="print the numbers as JSON")
    p.set_defaults(fn=_plan)

    p = sub.add_parser("bench", help="benchmarks: rollout throughput, weight-sync bandwidth, step phase breakdown")
    p.add_argument("what", choices=["rollout", "sync", "step"])
    p.add_argument("config")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--out", help="JSON output path (default benchmarks/results/WHAT.json)")
    p.add_argument("--prompts", type=int, default=64, help="rollout: number of prompts")
    p.add_argument("--prompt-len", type=int, default=16, help="rollout: prompt tokens")
    p.add_argument("--repeats", type=int, default=3, help="rollout, sync: timed repeats")
    p.add_argument("--bucket-mb", default="0.25,1,16", help="sync: comma-separated bucket sizes in MiB")
    p.add_argument("--steps", type=int, default=5, help="step: steps to run")
    p.add_argument("--run-dir", default="runs/bench-step", help="step: where the run writes")
    p.add_argument("--limit-repeats", type=int, default=3, help="step: timed repeats of each limit (0: none)")
    p.set_defaults(fn=_bench)

    p = sub.add_parser("export", help="write a checkpoint's policy (or critic) as a HuggingFace model directory")
    p.add_argument("checkpoint", help="a checkpoint directory, e.g. runs/demo/checkpoints/step_00000010")
    p.add_argument("out_dir")
    p.add_argument("--role", choices=["policy", "critic"], default="policy")
    p.set_defaults(fn=_export)

    p = sub.add_parser("make-tiny-model", help="write a tiny random Llama- or Qwen2-style model and tokenizer (no downloads)")
    p.add_argument("out_dir")
    p.add_argument("--hidden-size", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--arch", choices=["llama", "qwen2"], default="llama")
    p.set_defaults(fn=_make_tiny)

    args = parser.parse_args(argv)
    from rlhf_dist.config import ConfigError
    from rlhf_dist.errors import RLHFError

    try:
        return args.fn(args)
    except ConfigError as e:
        print(f"rlhf-dist: {e}", file=sys.stderr)
        return 2
    except RLHFError as e:
        print(f"rlhf-dist: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("rlhf-dist: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
