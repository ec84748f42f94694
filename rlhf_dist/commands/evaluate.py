"""`rlhf-dist eval`: a saved policy evaluated once through the job's rollout engines."""
from __future__ import annotations

import json
from pathlib import Path

from rlhf_dist.config import Config, ConfigError, derive
from rlhf_dist.metrics import RunLog, fresh_run_dir, write_config
from rlhf_dist.outputs import write_file
from rlhf_dist.preflight import prepare_model
from rlhf_dist.rewards.functions import RuleRewards
from rlhf_dist.rollout.evaluation import Evaluator
from rlhf_dist.runtime.scaffold import ray_session
from rlhf_dist.trainers.rl_roles import RLRoles


def evaluate_saved_policy(cfg: Config, log=print) -> Path:
    """`rlhf-dist eval`: start the job's roles on model.policy (a saved policy or an exported checkpoint), run
    the eval section once, write RUN_DIR/metrics.jsonl (step 0), eval.json and eval_samples.jsonl."""
    if cfg.eval is None:
        raise ConfigError("eval: the config has no eval section (prompts file, n_samples, k)")
    derived = derive(cfg)
    tokenizer = prepare_model(cfg, log)
    rules = RuleRewards(cfg.reward.functions, has_labels=cfg.eval.label_key is not None)
    env = None
    if cfg.env is not None:  # an agent config: each prompt is an episode
        from rlhf_dist.data.prompts import load_prompts
        from rlhf_dist.trainers.ppo import env_spec

        env = env_spec(cfg, tokenizer, load_prompts(cfg.data, tokenizer))
    evaluator = Evaluator(cfg, tokenizer, rules, log, env)  # reads and checks the prompts before anything is written
    run_dir = fresh_run_dir(f"{cfg.run.output_dir}-eval")
    log = RunLog(run_dir, log)
    write_config(run_dir, cfg, None)
    with ray_session(cfg, derived, log):
        roles = RLRoles(cfg, log)  # the engines load model.policy themselves: no sync needed
        try:
            metrics = evaluator.run(roles, run_dir / "eval_samples.jsonl")
        finally:
            roles.shutdown()
    write_file(run_dir / "metrics.jsonl", json.dumps({"step": 0, **metrics}) + "\n", owner=run_dir)
    write_file(run_dir / "eval.json", json.dumps({"policy": cfg.model.policy, **metrics}, indent=1), owner=run_dir)
    width = max(map(len, metrics))
    log("\n".join(f"  {k:<{width}}  {v:.4f}" for k, v in metrics.items()))
    return run_dir
