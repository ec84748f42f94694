"""`rlhf-dist collect candidates | serve | export` and `rlhf-dist bench collect`: the command-line side of
rlhf_dist/collect/ (arguments in, one line per outcome out)."""
from __future__ import annotations

import tempfile
from pathlib import Path

from rlhf_dist.config import ConfigError


def policy_dir(path: str, work: Path, log=print) -> str:
    """model.policy as an HF directory: itself, a run directory's final/, or a checkpoint exported into `work`."""
    p = Path(path).expanduser()
    if (p / "config.json").is_file():
        return path
    if (p / "final" / "config.json").is_file():
        log(f"model.policy: {path} is a run directory; sampling its final policy {p / 'final'}")
        return str(p / "final")
    if (p / "COMPLETE").is_file():
        from rlhf_dist.commands.export import export

        log(f"model.policy: {path} is a checkpoint; exporting its policy first")
        return str(export(path, str(work / "policy")))
    return path  # missing or not a model: the model checks name it (or make_tiny creates it)


def candidates(args, log) -> int:
    from rlhf_dist.collect.candidates import make_candidates
    from rlhf_dist.config.collect import load_candidates_config
    from rlhf_dist.config.validation import check_config

    cfg = load_candidates_config(args.config, args.overrides)
    check_config(cfg)
    with tempfile.TemporaryDirectory(prefix="collect-policy-") as work:
        named = cfg.model.policy
        policy = policy_dir(named, Path(work), log)
        if policy != named:
            cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"policy": policy})})
        run_dir = make_candidates(cfg, log, source=named)
    log(f"done: candidates in {run_dir / 'candidates.jsonl'}; label them with: rlhf-dist collect serve "
        f"{run_dir / 'candidates.jsonl'} --store {run_dir / 'votes.sqlite'} --annotator NAME")
    return 0


def serve_config(args):
    from rlhf_dist.config.collect import ServeConfig
    from rlhf_dist.config.io import validate

    store = args.store or str(Path(args.candidates).with_name("votes.sqlite"))
    flags = {"candidates": args.candidates, "store": store, "annotators": args.annotator or ["annotator"], "host": args.host,
             "port": args.port, "overlap": args.overlap, "max_body_bytes": args.max_body_bytes}
    try:
        return validate(ServeConfig, {k: v for k, v in flags.items() if v is not None})
    except ConfigError as e:  # name the flags the user typed, not the model's fields
        text = str(e).removeprefix("invalid config: ")
        for field in ("max_body_bytes", "overlap", "port", "host"):
            text = text.replace(f"{field}:", f"--{field.replace('_', '-')}:")
        raise ConfigError(text) from None


def serve(args, log) -> int:
    from rlhf_dist.collect.server import serve as run_server

    run_server(serve_config(args), log)
    return 0


def export(args, log) -> int:
    from rlhf_dist.collect.export import export_pairs, summary_text

    summary = export_pairs(args.store, args.out, args.force)
    log(summary_text(summary))
    return 0


def start(args, log) -> int:
    from rlhf_dist.trainers.collect_loop import start as start_session

    flags = {"annotators": args.annotator or ["annotator"], "host": args.host, "port": args.port, "overlap": args.overlap}
    start_session(args.config_dir, args.overrides, {k: v for k, v in flags.items() if v is not None}, args.session, log)
    return 0


def train(args, log) -> int:
    from rlhf_dist.trainers.collect_loop import train as train_session

    train_session(args.session, args.overrides, log)
    return 0


def bench(args) -> dict:
    from rlhf_dist.collect.load import bench_collect

    return bench_collect(args.annotators, args.votes, args.repeats)


def add_parsers(sub, job, at_least) -> None:
    """The `collect` command and its verbs."""
    p = sub.add_parser("collect", help="human preferences: candidates from a policy, a labelling web app, export to pairs")
    verbs = p.add_subparsers(dest="verb", required=True)
    c = verbs.add_parser("candidates", help="K responses per prompt from a policy (model dir, run dir or checkpoint)", parents=[job])
    c.add_argument("config", help="YAML config (see configs/collect_cpu/candidates.yaml)")
    c.add_argument("overrides", nargs="*", help="dotted.key=value overrides, e.g. rollout.n_samples_per_prompt=3")
    c.set_defaults(collect=candidates)
    s = verbs.add_parser("serve", help="the labelling web app on loopback; prints each annotator's link")
    s.add_argument("candidates", help="the candidates JSONL")
    s.add_argument("--store", help="SQLite vote store, created or resumed (default: votes.sqlite beside CANDIDATES)")
    s.add_argument("--max-body-bytes", type=int, help="larger request bodies are refused (default 65536)")
    s.set_defaults(collect=serve)
    st = verbs.add_parser("start", help="the demo loop, part 1: SFT, candidates from it, then the labelling app", parents=[job])
    st.add_argument("config_dir", help="a directory holding sft.yaml, candidates.yaml, rm.yaml and ppo.yaml")
    st.add_argument("overrides", nargs="*", help="STEP:dotted.key=value, e.g. candidates:rollout.n_samples_per_prompt=3")
    st.add_argument("--session", default="runs/collect", help="the session directory (a fresh one: -2, -3, ... if taken)")
    st.set_defaults(collect=start)
    for q in (s, st):
        q.add_argument("--annotator", action="append", help="an annotator's name (repeat for several; default: annotator)")
        q.add_argument("--host", help="address to bind (default 127.0.0.1; anything else is reachable from the network)")
        q.add_argument("--port", type=int, help="port (default 8765; 0: any free one)")
        q.add_argument("--overlap", type=int, help="annotators shown each item (default 1; 2 or more for agreement)")
    t = verbs.add_parser("train", help="the demo loop, part 2: export the votes, train a reward model on them, then PPO", parents=[job])
    t.add_argument("session", help="the session directory `collect start` made")
    t.add_argument("overrides", nargs="*", help="STEP:dotted.key=value with STEP rm or ppo, e.g. ppo:run.steps=5")
    t.set_defaults(collect=train)
    e = verbs.add_parser("export", help="votes -> preference pairs JSONL (prompt, chosen, rejected) for rm and dpo")
    e.add_argument("store", help="the SQLite vote store")
    e.add_argument("out", help="the pairs JSONL to write")
    e.add_argument("--force", action="store_true", help="replace OUT if it exists")
    e.set_defaults(collect=export)
