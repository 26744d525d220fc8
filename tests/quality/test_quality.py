# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Collection quality gates: ansible-test sanity/units, ansible-lint, changelog lint, galaxy build.

ansible-test runs offline with ``--venv``: scripts/bootstrap.sh installs the pip bootstrap
stand-in in ansible-test's cache. Each gate fails with the tool's own output.
"""

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from testbed.ansible_run import collections_root
from testbed.core import REPO_ROOT, cache_dir, output_dir
from testbed.stage import stage_collection

VENV_BIN = Path(sys.executable).parent


def _run(argv, cwd, timeout=1800, env=None):
    full_env = dict(os.environ)
    full_env["PATH"] = "%s:%s" % (Path(argv[0]).parent, full_env.get("PATH", ""))
    full_env.update(env or {})
    proc = subprocess.run([str(a) for a in argv], cwd=str(cwd), capture_output=True, text=True,
                          timeout=timeout, env=full_env, check=False)
    return proc


def _explain(proc):
    return "exit %s\n--- stdout ---\n%s\n--- stderr ---\n%s" % (
        proc.returncode, proc.stdout[-12000:], proc.stderr[-6000:])


@pytest.fixture(scope="module")
def staged():
    return stage_collection(output_dir() / "stage")


def test_ansible_test_sanity_core_219(staged):
    proc = _run([VENV_BIN / "ansible-test", "sanity", "--venv", "--python", "3.11", "--color", "no"], staged)
    assert proc.returncode == 0, _explain(proc)


def _python312():
    for cand in ("python3.12", "/usr/bin/python3.12"):
        try:
            if subprocess.run([cand, "-c", "import sys; assert sys.version_info[:2] == (3, 12)"],
                              capture_output=True, check=False).returncode == 0:
                return cand
        except OSError:
            continue
    found = sorted(Path.home().glob(".pyenv/versions/3.12*/bin/python3.12"))
    return str(found[0]) if found else None


def test_ansible_test_sanity_core_221(staged):
    venv312 = cache_dir() / "venv312" / "bin"
    if not (venv312 / "ansible-test").exists():
        if _python312():
            pytest.fail("a Python 3.12 interpreter exists but the ansible-core 2.21 virtualenv is missing: "
                        "run scripts/bootstrap.sh --sanity-312")
        pytest.skip("no Python 3.12 interpreter on this machine: ansible-core 2.21 needs Python >= 3.12")
    proc = _run([venv312 / "ansible-test", "sanity", "--venv", "--python", "3.12", "--color", "no"], staged)
    assert proc.returncode == 0, _explain(proc)


def test_ansible_test_units(staged):
    proc = _run([VENV_BIN / "ansible-test", "units", "--venv", "--python", "3.11", "--color", "no",
                 "--requirements"], staged)
    assert proc.returncode == 0, _explain(proc)


def test_ansible_lint_production_profile():
    proc = _run([VENV_BIN / "ansible-lint", "--offline", "--profile", "production", "--nocolor"], REPO_ROOT,
                env={"ANSIBLE_HOME": str(output_dir() / "ansible-lint-home"),
                     "ANSIBLE_COLLECTIONS_PATH": str(collections_root())})
    assert proc.returncode == 0, _explain(proc)
    assert "passed" in (proc.stdout + proc.stderr).lower(), _explain(proc)


def test_changelog_fragments_lint():
    proc = _run([VENV_BIN / "antsibull-changelog", "lint"], REPO_ROOT)
    assert proc.returncode == 0, _explain(proc)


def test_galaxy_build_has_no_caches_or_test_output(tmp_path, staged):
    proc = _run([VENV_BIN / "ansible-galaxy", "collection", "build", "--output-path", tmp_path], staged)
    assert proc.returncode == 0, _explain(proc)
    tarballs = list(tmp_path.glob("cbt-toolkit-*.tar.gz"))
    assert len(tarballs) == 1, proc.stdout
    with tarfile.open(tarballs[0]) as tar:
        names = tar.getnames()
    assert "MANIFEST.json" in names and "plugins/modules/block_sync.py" in names, names[:50]
    forbidden = (".ansible/", ".pytest_cache", "tests/output", "__pycache__", ".cache/", "collections/",
                 ".git/", "benchmarks/output", ".venv")
    bad = [n for n in names if any(f in n + "/" for f in forbidden) or n.endswith(".pyc")]
    assert not bad, "caches or test output in the collection tarball: %s" % bad[:20]
