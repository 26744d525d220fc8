# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Shared helpers of the quality gates (each gate runs the tool and fails with its own output)."""

import os
import subprocess
import sys
from pathlib import Path

VENV_BIN = Path(sys.executable).parent


def run(argv, cwd, timeout=1800, env=None):
    full_env = dict(os.environ)
    full_env["PATH"] = "%s:%s" % (Path(argv[0]).parent, full_env.get("PATH", ""))
    full_env.update(env or {})
    proc = subprocess.run([str(a) for a in argv], cwd=str(cwd), capture_output=True, text=True,
                          timeout=timeout, env=full_env, check=False)
    return proc


def explain(proc):
    return "exit %s\n--- stdout ---\n%s\n--- stderr ---\n%s" % (
        proc.returncode, proc.stdout[-12000:], proc.stderr[-6000:])


def python312():
    for cand in ("python3.12", "/usr/bin/python3.12"):
        try:
            if subprocess.run([cand, "-c", "import sys; assert sys.version_info[:2] == (3, 12)"],
                              capture_output=True, check=False).returncode == 0:
                return cand
        except OSError:
            continue
    found = sorted(Path.home().glob(".pyenv/versions/3.12*/bin/python3.12"))
    return str(found[0]) if found else None
