"""rlhf-dist: command-line entry point."""
from __future__ import annotations

import argparse
import sys

from rlhf_dist.console import echo, quiet


def checked(cfg):
    """The validation layer every command's config passes (rlhf_dist.config.validation.check_config)."""
    from rlhf_dist.config.validation import check_config

    check_config(cfg)
    return cfg


def _train(args) -> int:
    from rlhf_dist.config import load_config
    from rlhf_dist.trainers.ppo import train

    cfg = checked(load_config(args.config, args.overrides))
    run_dir = train(cfg, log=echo)
    from rlhf_dist.commands.report import write_report

    png, _ = write_report([run_dir])
    echo(f"done: metrics in {run_dir / 'metrics.jsonl'}, report in {png}")
    return 0


def _eval(args) -> int:
    from rlhf_dist.config import load_config
    from rlhf_dist.commands.evaluate import evaluate_saved_policy

    run_dir = evaluate_saved_policy(checked(load_config(args.config, args.overrides)), log=echo)
    echo(f"done: eval metrics in {run_dir / 'eval.json'}, responses in {run_dir / 'eval_samples.jsonl'}")
    return 0


def _report(args) -> int:
    from rlhf_dist.commands.report import write_report

    png, md = write_report(args.run_dirs, args.out, args.force, log=lambda m: print(m, file=sys.stderr))
    print(f"report written to {png} and {md}")
    return 0


def _stage(args) -> int:
    from rlhf_dist.config.stages import load_stage_config

    cfg = checked(load_stage_config(args.command, args.config, args.overrides))
    if args.command == "label":
        from rlhf_dist.trainers.label import run_label

        run_dir = run_label(cfg, log=echo)
        echo(f"done: preference pairs in {run_dir / 'preferences.jsonl'}")
        return 0
    from rlhf_dist.trainers.stages import run_stage

    run_dir = run_stage(args.command, cfg, log=echo)
    echo(f"done: model in {run_dir / 'final'}, metrics in {run_dir / 'metrics.jsonl'}")
    return 0


def _pipeline(args) -> int:
    from rlhf_dist.trainers.pipeline import run_pipeline

    run_pipeline(args.config_dir, args.overrides, log=echo)
    return 0


def _collect(args) -> int:
    log = (lambda m: print(m, flush=True)) if args.verb in ("serve", "export") else echo
    return args.collect(args, log)


def _plan(args) -> int:
    from rlhf_dist.config import load_config
    from rlhf_dist.commands.plan import format_plan, plan, plan_json

    result = plan(load_config(args.config, args.overrides))
    print(plan_json(result) if args.json else format_plan(result))
    if not result["fits"]:
        bad = [name for name, p in result["pools"].items() if not p["fits"]]
        print(f"rlhf-dist plan: pool(s) {', '.join(bad)} do not fit (see above)", file=sys.stderr)
        return 1
    for w in result["warnings"]:
        print(f"rlhf-dist plan: warning: {w}", file=sys.stderr)
    return 0


