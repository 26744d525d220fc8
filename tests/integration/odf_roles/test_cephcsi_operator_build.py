# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""cbt.toolkit.cephcsi_operator_build against a real local git repository, real buildah and skopeo,
and a real registry (Debian docker-registry with TLS and htpasswd). The images are cross-built for
linux/arm64 on this amd64 host; the tests read the pushed layers back and check the ELF machine."""

from __future__ import annotations

import io
import json
import struct
import tarfile

import pytest

from odf_roles_util import assert_idempotent, assert_ok, build_vars, changed_tasks, failure_messages, fact

MANIFEST_TYPES = ", ".join([
    "application/vnd.oci.image.manifest.v1+json", "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json", "application/vnd.docker.distribution.manifest.list.v2+json"])
ELF_MACHINE = {62: "amd64", 183: "arm64"}

PLAYBOOK = """
- name: Build the operator image
  hosts: localhost
  gather_facts: false
  roles:
    - role: cbt.toolkit.cephcsi_operator_build
"""


def pushed_image(registry, repository, tag):
    """Read back manifest, config and the entrypoint binary of a pushed image through the registry API."""
    status, headers, body = registry.api("/v2/%s/manifests/%s" % (repository, tag), accept=MANIFEST_TYPES)
    assert status == 200, "registry has no %s:%s (%s %s)" % (repository, tag, status, body[:200])
    manifest = json.loads(body)
    digest = headers.get("Docker-Content-Digest")
    status, _unused, config = registry.api("/v2/%s/blobs/%s" % (repository, manifest["config"]["digest"]))
    assert status == 200
    config = json.loads(config)
    files = {}
    for layer in manifest["layers"]:
        status, _unused, blob = registry.api("/v2/%s/blobs/%s" % (repository, layer["digest"]))
        assert status == 200
        with tarfile.open(fileobj=io.BytesIO(blob), mode="r:*") as tar:
            for member in tar.getmembers():
                if member.isfile():
                    files[member.name.lstrip("./")] = tar.extractfile(member).read()
    return {"digest": digest, "manifest": manifest, "config": config, "files": files}


def elf_arch(data: bytes) -> str:
    assert data[:4] == b"\x7fELF", "not an ELF binary"
    (machine,) = struct.unpack_from("<H", data, 18)
    return ELF_MACHINE.get(machine, "machine-%d" % machine)


@pytest.mark.slow
def test_binary_method_cross_builds_pushes_verifies_and_is_idempotent(run_playbook, operator_repo, registry,
                                                                      buildah_storage, tmp_path):
    extra = build_vars(operator_repo, registry, buildah_storage, tmp_path,
                       cephcsi_operator_build_go_ldflags="-X main.version=cbt-test")
    tag = operator_repo["commit"][:12]

    # Check mode first: nothing cloned, built or pushed; the run says a build would happen.
    check = run_playbook(PLAYBOOK, extra_vars=extra, check=True)
    assert_ok(check)
    assert fact(check, "cephcsi_operator_build_result")["would_build"] is True
    assert registry.api("/v2/cbt/cephcsi-operator/manifests/%s" % tag, accept=MANIFEST_TYPES)[0] == 404
    assert not (tmp_path / "work" / "src").exists()

    first = run_playbook(PLAYBOOK, extra_vars=extra)
    assert_ok(first)
    result = fact(first, "cephcsi_operator_build_result")
    assert result["built"] is True
    assert result["commit"] == operator_repo["commit"]
    assert result["tag"] == tag
    assert (result["os"], result["architecture"]) == ("linux", "arm64")
    assert result["reference_by_digest"] == "%s/cbt/cephcsi-operator@%s" % (registry.host, result["digest"])
    assert any(t.endswith("Cross-compile the operator with Go") for t in changed_tasks(first))
    # The password never appears in the output (login reads it on stdin, no_log).
    assert registry.password not in first.stdout + first.stderr

    image = pushed_image(registry, "cbt/cephcsi-operator", tag)
    assert image["digest"] == result["digest"]
    assert image["config"]["architecture"] == "arm64" and image["config"]["os"] == "linux"
    labels = image["config"]["config"]["Labels"]
    assert labels["org.opencontainers.image.revision"] == operator_repo["commit"]
    assert image["config"]["config"]["Entrypoint"] == ["/manager"]
    assert image["config"]["config"]["User"] == "65532:65532"
    assert elf_arch(image["files"]["manager"]) == "arm64"
    assert b"cbt-test" in image["files"]["manager"]

    # Idempotence: the registry already holds this commit for linux/arm64.
    second = run_playbook(PLAYBOOK, extra_vars=extra)
    assert_idempotent(second)
    again = fact(second, "cephcsi_operator_build_result")
    assert again["built"] is False and again["digest"] == result["digest"]
    assert check.stats  # check-mode run produced a recap
    check_after = run_playbook(PLAYBOOK, extra_vars=extra, check=True)
    assert_idempotent(check_after)


@pytest.mark.slow
def test_dockerfile_method_pins_builder_stage_and_builds_for_target(run_playbook, operator_repo, registry,
                                                                    buildah_storage, tmp_path):
    extra = build_vars(operator_repo, registry, buildah_storage, tmp_path,
                       cephcsi_operator_build_method="dockerfile",
                       cephcsi_operator_build_image="%s/cbt/cephcsi-operator-df" % registry.host,
                       cephcsi_operator_build_tag_prefix="rel420-")
    first = run_playbook(PLAYBOOK, extra_vars=extra)
    assert_ok(first)
    cross = (tmp_path / "work" / "Dockerfile.cross-arm64").read_text()
    from_lines = [line for line in cross.splitlines() if line.startswith("FROM")]
    assert from_lines == ["FROM --platform=$BUILDPLATFORM scratch AS builder", "FROM scratch"]
    result = fact(first, "cephcsi_operator_build_result")
    assert result["tag"] == "rel420-" + operator_repo["commit"][:12]
    image = pushed_image(registry, "cbt/cephcsi-operator-df", result["tag"])
    assert image["digest"] == result["digest"]
    # TARGETARCH reached the builder stage: the arm64 binary was copied, not the amd64 one.
    assert elf_arch(image["files"]["manager"]) == "arm64"
    assert_idempotent(run_playbook(PLAYBOOK, extra_vars=extra))


@pytest.mark.slow
def test_compile_error_fails_loudly_and_pushes_nothing(run_playbook, operator_repo, registry, buildah_storage, tmp_path):
    extra = build_vars(operator_repo, registry, buildah_storage, tmp_path, cephcsi_operator_build_version="broken",
                       cephcsi_operator_build_image="%s/cbt/cephcsi-operator-broken" % registry.host)
    run = run_playbook(PLAYBOOK, extra_vars=extra)
    assert run.rc != 0
    failed = [r for r in run.task_results() if r.get("failed")]
    assert failed and failed[0]["_task"].endswith("Cross-compile the operator with Go")
    assert "Printff" in failed[0].get("stderr", ""), failed[0]
    status = registry.api("/v2/cbt/cephcsi-operator-broken/manifests/%s" % operator_repo["broken_commit"][:12],
                          accept=MANIFEST_TYPES)[0]
    assert status == 404


@pytest.mark.slow
def test_prebuilt_binary_for_wrong_architecture_is_refused(run_playbook, operator_repo, registry, buildah_storage,
                                                           tmp_path):
    extra = build_vars(operator_repo, registry, buildah_storage, tmp_path,
                       cephcsi_operator_build_binary=str(operator_repo["path"] / "prebuilt" / "manager-linux-amd64"),
                       cephcsi_operator_build_image="%s/cbt/cephcsi-operator-prebuilt" % registry.host)
    run = run_playbook(PLAYBOOK, extra_vars=extra)
    assert run.rc != 0
    msgs = " ".join(failure_messages(run))
    assert "is built for linux/amd64, not linux/arm64" in msgs, msgs
    assert registry.api("/v2/cbt/cephcsi-operator-prebuilt/tags/list")[0] == 404

    # The matching pre-built binary is accepted and packaged as is.
    extra["cephcsi_operator_build_binary"] = str(operator_repo["path"] / "prebuilt" / "manager-linux-arm64")
    ok = run_playbook(PLAYBOOK, extra_vars=extra)
    assert_ok(ok)
    assert not any(t.endswith("Cross-compile the operator with Go") for t in changed_tasks(ok))
    image = pushed_image(registry, "cbt/cephcsi-operator-prebuilt", operator_repo["commit"][:12])
    assert image["files"]["manager"] == (operator_repo["path"] / "prebuilt" / "manager-linux-arm64").read_bytes()


@pytest.mark.slow
def test_wrong_registry_password_fails_loudly_without_leaking_it(run_playbook, operator_repo, registry,
                                                                 buildah_storage, tmp_path):
    extra = build_vars(operator_repo, registry, buildah_storage, tmp_path,
                       cephcsi_operator_build_image="%s/cbt/cephcsi-operator-badpass" % registry.host,
                       cephcsi_operator_build_registry_password="not-the-password-%s" % registry.password[:4])
    run = run_playbook(PLAYBOOK, extra_vars=extra)
    assert run.rc != 0
    msgs = " ".join(failure_messages(run))
    assert "login to %s" % registry.host in msgs and "failed" in msgs, msgs
    assert extra["cephcsi_operator_build_registry_password"] not in run.stdout + run.stderr
    # Nothing past the checkout ran: no build, no push.
    assert all(t.endswith(("Create the work directory", "Clone the repository at the requested branch, tag or commit"))
               for t in changed_tasks(run)), changed_tasks(run)
    assert registry.api("/v2/cbt/cephcsi-operator-badpass/tags/list")[0] == 404
