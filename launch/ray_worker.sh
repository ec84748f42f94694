#!/usr/bin/env bash
# Join a worker node to a running head:  launch/ray_worker.sh HEAD_IP:PORT [extra ray start args]
# Needs the head's token: RAY_AUTH_TOKEN, or RAY_AUTH_TOKEN_PATH naming a copy of its token file (mode 600;
# default ~/.ray/auth_token).
set -euo pipefail
. "$(dirname "$0")/common.sh"
[ $# -ge 1 ] || die "usage: launch/ray_worker.sh HEAD_IP:PORT (the head's address, printed by launch/ray_head.sh)"
HEAD=$1; shift
need_ray
need_gpus
need_token
ray start --address="$HEAD" "$@" || die "could not join the head at $HEAD (is launch/ray_head.sh running there, port open, the token the head's?)"
