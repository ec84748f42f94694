"""SFT -> reward model -> PPO in one command: each stage's config is read from one directory and pointed at
the previous stage's output, so a run never depends on where an earlier run happened to write."""
from __future__ import annotations

from pathlib import Path

from rlhf_dist.config import ConfigError

STAGES = ("sft", "rm", "ppo")


def stage_overrides(overrides: list[str]) -> dict[str, list[str]]:
    """'ppo:run.steps=10' -> {'ppo': ['run.steps=10']}."""
    from rlhf_dist.config.io import overrides_by_prefix

    return overrides_by_prefix(overrides, STAGES, "pipeline", "STAGE")


def run_pipeline(config_dir: str, overrides: list[str], log=print) -> dict[str, Path]:
    from rlhf_dist.config import load_config
    from rlhf_dist.config.stages import load_stage_config
    from rlhf_dist.trainers.ppo import train
    from rlhf_dist.trainers.stages import run_stage

    files = {s: Path(config_dir) / f"{s}.yaml" for s in STAGES}
    missing = [str(f) for f in files.values() if not f.is_file()]
    if missing:
        raise ConfigError(f"pipeline: {config_dir} must hold {', '.join(f'{s}.yaml' for s in STAGES)}; missing {', '.join(missing)}")
    extra = stage_overrides(overrides)
    # Every config is validated before the first stage starts (the later ones with placeholder paths).
    from rlhf_dist.config.validation import check_config

    check_config(load_stage_config("sft", files["sft"], extra["sft"]))
    check_config(load_stage_config("rm", files["rm"], extra["rm"]))
    check_config(load_config(files["ppo"], extra["ppo"]))

    runs: dict[str, Path] = {}
    log("pipeline 1/3: SFT")
    runs["sft"] = run_stage("sft", load_stage_config("sft", files["sft"], extra["sft"]), log)
    sft_model = runs["sft"] / "final"
    log(f"pipeline 2/3: reward model, from the SFT model {sft_model}")
    runs["rm"] = run_stage("rm", load_stage_config("rm", files["rm"], [f"model.path={sft_model}", "model.make_tiny=false", *extra["rm"]]), log)
    rm_model = runs["rm"] / "final"
    log(f"pipeline 3/3: PPO from {sft_model} against the reward model {rm_model}")
    runs["ppo"] = train(load_config(files["ppo"], [f"model.policy={sft_model}", f"reward.model={rm_model}", *extra["ppo"]]), log)
    log("pipeline done: " + ", ".join(f"{k} {v}" for k, v in runs.items()))
    return runs
