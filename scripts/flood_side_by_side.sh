#!/usr/bin/env bash
# A client flood at node 0 of a fresh 10-node cluster of each of two source
# trees, one after the other, ROUNDS times alternating (scripts/flood.py sends;
# this tree's copy of it is used for both sides):
#
#   scripts/flood_side_by_side.sh OLD_TREE NEW_TREE RATE SECONDS [ROUNDS]
#
# e.g. git worktree add /tmp/old f9df85e
#      scripts/flood_side_by_side.sh /tmp/old . 64000 10 3
#
# One line per round and tree: what was sent, replies by outcome, what the
# kernel dropped (RcvbufErrors of /proc/net/snmp, machine-wide, over the
# flood), what node 0 read and shed, deaths and suspicions in the cluster,
# node 0's resident size.
set -euo pipefail
OLD=$(cd "$1" && pwd)
NEW=$(cd "$2" && pwd)
RATE=$3
DURATION=$4
ROUNDS=${5:-3}
HERE=$(cd "$(dirname "$0")/.." && pwd)
PY="$HERE/.venv/bin/python"

round() {  # tree label
  local tree=$1 label=$2 dir before after
  dir=$(mktemp -d)
  (cd "$dir" && PYTHONPATH="$tree" "$PY" -m ringkv cluster up --nodes 10 --base-port 47001 \
      --detach --no-metrics >/dev/null 2>&1 || PYTHONPATH="$tree" "$PY" -m ringkv cluster up \
      --nodes 10 --base-port 47001 --detach >/dev/null)
  sleep 8
  before=$(grep Udp: /proc/net/snmp | tail -1)
  (cd "$dir" && PYTHONPATH="$HERE" "$PY" "$HERE/scripts/flood.py" servers.txt \
      .ringkv/cluster.key 0 "$RATE" "$DURATION" > flood.json)
  after=$(grep Udp: /proc/net/snmp | tail -1)
  (cd "$dir" && PYTHONPATH="$tree" "$PY" -m ringkv cluster down >/dev/null)
  "$PY" - "$label" "$dir/flood.json" "$before" "$after" <<'PY'
import json, sys
label, path, before, after = sys.argv[1:5]
d = json.load(open(path))
drops = int(after.split()[5]) - int(before.split()[5])
r, f, c = d["replies_by_errcode"], d["flooded_node"], d["cluster"]
print(
    f"{label}: sent {d['sent']} ({d['sent_per_s']}/s) ok {r.get('0', 0)} no_key {r.get('1', 0)}"
    f" overload {r.get('3', 0)} unanswered {d['unanswered']} kernel_drops {drops}"
    f" read {f['requests_read']} shed {f['shed']} deaths {c['deaths']}"
    f" suspicions {c['suspicions']} min_count {c['min_count_after']}"
    f" rss_mb {(f['rss_after'] or 0) / 2**20:.0f}"
)
PY
  rm -rf "$dir"
  sleep 4
}

for _ in $(seq "$ROUNDS"); do
  round "$OLD" old
  round "$NEW" new
done
