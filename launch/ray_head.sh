#!/usr/bin/env bash
# Start the Ray head node of a cluster:  launch/ray_head.sh [--port 6379] [--dashboard-port 8265] [extra ray start args]
# Token authentication is always on: the head takes RAY_AUTH_TOKEN or the file RAY_AUTH_TOKEN_PATH (default
# ~/.ray/auth_token), or makes that file (mode 600). Copy it to the workers and to where jobs are submitted from;
# workers then join with launch/ray_worker.sh HEAD_IP:6379, jobs go to http://HEAD_IP:8265 (launch/submit.sh).
set -euo pipefail
. "$(dirname "$0")/common.sh"
need_ray
need_gpus
PORT=6379 DASH=8265 HOST=${RAY_HEAD_IP:-$(hostname -I 2>/dev/null | awk '{print $1}')}
while [ $# -gt 0 ]; do
  case "$1" in
    --port) PORT=$2; shift 2 ;;
    --dashboard-port) DASH=$2; shift 2 ;;
    *) break ;;
  esac
done
[ -n "$HOST" ] || die "cannot tell this node's address; set RAY_HEAD_IP"
make_or_take_token
where=${RAY_AUTH_TOKEN_PATH:-the RAY_AUTH_TOKEN environment variable}
echo "launch: head at $HOST:$PORT; workers: RAY_AUTH_TOKEN_PATH=<copy of $where> launch/ray_worker.sh $HOST:$PORT" >&2
echo "launch: jobs: RAY_ADDRESS=http://$HOST:$DASH RAY_AUTH_TOKEN_PATH=<copy of $where> launch/submit.sh CONFIG" >&2
ray start --head --node-ip-address="$HOST" --port="$PORT" --dashboard-host="$HOST" --dashboard-port="$DASH" "$@"
echo "launch: head up" >&2
