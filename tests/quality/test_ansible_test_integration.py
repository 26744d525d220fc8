# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""``ansible-test integration --venv`` over tests/integration/targets against the real test bed.

The peers' endpoints reach the targets through ``tests/integration/integration_config.yml``
(ansible-test loads it as extra variables), written into the staged copy of the collection.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from testbed.core import output_dir
from testbed.stage import stage_collection

VENV_BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def cbtsim_peer():
    from testbed.cbtsim import CbtSim  # pylint: disable=import-outside-toplevel

    sim = CbtSim().start()
    yield sim
    sim.stop()


def test_ansible_test_integration_targets(kube_cluster, vcsim, cbtsim_peer, tmp_path):
    staged = stage_collection(output_dir() / "stage-integration")
    targets = sorted(p.name for p in (staged / "tests" / "integration" / "targets").iterdir() if p.is_dir())
    assert targets, "no ansible-test integration targets found under tests/integration/targets"
    work = tmp_path / "work"
    work.mkdir()
    config = {
        "cbt_work_dir": str(work),
        "cbt_kubeconfig": str(kube_cluster.kubeconfig),
        "cbt_vcsim": {
            "hostname": vcsim.host, "port": vcsim.port,
            "username": vcsim.username, "password": vcsim.password,
        },
        "cbt_cbtsim": {
            "hostname": cbtsim_peer.host, "port": cbtsim_peer.port,
            "username": cbtsim_peer.username, "password": cbtsim_peer.password,
            "control_url": cbtsim_peer.control_url,
        },
    }
    # JSON is valid YAML; ansible-test reads this file as extra vars for every target.
    (staged / "tests" / "integration" / "integration_config.yml").write_text(json.dumps(config, indent=2))
    env = dict(os.environ)
    env["PATH"] = "%s:%s" % (VENV_BIN, env.get("PATH", ""))
    proc = subprocess.run(
        [str(VENV_BIN / "ansible-test"), "integration", "--venv", "--python", "3.11", "--color", "no",
         "--requirements", "-v"] + targets,
        cwd=str(staged), capture_output=True, text=True, timeout=1800, env=env, check=False)
    assert proc.returncode == 0, "exit %s\n--- stdout ---\n%s\n--- stderr ---\n%s" % (
        proc.returncode, proc.stdout[-15000:], proc.stderr[-5000:])
    for target in targets:
        assert "Running %s integration test role" % target in proc.stdout, proc.stdout[-5000:]
