#!/bin/bash
# Instructions (callgrind) of one record-and-claim cycle of the store, without commands or workers:
# (count of 1,200 cycles - count of 200) / 1,000. Repeatable whatever the machine's load.
#
#   bash benchmarks/store_cycle_instructions.sh .venv/bin [/tmp/basewt/.venv/bin ...]
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
for bin in "$@"; do
    BIN=$(cd "$bin" && pwd)
    D=$(mktemp -d /tmp/store-cycle.XXXX)
    printf 'db: queue.db\n' > "$D/config.yaml"
    export QUEUECTL_CONFIG=$D/config.yaml XDG_CACHE_HOME=$D/cache PYTHONHASHSEED=0
    unset PYTHONDONTWRITEBYTECODE
    (cd "$D" && "$BIN/python" "$HERE/store_cycle.py" 5 && rm -f queue.db*)     # byte-compile, fill the caches
    counts=()
    for n in 200 1200; do
        (cd "$D" && valgrind --tool=callgrind --callgrind-out-file="$D/cg.$n" "$BIN/python" "$HERE/store_cycle.py" $n \
            2>"$D/valgrind.log" && rm -f queue.db*)
        counts+=("$(grep -m1 '^summary:' "$D/cg.$n" | awk '{print $2}')")
    done
    echo "$bin: $(( (counts[1] - counts[0]) / 1000 )) instructions per record-and-claim cycle"
    rm -rf "$D"
done
