#!/usr/bin/env bash
# Join a worker node to a running head:  launch/ray_worker.sh HEAD_IP:PORT [extra ray start args]
set -euo pipefail
. "$(dirname "$0")/common.sh"
[ $# -ge 1 ] || die "usage: launch/ray_worker.sh HEAD_IP:PORT (the head's address, printed by launch/ray_head.sh)"
HEAD=$1; shift
need_ray
need_gpus
ray start --address="$HEAD" "$@" || die "could not join the head at $HEAD (is launch/ray_head.sh running there, port open?)"
