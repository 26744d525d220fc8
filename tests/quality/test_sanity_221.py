# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""ansible-test sanity on ansible-core 2.21 (Python 3.12 virtualenv from scripts/bootstrap.sh --sanity-312)."""

import pytest

from quality_helpers import explain, python312, run
from testbed.core import cache_dir


def test_ansible_test_sanity_core_221(staged):
    venv312 = cache_dir() / "venv312" / "bin"
    if not (venv312 / "ansible-test").exists():
        if python312():
            pytest.fail("a Python 3.12 interpreter exists but the ansible-core 2.21 virtualenv is missing: "
                        "run scripts/bootstrap.sh --sanity-312")
        pytest.skip("no Python 3.12 interpreter on this machine: ansible-core 2.21 needs Python >= 3.12")
    proc = run([venv312 / "ansible-test", "sanity", "--venv", "--python", "3.12", "--color", "no"], staged)
    assert proc.returncode == 0, explain(proc)
