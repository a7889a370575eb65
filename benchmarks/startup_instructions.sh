#!/bin/bash
# Instructions (callgrind, user space) of one short command against `python -c "import click"` with the
# same interpreter: issue 15's start-up ratio as a figure the machine's load does not move (wall time is
# what bench_enqueue.py reports; this is what it is made of). Each tree gets an instance like
# bench_enqueue's (config.yaml, a store, a validator in its plugins folder), byte-compiled, with warm
# caches; several trees are measured in one run, so their figures compare.
#
#   bash benchmarks/startup_instructions.sh /tmp/venv-main/bin .venv/bin
#
# usage: startup_instructions.sh BIN_DIR...   (a virtualenv's bin with queuectl installed)
set -euo pipefail
unset PYTHONDONTWRITEBYTECODE
count() { valgrind --tool=callgrind --callgrind-out-file="$1" "${@:2}" >/dev/null 2>>"$D/valgrind.log"
          grep -m1 "^summary:" "$1" | awk '{print $2}'; }
for BIN in "$@"; do
  BIN=$(cd "$BIN" && pwd)
  D=$(mktemp -d /tmp/startup-ir.XXXX)
  mkdir -m 755 "$D/plugins"
  printf 'from queuectl import hookimpl, JobValidationError\n\n@hookimpl\ndef queuectl_validate_job(job, queue):\n    if "FORBIDDEN" in str(job.get("command", "")):\n        raise JobValidationError("refused")\n' > "$D/plugins/bench_validator.py"
  printf 'db: "queue.db"\nplugins-dir: "plugins"\n' > "$D/config.yaml"
  export QUEUECTL_CONFIG=$D/config.yaml XDG_CACHE_HOME=$D/cache XDG_DATA_HOME=$D/data XDG_CONFIG_HOME=$D/xdg-config
  cd "$D"
  "$BIN/python" -m compileall -q "$("$BIN/python" -c 'import os, queuectl; print(os.path.dirname(queuectl.__file__))')"
  "$BIN/queuectl" init >/dev/null
  for i in $(seq 30); do echo '{"command": "true"}'; done | "$BIN/queuectl" enqueue --file - >/dev/null   # list shows 20 rows
  sleep 2.2                               # the caches take only sources unchanged for SETTLE seconds
  for args in "enqueue -c true" "status" "list --limit 20" "--help"; do
    "$BIN/queuectl" $args >/dev/null; "$BIN/queuectl" $args >/dev/null
  done
  click=$(count "$D/cg.click" "$BIN/python" -c "import click")
  line="$BIN: import click $click"
  for args in "enqueue -c true" "status" "list --limit 20" "--help"; do
    n=$(count "$D/cg.cmd" "$BIN/queuectl" $args)
    line="$line | $args $n ($("$BIN/python" -c "print(f'{$n / $click:.3f}')"))"
  done
  echo "$line"
  cd /; rm -rf "$D"
done
