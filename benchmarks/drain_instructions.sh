#!/bin/bash
# Instructions (callgrind, user space) of each process of a burst pool draining N `true` jobs: a figure
# that does not move with the machine's load, unlike wall or CPU time. The worker is the process whose
# count grows with N; its instructions per job = (count at N2 - count at N1) / (N2 - N1).
#
#   bash benchmarks/drain_instructions.sh .venv/bin 100; bash benchmarks/drain_instructions.sh .venv/bin 500
#
# usage: drain_instructions.sh BIN_DIR JOBS [WORKERS]   (BIN_DIR: a virtualenv's bin with queuectl installed)
set -euo pipefail
BIN=$(cd "$1" && pwd); N=$2; W=${3:-1}
D=$(mktemp -d /tmp/drain-ir.XXXX)
cd "$D"
printf 'db: queue.db\n' > config.yaml
export QUEUECTL_CONFIG=$D/config.yaml XDG_CACHE_HOME=$D/cache
unset PYTHONDONTWRITEBYTECODE
"$BIN/python" -c "from queuectl import Queue; Queue.open(config='$D/config.yaml').enqueue_many([{'command': 'true'}] * $N)"
valgrind --tool=callgrind --trace-children=yes --trace-children-skip='*/sh,*/true' --callgrind-out-file="$D/cg.%p" \
  "$BIN/queuectl" worker start --count "$W" --burst >/dev/null 2>"$D/valgrind.log"
echo "completed: $("$BIN/queuectl" status --json | "$BIN/python" -c 'import json,sys; print(json.load(sys.stdin)["counts"]["completed"])')"
for f in "$D"/cg.*; do grep -m1 "^summary:" "$f" | awk '{print $2}'; done | sort -n | tr '\n' ' '
echo "(instructions per process, smallest first; the worker is the one that grows with JOBS)"
rm -rf "$D"
