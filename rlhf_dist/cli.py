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


def _export(args) -> int:
    from rlhf_dist.export import export

    out = export(args.checkpoint, args.out_dir, role=args.role)
    print(f"{args.role} from {args.checkpoint} written to {out} (HuggingFace format)")
    return 0


def _make_tiny(args) -> int:
    from rlhf_dist.data.tiny import make_tiny_model

    out = make_tiny_model(args.out_dir, hidden_size=args.hidden_size, num_layers=args.layers, seed=args.seed)
    print(f"tiny model and tokenizer written to {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rlhf-dist", description="Distributed RLHF on Ray.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="run PPO from a YAML config")
    p.add_argument("config", help="YAML config file")
    p.add_argument("overrides", nargs="*", help="dotted.key=value overrides, e.g. run.steps=5")
    p.set_defaults(fn=_train)

    p = sub.add_parser("export", help="write a checkpoint's policy (or critic) as a HuggingFace model directory")
    p.add_argument("checkpoint", help="a checkpoint directory, e.g. runs/demo/checkpoints/step_00000010")
    p.add_argument("out_dir")
    p.add_argument("--role", choices=["policy", "critic"], default="policy")
    p.set_defaults(fn=_export)

    p = sub.add_parser("make-tiny-model", help="write a tiny random Llama-style model and tokenizer (no downloads)")
    p.add_argument("out_dir")
    p.add_argument("--hidden-size", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
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
