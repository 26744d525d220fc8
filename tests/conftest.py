# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Session fixtures for the test bed and the Ansible runners.

Peers start on first use and stop at the end of the session. A peer that cannot start fails the
tests that need it with a ``PeerError`` naming the peer, the command and its log file.
"""

import os
import sys

import pytest

TESTS = os.path.dirname(os.path.abspath(__file__))

# Under pytest-xdist every worker gets its own output folder (peer state, logs, Ansible's temp
# and home), so two workers never share a file; the peers' binaries come from the shared cache.
_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if _WORKER and not os.environ.get("CBT_OUTPUT_DIR_WORKER"):
    _BASE = os.environ.get("CBT_OUTPUT_DIR", os.path.join(TESTS, "output", "testbed"))
    os.environ["CBT_OUTPUT_DIR"] = os.path.join(_BASE, _WORKER)
    os.environ["CBT_OUTPUT_DIR_WORKER"] = _WORKER
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)

from testbed import ansible_run  # noqa: E402 pylint: disable=wrong-import-position

_COLLECTIONS = str(ansible_run.collections_root())
if _COLLECTIONS not in sys.path:
    sys.path.insert(0, _COLLECTIONS)


@pytest.fixture(scope="session")
def kube_cluster():
    """A real etcd + kube-apiserver shared by the session (use unique names per test)."""
    from testbed.kube import KubeCluster  # pylint: disable=import-outside-toplevel

    cluster = KubeCluster(name="session").start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def vcsim():
    """Upstream govmomi vcsim with TLS, shared by the session."""
    from testbed.vcsim import Vcsim  # pylint: disable=import-outside-toplevel

    sim = Vcsim().start()
    yield sim
    sim.stop()


@pytest.fixture
def run_module():
    """``run_module(name, args, check=False, diff=False, verbosity=0, env=None)`` -> (result, run)."""
    return ansible_run.run_module


@pytest.fixture
def run_playbook():
    """``run_playbook(path_or_yaml, extra_vars=None, check=False, diff=False, ...)`` -> AnsibleRun."""
    return ansible_run.run_playbook
