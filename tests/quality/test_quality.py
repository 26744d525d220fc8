# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Collection quality gates: ansible-test units, ansible-lint, changelog lint, galaxy build (sanity:
test_sanity_219.py and test_sanity_221.py, separate so they run in parallel).

ansible-test runs offline with ``--venv``: scripts/bootstrap.sh installs the pip bootstrap
stand-in in ansible-test's cache. Each gate fails with the tool's own output.
"""

import tarfile

from quality_helpers import VENV_BIN, explain, run
from testbed.ansible_run import collections_root
from testbed.core import REPO_ROOT, output_dir


def test_ansible_test_units(staged):
    proc = run([VENV_BIN / "ansible-test", "units", "--venv", "--python", "3.11", "--color", "no",
                "--requirements"], staged)
    assert proc.returncode == 0, explain(proc)


def test_ansible_lint_production_profile():
    proc = run([VENV_BIN / "ansible-lint", "--offline", "--profile", "production", "--nocolor"], REPO_ROOT,
               env={"ANSIBLE_HOME": str(output_dir() / "ansible-lint-home"),
                    "ANSIBLE_COLLECTIONS_PATH": str(collections_root())})
    assert proc.returncode == 0, explain(proc)
    assert "passed" in (proc.stdout + proc.stderr).lower(), explain(proc)


def test_changelog_fragments_lint():
    proc = run([VENV_BIN / "antsibull-changelog", "lint"], REPO_ROOT)
    assert proc.returncode == 0, explain(proc)


def test_galaxy_build_has_no_caches_or_test_output(tmp_path, staged):
    proc = run([VENV_BIN / "ansible-galaxy", "collection", "build", "--output-path", tmp_path], staged)
    assert proc.returncode == 0, explain(proc)
    tarballs = list(tmp_path.glob("cbt-toolkit-*.tar.gz"))
    assert len(tarballs) == 1, proc.stdout
    with tarfile.open(tarballs[0]) as tar:
        names = tar.getnames()
    assert "MANIFEST.json" in names and "plugins/modules/block_sync.py" in names, names[:50]
    forbidden = (".ansible/", ".pytest_cache", "tests/output", "__pycache__", ".cache/", "collections/",
                 ".git/", "benchmarks/output", ".venv")
    bad = [n for n in names if any(f in n + "/" for f in forbidden) or n.endswith(".pyc")]
    assert not bad, "caches or test output in the collection tarball: %s" % bad[:20]
