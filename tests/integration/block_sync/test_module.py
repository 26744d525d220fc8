# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""cbt.toolkit.block_sync run as a real Ansible module (ansible / ansible-playbook, AnsiballZ),
including with Debian's /usr/bin/python3 (python3-libnbd) against real nbdkit/qemu-nbd exports."""

import json
import os
import subprocess
import textwrap

import pytest

from blocksync_helpers import KiB, MiB, make_image, read_range, sha_of  # pylint: disable=import-error
from testbed.nbd import NbdExport

SIZE = 8 * MiB
SYSTEM_PYTHON = "/usr/bin/python3"


def system_python_env():
    probe = subprocess.run([SYSTEM_PYTHON, "-c", "import nbd"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        pytest.fail("%s cannot import nbd (python3-libnbd): %s; install python3-libnbd" % (
            SYSTEM_PYTHON, probe.stderr.strip()))
    return {"ANSIBLE_PYTHON_INTERPRETER": SYSTEM_PYTHON}


def untouched(path):
    return sha_of(path, os.path.getsize(path))


def test_full_and_incremental_from_nbd_with_system_python(workdir, endpoints, run_module):
    env = system_python_env()
    src_img = make_image(workdir / "src.img", SIZE, seed=1)
    src = endpoints.expose(src_img, "nbdkit", readonly=True)
    dest = str(workdir / "replica.img")
    state = str(workdir / "state")
    common = {"src": src, "dest": dest, "state_dir": state}

    res, run = run_module("block_sync", dict(common, mode="allocated"), check=True, diff=True, env=env)
    assert res.get("changed") is True and res["bytes_to_copy"] == 6 * MiB, run
    assert not os.path.exists(dest) and not os.path.exists(state)

    res, run = run_module("block_sync", dict(common, mode="allocated", verify=True, checksum_algorithm="sha256"),
                          env=env)
    assert res.get("changed") is True and res["verification"]["passed"], run
    assert res["bytes_written"] == 4 * MiB and res["dest_created"]
    assert sha_of(dest, SIZE) == sha_of(src_img, SIZE)
    status = json.loads(open(res["status_file"]).read())
    assert status["state"] == "complete" and status["bytes_done"] == status["bytes_total"]

    with open(src_img, "r+b") as f:
        f.seek(MiB)
        f.write(bytes(256 * KiB))
        f.seek(5 * MiB)
        f.write(os.urandom(64 * KiB))
    extent_file = workdir / "changes.extents"
    extent_file.write_text("# cbt.toolkit extents v1\n# capacity=%d\n%d %d\n%d %d\n" % (
        SIZE, MiB, 256 * KiB, 5 * MiB, 64 * KiB))
    args = dict(common, extent_file=str(extent_file), verify=True, checksum_algorithm="sha256", sync_id="snap-2")
    res, run = run_module("block_sync", args, env=env)
    assert res.get("changed") is True and res["bytes_zeroed"] == 256 * KiB and res["bytes_written"] == 64 * KiB, run
    assert sha_of(dest, SIZE) == sha_of(src_img, SIZE)
    res, run = run_module("block_sync", args, env=env)
    assert res.get("changed") is False and res["already_complete"] is True, run


def test_missing_nbd_binding_is_reported(workdir, run_module):
    shadow = workdir / "shadow"
    shadow.mkdir()
    (shadow / "nbd.py").write_text("raise ImportError('No module named nbd (simulated for the test)')\n")
    res, run = run_module("block_sync", {"src": "nbd+unix:///?socket=/nonexistent.sock",
                                         "dest": str(workdir / "d.img"), "mode": "all"},
                          env={"PYTHONPATH": str(shadow)})
    assert res.get("failed") and "python3-libnbd" in res["msg"], run
    assert "ansible_python_interpreter" in res["msg"]


def test_module_copies_between_qemu_nbd_and_block_device(workdir, endpoints, run_module):
    src_img = make_image(workdir / "src.img", SIZE, seed=3)
    dst_img = make_image(workdir / "dst.img", SIZE, seed=4, layout="d")
    src = endpoints.expose(src_img, "qemu-nbd", readonly=True)
    dst = endpoints.expose(dst_img, "block")
    res, run = run_module("block_sync", {"src": src, "dest": dst, "mode": "compare",
                                         "state_dir": str(workdir / "st")})
    assert res.get("changed") is True and res["dest_kind"] == "block", run
    assert sha_of(dst_img, SIZE) == sha_of(src_img, SIZE)
    res, run = run_module("block_sync", {"src": src, "dest": dst, "mode": "compare",
                                         "state_dir": str(workdir / "st")})
    assert res.get("changed") is False, run


@pytest.mark.parametrize("case", ["beyond", "smaller", "same_loop", "readonly_nbd", "readonly_block", "strict",
                                  "incremental_new", "capacity"])
def test_bad_input_fails_clearly_and_writes_nothing(workdir, endpoints, run_module, case):
    src_img = make_image(workdir / "src.img", SIZE, seed=5)
    dst_img = make_image(workdir / "dst.img", SIZE, seed=6)
    args = {"src": src_img, "dest": dst_img, "state_dir": str(workdir / "st"), "mode": "all"}
    expect = None
    if case == "beyond":
        args.update(mode="extents", extents=[{"offset": SIZE - 4096, "length": 8192}])
        expect = "beyond the size %d" % SIZE
    elif case == "smaller":
        small = make_image(workdir / "small.img", SIZE // 2, seed=6)
        args["dest"] = small
        expect = "smaller than the source"
    elif case == "same_loop":
        args["dest"] = endpoints.expose(src_img, "block")
        expect = "same loop device backing file"
    elif case == "readonly_nbd":
        args["dest"] = endpoints.expose(dst_img, "nbdkit", readonly=True)
        expect = "read-only"
    elif case == "readonly_block":
        args["dest"] = endpoints.expose(dst_img, "block", readonly=True)
        expect = "read-only"
    elif case == "strict":
        args.update(mode="extents", extents=["4096:4096", "0:4096"], extents_check="strict")
        expect = "not sorted"
    elif case == "incremental_new":
        args.update(mode="extents", extents=[[0, 4096]], dest=str(workdir / "new.img"))
        expect = "does not exist"
    elif case == "capacity":
        path = workdir / "c.extents"
        path.write_text("# cbt.toolkit extents v1\n# capacity=%d\n0 4096\n" % (2 * SIZE))
        args.update(mode="extents", extent_file=str(path))
        expect = "capacity"
    before = {p: untouched(p) for p in (src_img, dst_img)}
    res, run = run_module("block_sync", args)
    assert res.get("failed") and expect in res["msg"], run
    assert "Traceback" not in res["msg"] + res.get("exception", "(traceback unavailable)")
    assert {p: untouched(p) for p in (src_img, dst_img)} == before
    assert not os.path.exists(str(workdir / "new.img"))
    state = workdir / "st"
    assert not state.exists() or not [n for n in os.listdir(state) if n.endswith(".plan")]


@pytest.mark.parametrize("request_size,bad", [(MiB, 4 * MiB), (4 * MiB, 6 * MiB)], ids=["1MiB", "4MiB-split"])
def test_read_error_names_the_offset_and_keeps_the_resume_state(workdir, run_module, request_size, bad):
    # with 4 MiB requests, each read is four 1 MiB NBD requests in flight at once; the error names the
    # first one that failed, and the whole piece [4 MiB, 8 MiB) stays uncopied
    src_img = make_image(workdir / "src.img", SIZE, seed=7, layout="d")
    dst_img = make_image(workdir / "dst.img", SIZE, seed=8, layout="d")
    script = textwrap.dedent("""\
        case "$1" in
          get_size) echo %(size)d ;;
          can_write) exit 3 ;;
          pread)
            if [ "$4" -ge %(bad)d ]; then echo "EIO simulated media error" >&2; exit 1; fi
            dd if=%(img)s skip="$4" count="$3" iflag=skip_bytes,count_bytes status=none ;;
          *) exit 2 ;;
        esac
        """) % {"size": SIZE, "bad": bad, "img": src_img}
    (workdir / "flaky.sh").write_text(script)
    os.chmod(workdir / "flaky.sh", 0o755)
    export = NbdExport.nbdkit(plugin="sh", plugin_args=[str(workdir / "flaky.sh")], readonly=True,
                              name="flaky").start()
    try:
        args = {"src": export.uri, "dest": dst_img, "mode": "all", "workers": 1, "request_size": request_size,
                "state_dir": str(workdir / "st")}
        res, run = run_module("block_sync", args)
        assert res.get("failed") and "read error on source" in res["msg"], run
        assert "at offset %d (length %d)" % (bad, MiB) in res["msg"]
        state_files = [workdir / "st" / n for n in os.listdir(workdir / "st")
                       if n.endswith(".json") and not n.endswith("status.json")]
        state = json.loads(state_files[0].read_text())
        assert state["status"] == "running"
        done = [tuple(d) for d in state["done"]]
        assert all(o + n <= 4 * MiB for o, n in done), done
        before = state_files[0].read_text()
        res, run = run_module("block_sync", args)
        assert res.get("failed") and state_files[0].read_text() == before, run
    finally:
        export.stop()
    assert read_range(dst_img, 4 * MiB, 4 * MiB) != read_range(src_img, 4 * MiB, 4 * MiB)


def test_lock_blocks_a_second_run_and_async_progress(workdir, run_playbook):
    src_img = make_image(workdir / "src.img", SIZE, seed=9)
    dst = str(workdir / "dst.img")
    state = str(workdir / "st")
    status = str(workdir / "progress.json")
    playbook = textwrap.dedent("""\
        - name: Sync in the background and watch it
          hosts: localhost
          gather_facts: false
          tasks:
            - name: Start the sync
              cbt.toolkit.block_sync:
                src: %(src)s
                dest: %(dst)s
                mode: allocated
                state_dir: %(state)s
                status_file: %(status)s
              async: 120
              poll: 0
              register: job
            - name: Wait for it
              ansible.builtin.async_status:
                jid: "{{ job.ansible_job_id }}"
              register: done
              until: done.finished
              retries: 120
              delay: 1
            - name: Read the progress file
              ansible.builtin.slurp:
                src: %(status)s
              register: progress
            - name: Check
              ansible.builtin.assert:
                that:
                  - done.changed
                  - done.bytes_written == 4194304
                  - (progress.content | b64decode | from_json).state == 'complete'
        """) % {"src": src_img, "dst": dst, "state": state, "status": status}
    run = run_playbook(playbook)
    assert run.rc == 0, run
    assert sha_of(dst, SIZE) == sha_of(src_img, SIZE)
    # a held lock makes the next run fail without writing
    holder = subprocess.Popen(["flock", "--exclusive", str(dst), "sleep", "30"])
    try:
        import time
        time.sleep(0.3)
        before = untouched(dst)
        with open(src_img, "r+b") as f:
            f.write(b"changed")
        from testbed.ansible_run import run_module as rm
        res, run2 = rm("block_sync", {"src": src_img, "dest": dst, "extents": [[0, 4096]], "state_dir": state})
        assert res.get("failed") and "locked" in res["msg"], run2
        assert untouched(dst) == before
    finally:
        holder.kill()
        holder.wait()
