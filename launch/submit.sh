#!/usr/bin/env bash
# Submit a training job to a Ray cluster through Ray's job API, with this checkout as the working directory:
#   RAY_ADDRESS=http://HEAD_IP:8265 RAY_AUTH_TOKEN_PATH=head_token launch/submit.sh CONFIG.yaml [dotted.key=value ...]
# The request carries the cluster's token (RAY_AUTH_TOKEN, or the file RAY_AUTH_TOKEN_PATH, default
# ~/.ray/auth_token): the head refuses jobs without it.
# The job runs `python -m rlhf_dist train CONFIG ... cluster.address=auto` on the cluster; RLHF_PYTHON
# names the Python that has rlhf_dist installed on the nodes (default: python). --no-wait returns at once.
set -euo pipefail
. "$(dirname "$0")/common.sh"
WAIT=1
[ "${1:-}" = "--no-wait" ] && { WAIT=0; shift; }
[ $# -ge 1 ] || die "usage: RAY_ADDRESS=http://HEAD_IP:8265 launch/submit.sh [--no-wait] CONFIG.yaml [overrides...]"
[ -n "${RAY_ADDRESS:-}" ] || die "RAY_ADDRESS is not set: the head's job address, e.g. http://10.0.0.1:8265"
need_ray
need_token
CONFIG=$1; shift
[ -f "$CONFIG" ] || die "config $CONFIG does not exist (paths are relative to the repository root)"
cd "$(dirname "$0")/.."
errors=$(mktemp)
trap 'rm -f "$errors"' EXIT
# A head that has just started answers "No available agent" for a few seconds: retry that, nothing else.
for attempt in 1 2 3 4 5 6; do
  set +e
  ray job submit --address "$RAY_ADDRESS" --working-dir . \
    --runtime-env-json '{"excludes": [".venv", ".git", "runs", ".cache", "benchmarks/results"]}' \
    $([ "$WAIT" = 0 ] && echo --no-wait) \
    -- "${RLHF_PYTHON:-python}" -m rlhf_dist train "$CONFIG" cluster.address=auto "$@" 2> >(tee "$errors" >&2)
  rc=$?
  set -e
  wait
  grep -q "No available agent" "$errors" || exit $rc
  echo "launch: the job server is not ready yet (attempt $attempt of 6); retrying in 5 s" >&2
  sleep 5
done
die "the job server at $RAY_ADDRESS kept answering 'No available agent'"
