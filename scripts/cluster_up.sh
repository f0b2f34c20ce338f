#!/usr/bin/env bash
# Start a Ray cluster on this machine: a head and K worker nodes, for trying `compplan search
# --backend ray` (and for the tests). Every node runs `ray start --block` in a process group of
# its own, with its own RAY_TMPDIR; the cluster has its own port and auth token. Stop it with
# scripts/cluster_down.sh DIR, which stops these processes by their ids (never `ray stop`, which
# would stop every Ray on the machine).
#
#   scripts/cluster_up.sh [K=2] [DIR=.cluster]
#   env: PORT (6390), CPUS per node (1), HEAD_CPUS (CPUS; 0 keeps trials off the head)
#
# It prints the head's address and writes DIR/env; `source DIR/env` before `compplan search
# --backend ray --address "$RAY_ADDRESS"` so that the driver has the cluster's token.
set -euo pipefail
K="${1:-2}"
DIR="$(mkdir -p "${2:-.cluster}" && cd "${2:-.cluster}" && pwd)"
PORT="${PORT:-6390}"
CPUS="${CPUS:-1}"
HEAD_CPUS="${HEAD_CPUS:-$CPUS}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
RAY="${RAY:-$ROOT/.venv/bin/ray}"
PY="$(dirname "$RAY")/python"
if [ -e "$DIR/head.pid" ] && kill -0 "$(cat "$DIR/head.pid")" 2>/dev/null; then
    echo "cluster_up: a cluster already runs from $DIR (stop it with scripts/cluster_down.sh $DIR)" >&2
    exit 1
fi
TOKEN="$("$PY" -c 'import secrets; print(secrets.token_hex(32))')"
cat >"$DIR/env" <<ENV
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN=$TOKEN
export RAY_ADDRESS=127.0.0.1:$PORT
ENV
# shellcheck disable=SC1091
source "$DIR/env"
unset RAY_ADDRESS  # `ray start --head` must not read it as a cluster to join
common=(--block --node-ip-address 127.0.0.1 --disable-usage-stats)

start_node() {  # name, then ray start arguments
    local name="$1"; shift
    mkdir -p "$DIR/$name"
    RAY_TMPDIR="$DIR/$name" setsid "$RAY" start "$@" >"$DIR/$name.log" 2>&1 &
    echo $! >"$DIR/$name.pid"
}

start_node head --head --port "$PORT" --temp-dir "$DIR/head" --include-dashboard false \
    --num-cpus "$HEAD_CPUS" "${common[@]}"
for _ in $(seq 1 60); do
    if grep -q "Ray runtime started" "$DIR/head.log" 2>/dev/null; then break; fi
    if ! kill -0 "$(cat "$DIR/head.pid")" 2>/dev/null; then
        echo "cluster_up: the head failed to start; see $DIR/head.log" >&2
        exit 1
    fi
    sleep 1
done
# One node at a time: nodes starting together on one machine can time out registering.
for i in $(seq 1 "$K"); do
    start_node "worker$i" --address "127.0.0.1:$PORT" --num-cpus "$CPUS" "${common[@]}"
    for _ in $(seq 1 120); do
        if grep -q "Ray runtime started" "$DIR/worker$i.log" 2>/dev/null; then break; fi
        sleep 1
    done
    if ! grep -q "Ray runtime started" "$DIR/worker$i.log" 2>/dev/null; then
        echo "cluster_up: worker node $i did not start; see $DIR/worker$i.log" >&2
        exit 1
    fi
done
echo "cluster_up: head at 127.0.0.1:$PORT with $K worker nodes ($CPUS CPU each); source $DIR/env"
