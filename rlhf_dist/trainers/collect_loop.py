"""The human-feedback loop in two commands, over one session directory:

    rlhf-dist collect start configs/collect_cpu   SFT -> candidates from the SFT model -> the labelling app
    rlhf-dist collect train runs/collect          votes -> pairs -> reward model -> PPO against it

SESSION/ holds sft/, candidates/, votes.sqlite and session.json (which config directory made it); each
`collect train` writes SESSION/train, train-2, ... (pairs.jsonl, rm/, ppo/), so labelling can go on between
rounds and nothing earlier is overwritten. Every config is validated before the first step starts.
"""
from __future__ import annotations

import json
from pathlib import Path

from rlhf_dist.config import ConfigError

STEPS = ("sft", "candidates", "rm", "ppo")


def step_overrides(overrides: list[str]) -> dict[str, list[str]]:
    """'rm:train.epochs=2' -> {'rm': ['train.epochs=2'], ...}."""
    from rlhf_dist.config.io import overrides_by_prefix

    return overrides_by_prefix(overrides, STEPS, "collect", "STEP")


def _files(config_dir: str, names) -> dict[str, Path]:
    files = {s: Path(config_dir) / f"{s}.yaml" for s in names}
    if missing := [str(f) for f in files.values() if not f.is_file()]:
        raise ConfigError(f"collect: {config_dir} must hold {', '.join(f'{s}.yaml' for s in names)}; missing {', '.join(missing)}")
    return files


def start(config_dir: str, overrides: list[str], serve_flags: dict, session_dir: str = "runs/collect", log=print) -> Path:
    """SFT, candidates from the SFT model, then the app (until interrupted). `serve_flags`: ServeConfig fields."""
    from rlhf_dist.collect.server import serve

    session, cfg = prepare(config_dir, overrides, serve_flags, session_dir, log)
    log(f"collect 3/3: label in the browser; afterwards (Ctrl-C here first): rlhf-dist collect train {session}")
    serve(cfg, log)
    return session


def prepare(config_dir: str, overrides: list[str], serve_flags: dict, session_dir: str, log=print):
    """Steps 1 and 2 of `start`: (SESSION, the ServeConfig of its app)."""
    from rlhf_dist.collect.candidates import make_candidates
    from rlhf_dist.config.collect import ServeConfig, load_candidates_config
    from rlhf_dist.config.io import validate
    from rlhf_dist.config.stages import load_stage_config
    from rlhf_dist.config.validation import check_config
    from rlhf_dist.metrics import fresh_run_dir
    from rlhf_dist.trainers.stages import run_stage

    files, extra = _files(config_dir, ("sft", "candidates", "rm", "ppo")), step_overrides(overrides)
    check_config(load_stage_config("sft", files["sft"], extra["sft"]))
    check_config(load_candidates_config(files["candidates"], extra["candidates"]))
    validate(ServeConfig, {"candidates": "-", "store": "-", **serve_flags})  # the flags, before anything runs
    session = fresh_run_dir(session_dir)
    (session / "session.json").write_text(json.dumps({"config_dir": str(config_dir)}))
    log(f"collect 1/3: SFT, in {session / 'sft'}")
    sft = run_stage("sft", load_stage_config("sft", files["sft"], [f"run.output_dir={session / 'sft'}", *extra["sft"]]), log)
    log(f"collect 2/3: candidates from {sft / 'final'}")
    cands = make_candidates(load_candidates_config(files["candidates"], [f"model.policy={sft / 'final'}",
                                                                         f"run.output_dir={session / 'candidates'}",
                                                                         *extra["candidates"]]), log)
    return session, validate(ServeConfig, {"candidates": str(cands / "candidates.jsonl"), "store": str(session / "votes.sqlite"),
                                           **serve_flags})


def train(session_dir: str, overrides: list[str], log=print) -> dict[str, Path]:
    """Export the session's votes, train a reward model on them from the SFT model, then PPO against it."""
    from rlhf_dist.collect.export import export_pairs, summary_text
    from rlhf_dist.config import load_config
    from rlhf_dist.config.stages import load_stage_config
    from rlhf_dist.config.validation import check_config
    from rlhf_dist.metrics import fresh_run_dir
    from rlhf_dist.trainers.ppo import train as train_ppo
    from rlhf_dist.trainers.stages import run_stage

    session = Path(session_dir)
    meta, store, sft = session / "session.json", session / "votes.sqlite", session / "sft" / "final"
    for path in (meta, store, sft / "config.json"):
        if not path.is_file():
            raise ConfigError(f"collect train: {str(path)!r} does not exist; SESSION is what `rlhf-dist collect start` made")
    try:
        config_dir = json.loads(meta.read_text())["config_dir"]
    except (ValueError, KeyError, TypeError):
        raise ConfigError(f"collect train: {meta} is not a session file (config_dir)") from None
    files, extra = _files(config_dir, ("rm", "ppo")), step_overrides(overrides)
    rm_base, ppo_base = [f"model.path={sft}", "model.make_tiny=false"], [f"model.policy={sft}"]
    # Validated before anything is written, with the store standing in for the pairs not yet exported.
    check_config(load_stage_config("rm", files["rm"], [*rm_base, f"data.train={store}", *extra["rm"]]))
    check_config(load_config(files["ppo"], [*ppo_base, f"reward.model={sft}", "reward.model_normalize=false", *extra["ppo"]]))
    out = fresh_run_dir(str(session / "train"))
    pairs = out / "pairs.jsonl"
    summary = export_pairs(str(store), str(pairs))
    log("collect train 1/3: " + summary_text(summary))
    (out / "export.json").write_text(json.dumps(summary, indent=1))
    log(f"collect train 2/3: reward model on {summary['pairs']} pairs, from {sft}")
    rm = run_stage("rm", load_stage_config("rm", files["rm"], [*rm_base, f"data.train={pairs}", f"run.output_dir={out / 'rm'}",
                                                               *extra["rm"]]), log)
    log(f"collect train 3/3: PPO from {sft} against {rm / 'final'}")
    ppo = train_ppo(load_config(files["ppo"], [*ppo_base, f"reward.model={rm / 'final'}", f"run.output_dir={out / 'ppo'}",
                                               *extra["ppo"]]), log)
    log(f"collect train done: pairs {pairs}, reward model {rm / 'final'}, PPO {ppo}")
    return {"pairs": pairs, "rm": rm, "ppo": ppo, "summary": summary}
