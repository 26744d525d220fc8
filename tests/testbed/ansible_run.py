# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run the collection's modules and playbooks through real ``ansible`` / ``ansible-playbook``.

Integration tests use these so that argument validation, check mode, diff mode, ``no_log`` and
AnsiballZ packaging are exercised exactly as users run them.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from testbed.core import REPO_ROOT, output_dir


def collections_root() -> Path:
    """A folder holding ``ansible_collections/cbt/toolkit`` -> this checkout (a symlink)."""
    digest = hashlib.sha256(str(REPO_ROOT).encode()).hexdigest()[:10]
    root = Path(tempfile.gettempdir()) / ("cbt-toolkit-collections-%s" % digest)
    link = root / "ansible_collections" / "cbt" / "toolkit"
    if not link.is_symlink() or link.resolve() != REPO_ROOT:
        link.parent.mkdir(parents=True, exist_ok=True)
        tmp = link.parent / (".toolkit.%d.tmp" % os.getpid())
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        tmp.symlink_to(REPO_ROOT)
        os.replace(tmp, link)
    return root


def _venv_bin() -> Path:
    return Path(sys.executable).parent


def ansible_env(extra=None) -> dict:
    root = collections_root()
    env = dict(os.environ)
    env.update({
        "ANSIBLE_COLLECTIONS_PATH": "%s:%s" % (root, env.get("ANSIBLE_COLLECTIONS_PATH", "")),
        "ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.json",
        "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1",
        "ANSIBLE_PYTHON_INTERPRETER": sys.executable,
        "ANSIBLE_LOCALHOST_WARNING": "0",
        "ANSIBLE_INVENTORY_UNPARSED_WARNING": "0",
        "ANSIBLE_RETRY_FILES_ENABLED": "0",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_LOCAL_TEMP": str(output_dir() / "ansible-tmp"),
        "ANSIBLE_HOME": str(output_dir() / "ansible-home"),
        "PATH": "%s:%s" % (_venv_bin(), env.get("PATH", "")),
    })
    env.update(extra or {})
    return env


class AnsibleRun:
    """Outcome of one ansible / ansible-playbook invocation."""

    def __init__(self, argv, proc, data):
        self.argv = argv
        self.rc = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        self.data = data

    def task_results(self, host="localhost"):
        """The per-task results for ``host`` in play order (json callback)."""
        out = []
        for play in (self.data or {}).get("plays", []):
            for task in play.get("tasks", []):
                res = task.get("hosts", {}).get(host)
                if res is not None:
                    res = dict(res)
                    res["_task"] = task.get("task", {}).get("name")
                    out.append(res)
        return out

    @property
    def stats(self):
        return (self.data or {}).get("stats", {})

    def __repr__(self):
        return "AnsibleRun(rc=%s, argv=%r)\nstdout:\n%s\nstderr:\n%s" % (
            self.rc, self.argv, self.stdout[-4000:], self.stderr[-4000:])


def _run(argv, env_extra=None, timeout=900, cwd=None):
    proc = subprocess.run(argv, capture_output=True, text=True, env=ansible_env(env_extra),
                          timeout=timeout, cwd=cwd, check=False)
    data = None
    text = proc.stdout.strip()
    if text:
        start = text.find("{")
        try:
            data = json.loads(text[start:]) if start >= 0 else None
        except ValueError:
            data = None
    return AnsibleRun(argv, proc, data)


def run_module(module, args=None, check=False, diff=False, verbosity=0, env=None, timeout=900):
    """Run ``cbt.toolkit.<module>`` (or a FQCN) on localhost; return ``(result_dict, AnsibleRun)``."""
    name = module if "." in module else "cbt.toolkit.%s" % module
    argv = [str(_venv_bin() / "ansible"), "localhost", "-c", "local", "-i", "localhost,", "-m", name]
    if args:
        argv += ["-a", json.dumps(args)]
    if check:
        argv.append("--check")
    if diff:
        argv.append("--diff")
    if verbosity:
        argv.append("-" + "v" * verbosity)
    run = _run(argv, env, timeout)
    results = run.task_results()
    if not results:
        raise AssertionError("ansible produced no result for %s:\n%r" % (name, run))
    return results[-1], run


def run_playbook(playbook, extra_vars=None, check=False, diff=False, verbosity=0, env=None,
                 inventory="localhost,", timeout=1800, tags=None, limit=None):
    """Run a playbook (a path, or YAML text written to a temp file); return an ``AnsibleRun``."""
    path = Path(playbook) if "\n" not in str(playbook) else None
    if path is None or not path.exists():
        fd, tmp = tempfile.mkstemp(suffix=".yml", dir=str(output_dir()))
        with os.fdopen(fd, "w") as handle:
            handle.write(str(playbook))
        path = Path(tmp)
    argv = [str(_venv_bin() / "ansible-playbook"), "-i", inventory, str(path)]
    if inventory == "localhost,":
        argv += ["-c", "local"]
    if extra_vars:
        argv += ["-e", json.dumps(extra_vars)]
    if check:
        argv.append("--check")
    if diff:
        argv.append("--diff")
    if tags:
        argv += ["--tags", tags]
    if limit:
        argv += ["--limit", limit]
    if verbosity:
        argv.append("-" + "v" * verbosity)
    return _run(argv, env, timeout)
