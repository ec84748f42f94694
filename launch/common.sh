# Shared checks for the launch scripts (sourced, not run).
die() { echo "launch: $*" >&2; exit 1; }
need_ray() { command -v ray >/dev/null 2>&1 || die "the 'ray' command is not on PATH (activate the environment with rlhf_dist installed, e.g. source .venv/bin/activate)"; }
need_gpus() {
  [ "${ALLOW_NO_GPU:-0}" = 1 ] && return 0
  command -v nvidia-smi >/dev/null 2>&1 || die "nvidia-smi not found: no GPUs on $(hostname) (set ALLOW_NO_GPU=1 to start a CPU-only node)"
  nvidia-smi -L >/dev/null 2>&1 || die "nvidia-smi lists no GPUs on $(hostname) (set ALLOW_NO_GPU=1 to start a CPU-only node)"
}

# Ray token authentication (RAY_AUTH_MODE=token): the head, every worker and every client hold the same token,
# from RAY_AUTH_TOKEN (environment) or the file RAY_AUTH_TOKEN_PATH (default ~/.ray/auth_token, mode 600),
# never from a command line, where other users of a node could read it.
token_file() { echo "${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}"; }
token_mode() {
  [ -z "${RAY_AUTH_MODE:-}" ] || [ "$RAY_AUTH_MODE" = token ] \
    || die "RAY_AUTH_MODE=$RAY_AUTH_MODE: these scripts run Ray with token authentication only (unset RAY_AUTH_MODE)"
  export RAY_AUTH_MODE=token
}
check_token_file() {
  local f=$1 mode
  [ -f "$f" ] || die "Ray token file $f does not exist"
  [ -r "$f" ] || die "Ray token file $f cannot be read"
  mode=$(stat -c %a "$f") || die "cannot read the mode of $f"
  [ $((8#$mode & 8#077)) = 0 ] || die "Ray token file $f has mode $mode: other users can read it (chmod 600 $f)"
  [ -s "$f" ] || die "Ray token file $f is empty"
}
# Workers and clients: take the head's token (from the environment or its file); nothing is made here.
need_token() {
  token_mode
  [ -n "${RAY_AUTH_TOKEN:-}" ] && return 0
  local f
  f=$(token_file)
  [ -f "$f" ] || die "no Ray token: set RAY_AUTH_TOKEN_PATH to a copy of the head's token file (mode 600; the head printed where it is), or RAY_AUTH_TOKEN"
  check_token_file "$f"
  export RAY_AUTH_TOKEN_PATH=$f
}
# The head: take the token given (environment or file), or make one in the token file (mode 600).
make_or_take_token() {
  token_mode
  [ -n "${RAY_AUTH_TOKEN:-}" ] && { echo "launch: Ray token from RAY_AUTH_TOKEN" >&2; return 0; }
  local f
  f=$(token_file)
  if [ ! -e "$f" ]; then
    mkdir -p "$(dirname "$f")"
    # umask first, noclobber: the file is created private, and a file that appeared meanwhile is not replaced.
    (umask 077 && set -o noclobber && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$f") \
      || die "could not create the Ray token file $f"
    echo "launch: made a Ray token in $f (mode 600)" >&2
  fi
  check_token_file "$f"
  export RAY_AUTH_TOKEN_PATH=$f
}
