# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""ansible-test sanity on ansible-core 2.19 (the system Python 3.11), offline with ``--venv``
(scripts/bootstrap.sh installs the pip bootstrap stand-in in ansible-test's cache)."""

from quality_helpers import VENV_BIN, explain, run


def test_ansible_test_sanity_core_219(staged):
    proc = run([VENV_BIN / "ansible-test", "sanity", "--venv", "--python", "3.11", "--color", "no"], staged)
    assert proc.returncode == 0, explain(proc)
