"""The commands behind `rlhf-dist` (cli): train/async/pipeline/stages start trainers; plan, export, report,
eval and bench are here whole."""
