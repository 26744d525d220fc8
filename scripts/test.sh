#!/usr/bin/env bash
# The whole test suite: installs what it needs (scripts/bootstrap.sh: Debian packages, pinned
# virtualenvs, Go-built peers), then runs pytest over unit tests, real-peer integration tests and
# the quality gates (ansible-test sanity/units, ansible-lint, changelog lint, galaxy build).
# Peers start on demand and stop at the end; their logs are under tests/output/testbed/logs.
# Extra arguments go to pytest (e.g. scripts/test.sh tests/integration/block_sync -x).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
start=$(date +%s)
venv=$(scripts/bootstrap.sh --sanity-312 | tail -n 1)
echo "test: set-up done in $(( $(date +%s) - start )) s; running pytest with $venv/bin/python" >&2
export CBT_OUTPUT_DIR=${CBT_OUTPUT_DIR:-$repo/tests/output/testbed}
mkdir -p "$CBT_OUTPUT_DIR"
set +e
"$venv/bin/python" -m pytest "$@"
rc=$?
set -e
echo "test: finished in $(( $(date +%s) - start )) s (pytest exit $rc)" >&2
exit $rc
