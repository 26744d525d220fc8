# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""kill -9 at random points, then resume: the target must end byte-identical to the source.

24 trials over four modes and two source kinds (local file, nbdkit over a unix socket). Half of
the kills land at a purely random time, half as soon as the resume state shows committed
progress (so resuming from a partial state is exercised for sure). Some trials are killed twice.
A killed run never leaves a state that says "complete".
"""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from ansible_collections.cbt.toolkit.plugins.module_utils import _blockcopy as bc

from blocksync_helpers import KiB, MiB, make_image, sha_of  # pylint: disable=import-error

SIZE = 24 * MiB
RUNNER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sync_runner.py")
MODES = ["all", "allocated", "extents", "compare"]
TRIALS = 24


def state_of(state_dir):
    for name in os.listdir(state_dir) if os.path.isdir(state_dir) else []:
        if name.endswith(".json") and not name.endswith(".status.json"):
            with open(os.path.join(state_dir, name)) as f:
                return json.load(f)
    return None


def start(kwargs):
    return subprocess.Popen([sys.executable, RUNNER, json.dumps(kwargs)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    base = tmp_path_factory.mktemp("kill")
    src = make_image(base / "src.img", SIZE, seed=11, layout="dddz.dd.")
    old = make_image(base / "old.img", SIZE, seed=12, layout="dd.d")
    return base, src, old


def test_kill_minus_nine_then_resume(images, endpoints):
    base, src, old = images
    nbd_src = endpoints.expose(src, "nbdkit", readonly=True)
    rnd = random.Random(20240607)
    want = sha_of(src, SIZE)
    resumed_trials = 0
    outcomes = []
    for trial in range(TRIALS):
        mode = MODES[trial % len(MODES)]
        source = nbd_src if trial % 3 == 2 else src
        dst = str(base / ("dst-%d.img" % trial))
        state_dir = str(base / ("state-%d" % trial))
        if mode == "allocated":
            if os.path.exists(dst):
                os.unlink(dst)
        else:
            subprocess.run(["cp", "--sparse=always", old, dst], check=True)
        kwargs = {"src": source, "dest": dst, "mode": mode, "state_dir": state_dir, "request_size": 64 * KiB,
                  "workers": rnd.choice([1, 2, 4]), "commit_bytes": 256 * KiB, "commit_interval": 0.05}
        if mode == "extents":
            kwargs["extents"] = [[0, SIZE]]
            kwargs["mode"] = None
        if source == nbd_src:
            kwargs["sync_id"] = "snap-%d" % trial  # an NBD export resumes only with the snapshot's identity
        kills = 2 if trial % 5 == 4 else 1
        for _kill in range(kills):
            proc = start(kwargs)
            if trial % 2 == 0:
                time.sleep(rnd.uniform(0.0, 1.5))
            else:
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline and proc.poll() is None:
                    state = state_of(state_dir)
                    if state and state.get("done") and state["status"] == "running":
                        break
                    time.sleep(0.005)
            finished = proc.poll() is not None
            proc.send_signal(signal.SIGKILL)
            _out, err = proc.communicate()
            if finished:
                assert proc.returncode == 0, err
            state = state_of(state_dir)
            if state is not None and state["status"] == "complete":
                # "complete" is only ever written after the final flush: the target must be whole
                assert sha_of(dst, SIZE) == want, "trial %d: state says complete, target differs" % trial
        before = state_of(state_dir)
        req = dict(kwargs)
        result = bc.run_sync(bc.SyncRequest(**req))
        if before and before["status"] == "running" and before.get("done"):
            assert result["resumed"] is True and result["bytes_resumed"] > 0
            resumed_trials += 1
        got = sha_of(dst, SIZE)
        outcomes.append((trial, mode, source == nbd_src, bool(before and before.get("done")), got == want))
        assert got == want, "trial %d (%s from %s) ended with a different target" % (trial, mode, source)
        assert state_of(state_dir)["status"] == "complete"
    # odd trials kill as soon as committed progress is visible; nearly all of them resume
    assert resumed_trials >= TRIALS // 4, outcomes