def _bench(args) -> int:
    from rlhf_dist.commands import bench
    from rlhf_dist.config import load_config

    from rlhf_dist.config import ConfigError
    from rlhf_dist.outputs import check_new_file

    if args.out is not None:  # before anything runs: a user's file is never replaced unless forced
        check_new_file(args.out, "bench --out", args.force)
    if args.what == "collect":
        from rlhf_dist.commands import collect

        result = collect.bench(args)
        print(bench.table(result["rows"], ["repeat", "annotators", "votes", "seconds", "votes_per_s", "p50_ms", "p99_ms", "lost",
                                           "duplicated", "unacknowledged", "shared_items"]))
        result["summary"] = bench.medians(result["rows"], "votes_per_s", ("annotators",))
        print(f"written to {bench.write(args.out, 'collect', result)}")
        if not result["ok"]:
            print("rlhf-dist bench collect: votes lost, duplicated or refused (see the table and 'errors' in the JSON)", file=sys.stderr)
            return 1
        return 0
    if args.config is None:
        raise ConfigError(f"bench {args.what}: needs CONFIG, a PPO config file")
    buckets = bucket_sizes(args.bucket_mb)
    overrides = list(args.overrides)
    if args.what == "step":
        overrides += [f"run.steps={args.steps}", "run.save_final=false", "run.progress_bar=false",
                      f"run.output_dir={args.run_dir}"]
    cfg = checked(load_config(args.config, overrides))
    if args.what == "rollout" and cfg.env is None and args.prompt_len > cfg.data.max_prompt_tokens:
        # The engines' context is sized from the config (max_prompt_tokens + max_new_tokens): vLLM refused
        # longer prompts only once the actors were up.
        raise ConfigError(f"bench --prompt-len: {args.prompt_len} is more than data.max_prompt_tokens={cfg.data.max_prompt_tokens}, "
                          "which sizes the engines' context; raise it with data.max_prompt_tokens=N")
    if args.what == "rollout" and cfg.env is not None:  # an agent config: multi-turn rows (bench_agents.py)
        from rlhf_dist.commands.bench_agents import bench_agent_rollout

        result = bench_agent_rollout(cfg, args.prompts, args.repeats, args.tool_latency_s)
        columns = ["path", "repeat", "episodes", "tokens", "seconds", "tokens_per_s", "engine_s", "turns_mean", "env_s"]
    elif args.what == "rollout":
        result = bench.bench_rollout(cfg, args.prompts, args.prompt_len, args.repeats)
        columns = ["path", "engines", "repeat", "prompts", "tokens", "seconds", "tokens_per_s", "requests_per_s", "tokens_per_s_per_engine"]
    elif args.what == "learner":
        from rlhf_dist.commands.bench_learner import COLUMNS, bench_learner

        result = bench_learner(cfg, args.repeats)
        columns = COLUMNS
    elif args.what == "sync":
        result = bench.bench_sync(cfg, buckets, args.repeats)
        columns = ["path", "bucket_mb", "buckets", "repeat", "MB", "seconds", "GB_per_s", "gather_pack_s", "broadcast_s", "engine_load_s"]
    else:
        result = bench.bench_step(cfg, keep_last=args.limit_repeats > 0)
        if args.limit_repeats:  # the limits for the last step's work, measured in the same command
            from rlhf_dist.commands.bench_limits import limit_summary, step_limits

            result["limits"] = step_limits(cfg, result.pop("work"), args.limit_repeats)
            result["limit_summary"] = limit_summary(result["rows"], result["limits"])
        columns = ["step", "generate", "score", "infer", "update", "sync", "other", "step_s", "tokens", "outside_compute",
                   "staleness", "train", "overlap_eff", "ideal_eff", "of_ideal"]
    print(bench.table(result["rows"], columns))
    summary_key = {"rollout": ("tokens_per_s", ("path",)), "sync": ("GB_per_s", ("path", "bucket_mb")),
                   "step": ("step_s", ()), "learner": ("tokens_per_s", ("pass", "way"))}[args.what]
    result["summary"] = bench.medians(result["rows"], *summary_key)
    print("\n" + bench.table(result["summary"], list(result["summary"][0])))
    if "overlap" in result:
        o = result["overlap"]
        print(f"overlap (median, steps 2+): (generate + train) / step = {o['overlap_eff']:.2f}, ideal "
              f"{o['ideal_eff']:.2f} (= (generate + train) / max), {100 * o['of_ideal']:.0f}% of ideal")
    if "limit_summary" in result:
        lim = result["limit_summary"]
        print("\n" + bench.table(lim["rows"], ["what", "step_s", "limit_s", "ratio", "step_tokens", "limit_tokens", "limit"]))
        print(f"step {lim['step']} / limit on the same work: {lim['ratio']:.2f}x ("
              + ("equal tokens" if lim["equal_work"] else "TOKENS DIFFER: the ratio does not compare equal work")
              + f"; median step after the first {lim['median_step_s']:.3f} s)")
    if "speedup" in result:
        print("\n" + bench.table(result["speedup"], ["pass", "way", "median_tokens_per_s", "padding_fraction", "vs_padded"]))
    if "lora" in result:
        lo = result["lora"]
        print(f"LoRA: adapter {lo['adapter']['MB']:.3f} MB in {lo['adapter']['seconds']:.4f} s per sync, full (merged) weights "
              f"{lo['merged']['MB']:.3f} MB in {lo['merged']['seconds']:.4f} s: {lo['bytes_ratio']:.0f}x the bytes, "
              f"{lo['seconds_ratio']:.1f}x the time (medians)")
    if "verification" in result:
        c = result["verification"]
        print(f"verification: median sync {c['median_verified_s']:.4f} s verified, {c['median_unverified_s']:.4f} s not "
              f"({100 * c['share_of_sync']:.1f}% of a verified sync)")
    print(f"written to {bench.write(args.out, args.what, {'config': args.config, 'overrides': args.overrides, **result})}")
    return 0


