#!/usr/bin/env bash
# Throughput of two source trees of ringkv, side by side in one sitting, by the
# neutral load generator (../shared/tools/kvload.c): a cluster of one tree is
# started, warmed up, measured, stopped; then the other tree's; ROUNDS times,
# alternating. Never both at once: the machine has 2 cores.
#
#   scripts/side_by_side.sh OLD_TREE NEW_TREE NODES CLIENTS [ROUNDS] [SECONDS]
#
# e.g. git worktree add /tmp/old 01cf7af
#      scripts/side_by_side.sh /tmp/old . 10 64 3 8
#
# Prints one line per round and tree (kvload's throughput, p50, p99, time-outs)
# and the medians. A one-node "cluster" is addressed directly, as the protocol's
# one-node deployments are; larger ones through random front ends. LOAD=bench
# loads them with the project's own `ringkv bench` (of the new tree) instead.
# OLD_FLAGS / NEW_FLAGS are extra options of `ringkv cluster up` for each side,
# e.g. the cost of authentication on one tree:
#      OLD_FLAGS=--insecure scripts/side_by_side.sh . . 40 16 3 8
# or of durability (a relative --data-dir lands in the round's own folder):
#      NEW_FLAGS="--data-dir data --durability fsync" scripts/side_by_side.sh . . 10 64
set -euo pipefail
OLD=$(cd "$1" && pwd)
NEW=$(cd "$2" && pwd)
NODES=$3
CLIENTS=$4
ROUNDS=${5:-3}
SECONDS_=${6:-8}
HERE=$(cd "$(dirname "$0")/.." && pwd)
PY="$HERE/.venv/bin/python"
KVLOAD=/tmp/kvload
[ -x "$KVLOAD" ] || gcc -O2 -o "$KVLOAD" "$HERE/../shared/tools/kvload.c"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

measure() {  # tree label flags
  local tree=$1 label=$2 flags=$3 dir="$WORK/$2"
  rm -rf "$dir" && mkdir -p "$dir"  # each round from scratch (data directories too)
  # shellcheck disable=SC2086  # flags are words
  (cd "$dir" && PYTHONPATH="$tree" "$PY" -m ringkv cluster up --nodes "$NODES" \
      --base-port 47001 --detach $flags >/dev/null)
  sleep $((NODES > 10 ? 25 : 6))  # every node alive in every view
  if [ "${LOAD:-kvload}" = bench ]; then
    local target=(--servers "$dir/servers.txt" --random-front-end)
    [ "$NODES" -eq 1 ] && target=(--server 127.0.0.1:47001)
    "$HERE/.venv/bin/ringkv" bench "${target[@]}" --clients "$CLIENTS" --duration 5 >/dev/null
    "$HERE/.venv/bin/ringkv" bench "${target[@]}" --clients "$CLIENTS" --duration "$SECONDS_" \
      --json | "$PY" -c 'import json, sys
r = json.load(sys.stdin)
for name, key in [("throughput_req_s", "throughput"), ("latency_p50_ms", "p50_ms"),
                  ("latency_p99_ms", "p99_ms"), ("timeouts", "timeouts")]:
    print(name + ": " + str(r.get(key)))' > "$dir/out.txt"
  else
    local target=(-s "$dir/servers.txt" --random-front-end)
    [ "$NODES" -eq 1 ] && target=(-t 127.0.0.1:47001)
    "$KVLOAD" "${target[@]}" -c "$CLIENTS" -d 5 -w 1 -v 500 >/dev/null  # warm-up
    "$KVLOAD" "${target[@]}" -c "$CLIENTS" -d "$SECONDS_" -w 2 -v 500 > "$dir/out.txt"
  fi
  (cd "$dir" && PYTHONPATH="$tree" "$PY" -m ringkv cluster down >/dev/null)
  sleep $((NODES > 10 ? 6 : 2))  # every port free again
  awk -F': ' -v l="$label" '{v[$1]=$2}
    END {printf "%s %s req/s p50 %s ms p99 %s ms timeouts %s\n", l, v["throughput_req_s"],
         v["latency_p50_ms"], v["latency_p99_ms"], v["timeouts"]}' "$dir/out.txt"
}

for round in $(seq "$ROUNDS"); do
  measure "$OLD" old "${OLD_FLAGS:-}" | tee -a "$WORK/all.txt"
  measure "$NEW" new "${NEW_FLAGS:-}" | tee -a "$WORK/all.txt"
done
for label in old new; do
  grep "^$label " "$WORK/all.txt" | awk '{print $2}' | sort -n |
    awk -v l="$label" '{a[NR]=$1} END {print l " median " a[int((NR+1)/2)] " req/s"}'
done
