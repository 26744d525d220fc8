# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Unit tests of the block_sync module wrapper (argument handling, results, failures)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os

import pytest

from ansible_collections.cbt.toolkit.plugins.module_utils import _blockcopy_hash as bh
from ansible_collections.cbt.toolkit.plugins.module_utils import _blockcopy_io as bio
from ansible_collections.cbt.toolkit.plugins.modules import block_sync
from ansible_collections.cbt.toolkit.tests.unit.plugins.modules.unit_helpers import ExitJson, FailJson, run_module

MiB = 1024 * 1024


def run(args, expect=ExitJson):
    return run_module(block_sync, args, expect=expect)


@pytest.fixture
def src(tmp_path):
    path = tmp_path / "src.img"
    with open(path, "wb") as f:
        f.truncate(4 * MiB)
        f.seek(MiB)
        f.write(os.urandom(MiB))
    return str(path)


def test_full_then_incremental_then_check_and_diff(tmp_path, src):
    dest = str(tmp_path / "dst.img")
    state = str(tmp_path / "st")
    res = run({"src": src, "dest": dest, "mode": "allocated", "state_dir": state})
    assert res["changed"] and res["bytes_written"] == MiB and res["dest_created"]
    res = run({"src": src, "dest": dest, "extents": [{"offset": MiB, "length": 4096}], "state_dir": state,
               "_ansible_check_mode": True, "_ansible_diff": True})
    assert res["changed"] and res["bytes_to_copy"] == 4096 and "diff" in res
    assert "ranges from" in res["diff"]["after"]
    res = run({"src": src, "dest": dest, "extents": [], "state_dir": state})
    assert res["changed"] is False and res["bytes_written"] == 0


def test_nothing_to_copy_and_checksum_file_need_options(tmp_path, src):
    res = run({"src": src, "dest": str(tmp_path / "d")}, FailJson)
    assert "nothing to copy" in res["msg"]
    res = run({"src": src, "dest": str(tmp_path / "d"), "mode": "all", "checksum_file": "/tmp/x"}, FailJson)
    assert "needs verify" in res["msg"]
    res = run({"src": src, "dest": str(tmp_path / "d"), "mode": "extents"}, FailJson)
    assert "extents" in res["msg"]


def test_validation_errors_fail_cleanly(tmp_path, src):
    res = run({"src": src, "dest": src, "mode": "all", "state_dir": str(tmp_path / "st")}, FailJson)
    assert "are the same" in res["msg"] and "exception" not in res
    assert res["changed"] is False


def test_a_run_failing_after_writes_reports_changed(tmp_path, src, monkeypatch):
    real_read = bio.LocalEndpoint.read

    def failing(self, offset, length, buf):
        if offset >= 2 * MiB:
            raise bio.ReadError(self.name, offset, length, OSError(5, "Input/output error"))
        return real_read(self, offset, length, buf)

    monkeypatch.setattr(bio.LocalEndpoint, "read", failing)
    res = run({"src": src, "dest": str(tmp_path / "dst.img"), "mode": "all", "request_size": MiB, "workers": 1,
               "state_dir": str(tmp_path / "st")}, FailJson)
    assert "offset %d" % (2 * MiB) in res["msg"] and res["changed"] is True


def test_missing_nbd_binding(tmp_path, src, monkeypatch):
    monkeypatch.setattr(bio, "HAS_NBD", False)
    res = run({"src": "nbd://127.0.0.1:1/x", "dest": str(tmp_path / "d"), "mode": "all"}, FailJson)
    assert "python3-libnbd" in res["msg"]


def test_missing_hash_library_suggests_sha256(tmp_path, src, monkeypatch):
    monkeypatch.setattr(bh, "blake3", None)
    res = run({"src": src, "dest": str(tmp_path / "d"), "mode": "all", "verify": True,
               "checksum_algorithm": "blake3"}, FailJson)
    assert "blake3" in res["msg"] and "checksum_algorithm: sha256" in res["msg"]


def test_verification_failure_returns_the_result(tmp_path, src, monkeypatch):
    real = bio.LocalEndpoint.write

    def lossy(self, offset, data):
        data = bytes(memoryview(data))
        return real(self, offset, b"\xff" + data[1:])

    monkeypatch.setattr(bio.LocalEndpoint, "write", lossy)
    res = run({"src": src, "dest": str(tmp_path / "d"), "mode": "allocated", "verify": True,
               "checksum_algorithm": "sha256", "state_dir": str(tmp_path / "st")}, FailJson)
    assert res["changed"] is True and res["verification"]["passed"] is False
    assert "verification failed" in res["msg"]
    assert json.loads(json.dumps(res))  # serialisable