def _export(args) -> int:
    from rlhf_dist.commands.export import export

    out = export(args.checkpoint, args.out_dir, role=args.role, force=args.force, lora=args.lora)
    print(f"{args.role} from {args.checkpoint} written to {out} ({'a peft adapter' if args.lora == 'adapter' else 'HuggingFace format'})")
    return 0


def _make_tiny(args) -> int:
    from rlhf_dist.data.tiny import make_tiny_model

    out = make_tiny_model(args.out_dir, hidden_size=args.hidden_size, num_layers=args.layers, seed=args.seed, force=args.force,
                          arch=args.arch, init_std=args.init_std)
    print(f"tiny model and tokenizer written to {out}")
    return 0


def at_least(low: int):
    """An argparse type: an integer >= low (the config's own bounds for what the flag feeds)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} must be at least {low}")
        return value

    return parse


def seconds_arg(text: str) -> float:
    """An argparse type: a finite number of seconds, 0 to 600."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number: {text!r}") from None
    if not 0 <= value <= 600:  # NaN fails both comparisons
        raise argparse.ArgumentTypeError(f"{text} must be a number of seconds from 0 to 600")
    return value


def bucket_sizes(text: str) -> list[float]:
    """--bucket-mb: comma-separated sizes in MiB, each finite and above 0."""
    import math

    from rlhf_dist.config import ConfigError

    try:
        sizes = [float(x) for x in text.split(",")]
    except ValueError:
        raise ConfigError(f"bench --bucket-mb: {text!r} is not a comma-separated list of numbers") from None
    if not sizes or any(not math.isfinite(x) or x <= 0 for x in sizes):
        raise ConfigError(f"bench --bucket-mb: {text!r}: every size must be a finite number above 0")
    return sizes


