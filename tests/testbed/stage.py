# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Copy the checkout into ``<dest>/ansible_collections/cbt/toolkit`` for ansible-test.

ansible-test must run inside a tree of that shape and lists files through git, so the copy holds
exactly the files git tracks plus untracked files git does not ignore, and gets its own
``git init`` + ``git add``. The repository root itself stays the collection.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from testbed.core import REPO_ROOT


def source_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=REPO_ROOT, capture_output=True, check=True).stdout
    return [f for f in out.decode().split("\0") if f and (REPO_ROOT / f).exists()]


def stage_collection(dest: Path) -> Path:
    target = Path(dest) / "ansible_collections" / "cbt" / "toolkit"
    if target.exists():
        # keep tests/output (ansible-test's own caches) between runs, refresh everything else
        for child in target.iterdir():
            if child.name == "tests":
                for sub in child.iterdir():
                    if sub.name != "output":
                        (shutil.rmtree if sub.is_dir() and not sub.is_symlink() else Path.unlink)(sub)
            elif child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    target.mkdir(parents=True, exist_ok=True)
    for rel in source_files():
        src = REPO_ROOT / rel
        dst = target / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            dst.symlink_to(src.readlink())
        else:
            shutil.copy2(src, dst)
    env = {"GIT_AUTHOR_NAME": "stage", "GIT_AUTHOR_EMAIL": "stage@localhost",
           "GIT_COMMITTER_NAME": "stage", "GIT_COMMITTER_EMAIL": "stage@localhost", "PATH": "/usr/bin:/bin"}
    subprocess.run(["git", "init", "-q"], cwd=target, check=True, env=env)
    subprocess.run(["git", "add", "-A"], cwd=target, check=True, env=env)
    return target
