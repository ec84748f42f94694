#!/usr/bin/env bash
# Start the Ray head node of a cluster:  launch/ray_head.sh [--port 6379] [--dashboard-port 8265] [extra ray start args]
# Workers then join with launch/ray_worker.sh HEAD_IP:6379; jobs go to http://HEAD_IP:8265 (launch/submit.sh).
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
ray start --head --node-ip-address="$HOST" --port="$PORT" --dashboard-host="$HOST" --dashboard-port="$DASH" "$@"
echo "launch: head up. Workers: launch/ray_worker.sh $HOST:$PORT   Jobs: RAY_ADDRESS=http://$HOST:$DASH launch/submit.sh CONFIG"
