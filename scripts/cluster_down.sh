#!/usr/bin/env bash
# Stop a cluster started by scripts/cluster_up.sh: each node's process group, by the ids it
# recorded in DIR/*.pid (SIGTERM, then SIGKILL after GRACE seconds). Other Ray processes on the
# machine are left alone.
#
#   scripts/cluster_down.sh [DIR=.cluster] [GRACE=20]
set -uo pipefail
DIR="${1:-.cluster}"
GRACE="${2:-20}"
if ! [[ "$GRACE" =~ ^[0-9]+$ ]]; then
    echo "cluster_down: GRACE must be whole seconds (for example 20), not '$GRACE'" >&2
    exit 2
fi
shopt -s nullglob
pids=()
for file in "$DIR"/worker*.pid "$DIR"/head.pid; do
    [ -f "$file" ] || continue  # head.pid is no glob: nullglob keeps it where it is missing
    pids+=("$(cat "$file")")
done
if [ ${#pids[@]} -eq 0 ]; then
    echo "cluster_down: no cluster recorded in $DIR" >&2
    exit 0
fi
for pid in "${pids[@]}"; do kill -TERM -- "-$pid" 2>/dev/null; done
for _ in $(seq 1 "$GRACE"); do
    alive=0
    for pid in "${pids[@]}"; do
        if kill -0 -- "-$pid" 2>/dev/null; then alive=1; fi
    done
    [ "$alive" = 0 ] && break
    sleep 1
done
for pid in "${pids[@]}"; do kill -KILL -- "-$pid" 2>/dev/null; done
rm -f "$DIR"/*.pid
echo "cluster_down: stopped ${#pids[@]} nodes from $DIR"