class Parser(argparse.ArgumentParser):
    """Argument errors in one line (no usage dump), exit code 2 like every other bad input."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="rlhf-dist", description="Distributed RLHF on Ray.")
    sub = parser.add_subparsers(dest="command", required=True)

    # Commands that start a job keep library output (vLLM, Ray, DeepSpeed, warnings) in train.log.
    job = argparse.ArgumentParser(add_help=False)
    job.add_argument("--verbose", action="store_true", help="show library output on the console too")
    job.set_defaults(job=True)

    # Commands that take a YAML config plus dotted overrides: (name, help, overrides example, handler).
    for name, text, example, fn in (
        ("train", "run PPO from a YAML config", "run.steps=5", _train),
        ("eval", "run a config's eval section once on model.policy (a saved or exported policy)", "model.policy=runs/x/final", _eval),
        ("sft", "supervised fine-tuning on demonstrations (loss on response tokens only)", "train.epochs=1", _stage),
        ("rm", "train a reward model on preference pairs (Bradley-Terry)", "train.epochs=1", _stage),
        ("dpo", "direct preference optimisation (sigmoid or IPO loss) against a frozen reference", "train.epochs=1", _stage),
        ("label", "AI feedback: sample responses, rank them with a judge, write preference JSONL", "run.name=x", _stage),
    ):
        p = sub.add_parser(name, help=text, parents=[job])
        p.add_argument("config", help="YAML config file")
        p.add_argument("overrides", nargs="*", help=f"dotted.key=value overrides, e.g. {example}")
        p.set_defaults(fn=fn)

    p = sub.add_parser("pipeline", help="SFT -> reward model -> PPO, each stage reading the previous one's output", parents=[job])
    p.add_argument("config_dir", help="a directory holding sft.yaml, rm.yaml and ppo.yaml")
    p.add_argument("overrides", nargs="*", help="STAGE:dotted.key=value, e.g. ppo:run.steps=10")
    p.set_defaults(fn=_pipeline)

    p = sub.add_parser("plan", help="check GPU arithmetic and estimate per-GPU memory for each role (starts nothing)")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--json", action="store_true", help="print the numbers as JSON")
    p.set_defaults(fn=_plan)

    p = sub.add_parser("bench", help="benchmarks: rollout throughput, weight-sync bandwidth, step phase breakdown, "
                       "learner tokens/s padded against packed, the labelling app under load")
    p.add_argument("what", choices=["rollout", "sync", "step", "learner", "collect"])
    p.add_argument("config", nargs="?", help="the PPO config (every benchmark but collect)")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--out", help="JSON output path (default benchmarks/results/WHAT.json)")
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    p.add_argument("--prompts", type=at_least(1), default=64, help="rollout: number of prompts")
    p.add_argument("--prompt-len", type=at_least(1), default=16, help="rollout: prompt tokens (agent configs use data.prompts)")
    p.add_argument("--tool-latency-s", type=seconds_arg, default=0.1,
                   help="rollout on an agent config: the mean time each environment step takes (0.5x to 2x over the episodes)")
    p.add_argument("--repeats", type=at_least(1), default=3, help="rollout, sync, learner: timed repeats")
    p.add_argument("--bucket-mb", default="0.25,1,16", help="sync: comma-separated bucket sizes in MiB")
    p.add_argument("--steps", type=at_least(1), default=5, help="step: steps to run")
    p.add_argument("--run-dir", default="runs/bench-step", help="step: where the run writes")
    p.add_argument("--limit-repeats", type=at_least(0), default=3, help="step: timed repeats of each limit (0: none)")
    p.add_argument("--annotators", type=at_least(1), default=20, help="collect: scripted annotators voting at once")
    p.add_argument("--votes", type=at_least(1), default=400, help="collect: votes cast in each repeat, across annotators")
    p.set_defaults(fn=_bench)

    from rlhf_dist.commands.collect import add_parsers

    add_parsers(sub, job, at_least)
    sub.choices["collect"].set_defaults(fn=_collect)

    p = sub.add_parser("export", help="write a checkpoint's policy (or critic) as a HuggingFace model directory")
    p.add_argument("checkpoint", help="a checkpoint directory, e.g. runs/demo/checkpoints/step_00000010")
    p.add_argument("out_dir")
    p.add_argument("--role", choices=["policy", "critic"], default="policy")
    p.add_argument("--lora", choices=["merged", "adapter"], default="merged",
                   help="a run with model.lora: the base with the adapter merged in, or the adapter alone (peft format)")
    p.add_argument("--force", action="store_true", help="replace OUT_DIR if it exists and is not empty")
    p.set_defaults(fn=_export)

    p = sub.add_parser("report", help="a PNG of runs' curves (overlaid) and a markdown summary, from metrics.jsonl")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", help="figure path, .png, .svg or .pdf (default RUN_DIR/report.png of the first run; the .md goes beside it)")
    p.add_argument("--force", action="store_true", help="replace an existing --out and the .md beside it")
    p.set_defaults(fn=_report)

    p = sub.add_parser("make-tiny-model", help="write a tiny random Llama- or Qwen2-style model and tokenizer (no downloads)")
    p.add_argument("out_dir")
    p.add_argument("--hidden-size", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="replace OUT_DIR if it exists and is not empty")
    p.add_argument("--arch", choices=["llama", "qwen2"], default="llama")
    p.add_argument("--init-std", type=float, default=0.02,
                   help="initial weight std (0.02: nearly uniform outputs; LoRA demos use 0.2, see docs/lora.md)")
    p.set_defaults(fn=_make_tiny)

    args = parser.parse_args(argv)
    from rlhf_dist.config import ConfigError
    from rlhf_dist.console import forget_run_log, log_failure
    from rlhf_dist.errors import RLHFError

    forget_run_log()
    try:
        with quiet(getattr(args, "job", False) and not args.verbose):
            return args.fn(args)
    except ConfigError as e:
        print(f"rlhf-dist: {e}", file=sys.stderr)
        return 2
    except RLHFError as e:
        note = log_failure(e, getattr(args, "verbose", False))
        print(f"rlhf-dist: {type(e).__name__}: {e}{note}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("rlhf-dist: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
