#!/usr/bin/env bash
# Build the Go test-bed peers (kube-apiserver, etcd, vcsim, the CBT vCenter simulator, the
# snapshot-metadata sidecar, the test CSI driver, ...) from the Go module proxy at the versions
# pinned in each tests/peers/<peer>/go.mod + go.sum.
#
# Each peer folder is a Go module with a BINARIES file; every line is
#   <binary-name> <package-path> [<extra ldflags ...>]
# Binaries land in $CBT_CACHE_DIR/bin/<name>-<key> (key = hash of the Go version and the peer
# folder's files); a warm run rebuilds nothing. The symlink tests/output/bin/<name> of THIS checkout
# points at the binary built from its own peer sources (the test bed looks there first), so two
# checkouts sharing the cache never run each other's peers; $CBT_CACHE_DIR/bin/<name> points at the
# newest build for use by hand.
#
# Usage: tests/peers/build.sh [peer ...]   (default: every peer folder)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${CBT_CACHE_DIR:-$HOME/.cache/cbt-toolkit}
bindir=$cache/bin
logdir=${CBT_OUTPUT_DIR:-$here/../output/testbed}/logs
links=$here/../output/bin
mkdir -p "$bindir" "$logdir" "$links"

if ! command -v go >/dev/null 2>&1; then
  echo "tests/peers/build.sh: the Go toolchain is missing (expected on this machine kind at /usr/local/go/bin/go)" >&2
  exit 1
fi
export GOFLAGS="${GOFLAGS:-} -mod=readonly -buildvcs=false"
export CGO_ENABLED=${CGO_ENABLED:-0}
gover=$(go env GOVERSION)

peers=("$@")
if [ ${#peers[@]} -eq 0 ]; then
  for d in "$here"/*/; do
    [ -f "$d/BINARIES" ] && peers+=("$(basename "$d")")
  done
fi

status=0
for peer in "${peers[@]}"; do
  dir=$here/$peer
  if [ ! -f "$dir/BINARIES" ]; then
    echo "tests/peers/build.sh: unknown peer '$peer' (no $dir/BINARIES)" >&2
    exit 2
  fi
  key=$( (echo "$gover"; cd "$dir" && find . -type f ! -name '*.log' -print0 | sort -z | xargs -0 sha256sum) | sha256sum | cut -c1-12)
  while read -r name pkg ldflags; do
    case "$name" in ''|'#'*) continue ;; esac
    out=$bindir/$name-$key
    if [ -x "$out" ]; then
      ln -sfn "$(basename "$out")" "$bindir/$name"
      ln -sfn "$out" "$links/$name"
      echo "peer $peer: $name cached ($out)"
      continue
    fi
    log=$logdir/build-$name.log
    echo "peer $peer: building $name ($pkg) ..."
    start=$(date +%s)
    # shellcheck disable=SC2086
    if (cd "$dir" && go build -trimpath -ldflags "-s -w ${ldflags:-}" -o "$out.tmp" "$pkg") >"$log" 2>&1; then
      mv "$out.tmp" "$out"
      ln -sfn "$(basename "$out")" "$bindir/$name"
      ln -sfn "$out" "$links/$name"
      echo "peer $peer: built $name in $(( $(date +%s) - start )) s"
    else
      rm -f "$out.tmp"
      echo "test bed peer $peer: building $name failed" >&2
      echo "  command: (cd $dir && go build -trimpath -ldflags \"-s -w ${ldflags:-}\" -o $out $pkg)" >&2
      echo "  log: $log" >&2
      tail -n 30 "$log" | sed 's/^/    /' >&2
      status=1
    fi
  done < "$dir/BINARIES"
done
exit $status
