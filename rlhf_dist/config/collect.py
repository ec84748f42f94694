"""Typed configuration of human preference collection: `rlhf-dist collect candidates` (a YAML config, like
`label`'s without the judge) and `rlhf-dist collect serve` (its command-line flags, validated here)."""
from __future__ import annotations

import ipaddress
from pathlib import Path

from pydantic import Field, model_validator

from rlhf_dist.config.common import AttnImplementation, DType, GradientCheckpointing, Job, Strict
from rlhf_dist.config.io import read_config_data, validate
from rlhf_dist.config.layout import pool_layout
from rlhf_dist.config.rl import DataConfig, PoolConfig, RolloutConfig, RolloutRole
from rlhf_dist.config.stages import StageRun

# Responses shown side by side at most: one keyboard digit each, and a ranking a person can still hold in mind.
MAX_CANDIDATES = 8


class CandidatesModel(Strict):
    policy: str = Field(
        description="the policy that writes the candidates: an HF model directory (an exported or saved policy), a run "
        "directory holding final/, or a checkpoint directory RUN_DIR/checkpoints/step_N (exported first)"
    )
    make_tiny: bool = Field(
        False, description="create a tiny random model + tokenizer at `policy` if the directory is missing"
    )
    dtype: DType = "float32"
    attn_implementation: AttnImplementation = "sdpa"
    gradient_checkpointing: GradientCheckpointing = False


class CandidatesPlacement(Strict):
    pools: dict[str, PoolConfig] = Field(description="name -> pool; each pool is one Ray placement group")
    rollout: RolloutRole = Field(description="the vLLM engines that sample the candidates")


class CandidatesConfig(Job):
    """Writes RUN_DIR/candidates.jsonl: per prompt, `rollout.n_samples_per_prompt` responses for people to compare."""

    run: StageRun = Field(StageRun(name="candidates", output_dir="runs/candidates"), description="name, output directory, seed")
    model: CandidatesModel = Field(description="the policy whose responses are compared")
    data: DataConfig = Field(description="the prompts, read as PPO reads them")
    rollout: RolloutConfig = Field(
        RolloutConfig(n_samples_per_prompt=2), description=f"sampling, as in PPO; 2 to {MAX_CANDIDATES} responses per prompt"
    )
    batch_size: int = Field(64, ge=1, description="prompts per generate call")
    placement: CandidatesPlacement = Field(description="pools of GPUs and the engines' place on them")

    @model_validator(mode="after")
    def _checks(self):
        n = self.rollout.n_samples_per_prompt
        if not 2 <= n <= MAX_CANDIDATES:
            raise ValueError(f"rollout.n_samples_per_prompt: people compare 2 to {MAX_CANDIDATES} responses of a prompt, not {n}")
        return self


def load_candidates_config(path: str | Path, overrides: list[str] | None = None) -> CandidatesConfig:
    cfg = validate(CandidatesConfig, read_config_data(path, overrides))
    p = cfg.placement
    pool_layout(p.pools, {"rollout": (p.rollout.pool, p.rollout.num_engines * p.rollout.tensor_parallel_size)})
    return cfg


class ServeConfig(Strict):
    """`rlhf-dist collect serve`: its flags, validated once before anything is opened or bound."""

    candidates: str = Field(description="the candidates JSONL (what `collect candidates` writes)")
    store: str = Field(description="the SQLite file votes are written to; created, or resumed when it exists")
    annotators: list[str] = Field(
        min_length=1, description="annotator names (letters, digits, . _ -); each gets a token of its own, kept in the store"
    )
    host: str = Field("127.0.0.1", description="address to bind; anything but loopback must be asked for")
    port: int = Field(8765, ge=0, le=65535, description="port to bind; 0: any free port (printed)")
    overlap: int = Field(1, ge=1, le=100, description="annotators shown each item; above 1 the agreement page has data")
    max_body_bytes: int = Field(65536, ge=1024, le=1 << 24, description="a request body above this is refused (413)")
    max_rationale_chars: int = Field(4000, ge=0, le=100000, description="the optional rationale's length limit")
    max_shown_chars: int = Field(
        200000, ge=1000, le=1 << 24,
        description="characters of one response shown (the rest is named, not sent); the export keeps the whole text",
    )

    @model_validator(mode="after")
    def _checks(self):
        import re

        for name in self.annotators:
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,39}", name):
                raise ValueError(f"--annotator: {name!r} must be 1-40 letters, digits, '.', '_' or '-' (starting with a letter or digit)")
        if len(set(self.annotators)) != len(self.annotators):
            raise ValueError("--annotator: a name is given twice")
        if self.host != "localhost":
            try:
                ipaddress.ip_address(self.host)
            except ValueError:
                raise ValueError(f"--host: {self.host!r} is not an IP address (or localhost)") from None
        return self

    @property
    def loopback(self) -> bool:
        return self.host == "localhost" or ipaddress.ip_address(self.host).is_loopback
