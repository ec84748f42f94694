# Shared checks for the launch scripts (sourced, not run).
die() { echo "launch: $*" >&2; exit 1; }
need_ray() { command -v ray >/dev/null 2>&1 || die "the 'ray' command is not on PATH (activate the environment with rlhf_dist installed, e.g. source .venv/bin/activate)"; }
need_gpus() {
  [ "${ALLOW_NO_GPU:-0}" = 1 ] && return 0
  command -v nvidia-smi >/dev/null 2>&1 || die "nvidia-smi not found: no GPUs on $(hostname) (set ALLOW_NO_GPU=1 to start a CPU-only node)"
  nvidia-smi -L >/dev/null 2>&1 || die "nvidia-smi lists no GPUs on $(hostname) (set ALLOW_NO_GPU=1 to start a CPU-only node)"
}
