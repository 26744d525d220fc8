# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""execution-environment.yml (ansible-builder v3) produces a build context with the collection, its
Python dependencies (requirements.txt) and its system dependencies (bindep.txt: libnbd, nbdkit).

``ansible-builder build`` needs podman/docker and registry access, which the test bed does not have;
``create`` writes the complete build context, and ``introspect`` shows what builder collects from
the installed collection.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from testbed.core import REPO_ROOT

from vmm_helpers import area_dir

BIN = Path(sys.executable).parent


def _run(argv, cwd):
    proc = subprocess.run([str(a) for a in argv], cwd=str(cwd), capture_output=True, text=True, timeout=600,
                          check=False)
    assert proc.returncode == 0, "%s failed (%d)\n%s\n%s" % (
        argv, proc.returncode, proc.stdout[-4000:], proc.stderr[-4000:])
    return proc


def test_ansible_builder_create_and_introspect():
    work = area_dir("ee")
    (work / "build").mkdir()
    _run([BIN / "ansible-galaxy", "collection", "build", "--output-path", work / "build", "."], REPO_ROOT)
    tarballs = list((work / "build").glob("cbt-toolkit-*.tar.gz"))
    assert len(tarballs) == 1, tarballs
    # the definition refers to requirements.txt, bindep.txt and build/ next to it
    for name in ("execution-environment.yml", "requirements.txt", "bindep.txt"):
        shutil.copy(REPO_ROOT / name, work / name)

    _run([BIN / "ansible-builder", "create", "-f", "execution-environment.yml", "-c", "context", "-v", "3"], work)
    context = work / "context"
    files = list(context.glob("Containerfile")) + list(context.glob("Dockerfile"))
    assert len(files) == 1, list(context.iterdir())
    text = files[0].read_text()
    assert "ansible-galaxy collection install --offline" in text and "cbt-toolkit-" in text
    assert "install-from-bindep" in text and "introspect" in text
    assert (context / "_build" / "collections" / tarballs[0].name).exists()
    reqs = (context / "_build" / "requirements.txt").read_text()
    bindep = (context / "_build" / "bindep.txt").read_text()
    assert "pyvmomi" in reqs and "psycopg" in reqs
    assert "nbdkit" in bindep and "libnbd" in bindep
    assert "vmware.vmware" in (context / "_build" / "requirements.yml").read_text()

    # what builder's introspection collects from the installed collection (meta/execution-environment.yml)
    installed = work / "collections"
    _run([BIN / "ansible-galaxy", "collection", "install", "--offline", "--no-deps", "-p", installed, tarballs[0]], work)
    proc = _run([BIN / "ansible-builder", "introspect", "--sanitize", installed], work)
    out = proc.stdout
    assert "pyvmomi" in out and "from collection cbt.toolkit" in out, out
    assert "nbdkit" in out and "python3-libnbd" in out, out
    # test-only system packages carry bindep's "test" profile, which the image build does not install
    for line in out.splitlines():
        if any(pkg in line for pkg in ("postgresql", "shellcheck", "qemu-utils", "docker-registry")):
            assert "[test " in line, line
