# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The test tree stays collectable as one suite.

pytest imports test folders without ``__init__.py`` by basename: two test or helper modules with
the same basename in different folders break collection of the whole suite, and only one
``conftest`` stays importable by that name (so tests must never ``import conftest``).
"""

import ast
import os
from collections import defaultdict
from pathlib import Path

from testbed.core import REPO_ROOT

TESTS = REPO_ROOT / "tests"
SKIP_PARTS = {"output", "peers", "targets", "__pycache__"}


def _python_files():
    # never descend into the skipped folders: tests/output changes under other tests running beside this one
    found = []
    for folder, dirs, files in os.walk(str(TESTS)):
        dirs[:] = [d for d in dirs if d not in SKIP_PARTS]
        found.extend(Path(folder) / name for name in files if name.endswith(".py"))
    return sorted(found)


def test_module_basenames_are_unique():
    seen = defaultdict(list)
    for path in _python_files():
        if path.name not in ("conftest.py", "__init__.py"):
            seen[path.name].append(str(path.relative_to(REPO_ROOT)))
    clashes = {name: paths for name, paths in seen.items() if len(paths) > 1}
    assert not clashes, "rename these so each basename is unique: %s" % clashes


def test_no_test_imports_conftest():
    offenders = []
    for path in _python_files():
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            if "conftest" in names:
                offenders.append("%s:%d" % (path.relative_to(REPO_ROOT), node.lineno))
    assert not offenders, "move the shared helpers out of conftest.py into a helper module: %s" % offenders
