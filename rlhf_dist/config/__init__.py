"""Typed configuration: YAML + dotted overrides (io), validated once (the section models in rl, stages and
common), derived values computed in one place (derive); workers receive narrow specs (specs), never a config.

The names callers use are importable from here."""
from rlhf_dist.config.common import (
    CheckpointConfig,
    ClusterConfig,
    EvalConfig,
    InputFile,
    Job,
    LRSchedule,
    OutputDir,
    PathKind,
    ResumableJob,
    RunOutput,
    Strict,
    TimeoutConfig,
)
from rlhf_dist.config.derive import (
    CRITIC_ESTIMATORS,
    GROUP_ESTIMATORS,
    SCORE_ONLY_ESTIMATORS,
    Derived,
    check_algorithm,
    derive,
    load_config,
    role_gpus,
    uses_critic,
)
from rlhf_dist.config.io import apply_overrides, format_validation_error, parse_override, read_config_data, to_yaml, validate
from rlhf_dist.config.rl import (
    Config,
    DataConfig,
    EnvConfig,
    FaultToleranceConfig,
    InferenceRole,
    LearnerRole,
    ModelConfig,
    PlacementConfig,
    PoolConfig,
    PPOConfig,
    RewardConfig,
    RewardFunction,
    RolloutConfig,
    RolloutRole,
    RunConfig,
    SyncConfig,
)
from rlhf_dist.errors import ConfigError

__all__ = [
    "CRITIC_ESTIMATORS", "GROUP_ESTIMATORS", "SCORE_ONLY_ESTIMATORS", "CheckpointConfig", "ClusterConfig", "Config",
    "ConfigError", "DataConfig", "Derived", "EnvConfig", "EvalConfig", "FaultToleranceConfig", "InferenceRole", "InputFile", "Job",
    "LRSchedule", "LearnerRole", "ModelConfig", "OutputDir", "PPOConfig", "PathKind", "PlacementConfig", "PoolConfig",
    "ResumableJob", "RewardConfig", "RewardFunction", "RolloutConfig", "RolloutRole", "RunConfig", "RunOutput", "Strict",
    "SyncConfig", "TimeoutConfig", "apply_overrides", "check_algorithm", "derive", "format_validation_error",
    "load_config", "parse_override", "read_config_data", "role_gpus", "to_yaml", "uses_critic", "validate",
]
