#!/usr/bin/env bash
# Install everything the main job and the test suite need, pinned and cached:
#   - Debian packages (nbdkit, libnbd with its Python binding, qemu-utils, PostgreSQL, ...);
#   - a virtualenv on the system Python (so Debian's python3-libnbd is importable) with the
#     Python packages pinned in tests/constraints.txt;
#   - with --sanity-312: a Python 3.12 virtualenv with ansible-core 2.21 for sanity, if a
#     Python 3.12 interpreter exists;
#   - the Go-built test-bed peers (tests/peers/build.sh);
#   - ansible-test's offline pip bootstrap stand-in.
# A warm run changes nothing and takes seconds. Prints the venv path on its last line.
#
# Usage: scripts/bootstrap.sh [--main] [--no-peers] [--sanity-312]
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${CBT_CACHE_DIR:-$HOME/.cache/cbt-toolkit}
export CBT_CACHE_DIR=$cache
mkdir -p "$cache"

peers=all
sanity312=no
for arg in "$@"; do
  case "$arg" in
    --main) peers=main ;;
    --no-peers) peers=none ;;
    --sanity-312) sanity312=yes ;;
    *) echo "bootstrap: unknown option $arg" >&2; exit 2 ;;
  esac
done

log() { echo "bootstrap: $*" >&2; }

# ---------------------------------------------------------------- Debian packages
debs=(nbdkit libnbd-bin python3-libnbd qemu-utils postgresql docker-registry buildah skopeo
      shellcheck git python3-venv ca-certificates)
missing=()
for p in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  export DEBIAN_FRONTEND=noninteractive
  "${sudo_cmd[@]}" apt-get update -qq >"$cache/apt-update.log" 2>&1 || {
    log "apt-get update failed, see $cache/apt-update.log"; exit 1; }
  # policy-rc.d keeps Debian from starting system services (the test bed starts its own).
  if [ ! -e /usr/sbin/policy-rc.d ] && [ "$(id -u)" -eq 0 ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d
  fi
  "${sudo_cmd[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" >"$cache/apt-install.log" 2>&1 || {
    log "apt-get install ${missing[*]} failed, see $cache/apt-install.log"; tail -20 "$cache/apt-install.log" >&2; exit 1; }
fi

# ---------------------------------------------------------------- main venv (system Python)
syspy=/usr/bin/python3
lock=$repo/tests/constraints.txt
key=$( (cat "$repo/tests/requirements-test.txt" "$lock" 2>/dev/null; $syspy -V) | sha256sum | cut -c1-12)
venv=$cache/venv-$key
if [ ! -f "$venv/.complete" ]; then
  log "creating virtualenv $venv"
  rm -rf "$venv"
  $syspy -m venv --system-site-packages "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade "pip==25.3" >"$cache/pip-install.log" 2>&1 || true
  if ! "$venv/bin/python" -m pip install -q --disable-pip-version-check \
        -r "$repo/tests/requirements-test.txt" -c "$lock" >>"$cache/pip-install.log" 2>&1; then
    log "pip install failed, see $cache/pip-install.log"; tail -20 "$cache/pip-install.log" >&2; exit 1
  fi
  touch "$venv/.complete"
fi
ln -sfn "$(basename "$venv")" "$cache/venv"
"$venv/bin/python" -c "import nbd" 2>/dev/null || { log "python3-libnbd is not importable from $venv"; exit 1; }

# ---------------------------------------------------------------- Python 3.12 venv for ansible-core 2.21 sanity
if [ "$sanity312" = yes ]; then
  py312=
  for cand in python3.12 /usr/bin/python3.12 "$HOME"/.pyenv/versions/3.12*/bin/python3.12; do
    if "$cand" -c 'import sys; assert sys.version_info[:2] == (3, 12)' >/dev/null 2>&1; then
      py312=$cand; break
    fi
  done
  if [ -n "$py312" ]; then
    key312=$( (cat "$repo/tests/constraints-sanity-2.21.txt"; "$py312" -V) | sha256sum | cut -c1-12)
    venv312=$cache/venv312-$key312
    if [ ! -f "$venv312/.complete" ]; then
      log "creating Python 3.12 virtualenv $venv312 (ansible-core 2.21 sanity)"
      rm -rf "$venv312"
      "$py312" -m venv "$venv312"
      if ! "$venv312/bin/python" -m pip install -q --disable-pip-version-check \
            -r "$repo/tests/constraints-sanity-2.21.txt" >"$cache/pip312-install.log" 2>&1; then
        log "pip install (3.12) failed, see $cache/pip312-install.log"; exit 1
      fi
      touch "$venv312/.complete"
    fi
    ln -sfn "$(basename "$venv312")" "$cache/venv312"
  else
    rm -f "$cache/venv312"
    log "no Python 3.12 interpreter: sanity runs on ansible-core 2.19 only"
  fi
fi

# ---------------------------------------------------------------- ansible-test offline pip bootstrap
"$venv/bin/python" "$repo/tests/utils/install_get_pip_standin.py"
[ ! -x "$cache/venv312/bin/python" ] || "$cache/venv312/bin/python" "$repo/tests/utils/install_get_pip_standin.py"

# ---------------------------------------------------------------- Go peers
case "$peers" in
  all) "$repo/tests/peers/build.sh" >&2 ;;
  main) "$repo/tests/peers/build.sh" cbtsim >&2 ;;
  none) ;;
esac

echo "$venv"
