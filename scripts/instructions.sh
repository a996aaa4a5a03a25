#!/usr/bin/env bash
# Instructions one node spends per message, counted by callgrind: repeatable
# whatever else the machine does. Run on two trees to compare commits:
#
#   scripts/instructions.sh TREE KIND...     KIND: get put forward replicate
#   git worktree add /tmp/old 01cf7af && scripts/instructions.sh /tmp/old get
#
# (1,000 messages) minus (none), divided by 1,000; hash seed fixed.
set -euo pipefail
HERE=$(cd "$(dirname "$0")/.." && pwd)
TREE=$(cd "$1" && pwd)
shift
N=1000
count() {
  PYTHONHASHSEED=0 PYTHONPATH="$TREE" valgrind --tool=callgrind --callgrind-out-file=/dev/null \
    "$HERE/.venv/bin/python" "$HERE/scripts/hot_path.py" "$1" "$2" 2>&1 |
    sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
for kind in "$@"; do
  none=$(count 0 "$kind")
  some=$(count "$N" "$kind")
  echo "$kind $(( (some - none) / N )) instructions per message"
done
