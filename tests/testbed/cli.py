# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Start, inspect and stop the local test bed by hand.

    tests/testbed/cli.py up [PEER ...]    start peers (default: kube vcsim cbtsim postgres) and keep them running
    tests/testbed/cli.py env              print the connection variables as shell exports
    tests/testbed/cli.py down             stop every peer started by 'up'
    tests/testbed/cli.py status           show what runs

Run it with the project's virtualenv python (scripts/bootstrap.sh prints its path), e.g.
``eval "$(~/.cache/cbt-toolkit/venv/bin/python tests/testbed/cli.py env)"``.
"""

import argparse
import importlib
import json
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from testbed import core  # noqa: E402 pylint: disable=wrong-import-position

PEERS = {
    # name: (module, class)
    "kube": ("testbed.kube", "KubeCluster"),
    "vcsim": ("testbed.vcsim", "Vcsim"),
    "cbtsim": ("testbed.cbtsim", "CbtSim"),
    "postgres": ("testbed.postgres", "Postgres"),
}
DEFAULT = ["kube", "vcsim", "cbtsim", "postgres"]


def state_path():
    return core.output_dir() / "cli-state.json"


def load_state():
    try:
        return json.loads(state_path().read_text())
    except (OSError, ValueError):
        return {"peers": {}}


def alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def cmd_up(names):
    state = load_state()
    for name in names or DEFAULT:
        if name not in PEERS:
            sys.exit("unknown peer %r; known: %s" % (name, ", ".join(sorted(PEERS))))
        old = state["peers"].get(name)
        if old and all(alive(pid) for pid in old["pids"]):
            print("%s: already running" % name, file=sys.stderr)
            continue
        module, cls = PEERS[name]
        before = len(core.STARTED)
        peer = getattr(importlib.import_module(module), cls)()
        peer.start()
        procs = core.STARTED[before:]
        state["peers"][name] = {
            "pids": [p.proc.pid for p in procs if p.proc is not None],
            "logs": [str(p.log) for p in procs],
            "env": {k: str(v) for k, v in peer.env().items()},
        }
        core.write_json(state_path(), state)
        print("%s: up (%s)" % (name, ", ".join(str(p.log) for p in procs)), file=sys.stderr)
    cmd_env()


def cmd_env():
    state = load_state()
    for name, info in sorted(state["peers"].items()):
        print("# %s" % name)
        for key, value in sorted(info["env"].items()):
            print("export %s=%s" % (key, json.dumps(value)))


def cmd_down():
    state = load_state()
    for name, info in sorted(state["peers"].items()):
        for pid in info["pids"]:
            try:
                os.killpg(pid, signal.SIGTERM)
            except OSError:
                pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(alive(p) for p in info["pids"]):
            time.sleep(0.1)
        for pid in info["pids"]:
            if alive(pid):
                try:
                    os.killpg(pid, signal.SIGKILL)
                except OSError:
                    pass
        print("%s: down" % name, file=sys.stderr)
    core.write_json(state_path(), {"peers": {}})


def cmd_status():
    state = load_state()
    if not state["peers"]:
        print("no peers started by 'up'")
    for name, info in sorted(state["peers"].items()):
        running = all(alive(pid) for pid in info["pids"])
        print("%-9s %s  logs: %s" % (name, "running" if running else "STOPPED", ", ".join(info["logs"])))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up")
    up.add_argument("peers", nargs="*")
    sub.add_parser("env")
    sub.add_parser("down")
    sub.add_parser("status")
    args = parser.parse_args()
    try:
        if args.command == "up":
            cmd_up(args.peers)
        elif args.command == "env":
            cmd_env()
        elif args.command == "down":
            cmd_down()
        else:
            cmd_status()
    except core.PeerError as exc:
        sys.exit(str(exc))


if __name__ == "__main__":
    main()
