#!/usr/bin/env bash
# The main job on the embedded default, on a fresh machine:
#   1. scripts/bootstrap.sh --main: Debian packages (nbdkit, libnbd, qemu-utils, ...), the pinned
#      virtualenv and the CBT-capable vCenter simulator (Go, built once and cached);
#   2. scripts/vm_migration_demo.py: starts the simulator with three VMs whose disks hold real
#      data, runs `ansible-playbook -i playbooks/inventory playbooks/vm_migration.yml` (CBT gate,
#      warm rounds with a workload writing between them, cutover, whole-disk digests) with SQLite
#      checkpoints and image-file targets, shows the rounds shrinking and the summary, and prints
#      where the report is. The simulator is stopped on every exit path.
# Output: ${CBT_OUTPUT_DIR:-tests/output/main}/migration (report/, targets/, checkpoints.sqlite,
# ansible.log). Extra arguments go to ansible-playbook (e.g. scripts/main.sh -e vm_migration_cutover=false).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
start=$(date +%s)
output=${CBT_OUTPUT_DIR:-$repo/tests/output/main}
mkdir -p "$output"

echo "main: setting up (Debian packages, virtualenv, simulator build; cached after the first run) ..." >&2
venv=$(scripts/bootstrap.sh --main | tail -n 1)
echo "main: set-up done in $(( $(date +%s) - start )) s; virtualenv $venv" >&2

pidfile=$output/cbtsim.pid
# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
  # The demo driver stops the simulator itself; this only catches a driver that was killed hard.
  if [ -s "$pidfile" ]; then
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
      echo "main: stopping the simulator (pid $pid)" >&2
      kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

set +e
"$venv/bin/python" scripts/vm_migration_demo.py --output "$output" --pid-file "$pidfile" -- "$@"
rc=$?
set -e
echo "main: finished in $(( $(date +%s) - start )) s (exit $rc)" >&2
exit $rc
