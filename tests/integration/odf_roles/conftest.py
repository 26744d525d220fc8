# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fixtures for the ODF role tests: a private kube-apiserver with the OLM simulator, a local
registry, buildah storage and a local git repository holding a small Go "operator"."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from testbed.core import PeerError, output_dir

GO = os.environ.get("CBT_GO", "/usr/local/go/bin/go")
REPO = Path(__file__).resolve().parents[3]
PLAYBOOKS = REPO / "playbooks"
NODES = ("worker-0", "worker-1", "worker-2")


# ---- Kubernetes + OLM simulator -------------------------------------------------------------------

class OdfEnv:
    """A running cluster with the simulator; ``auth`` is the connection dict for the roles."""

    def __init__(self, cluster, sim):
        self.cluster = cluster
        self.sim = sim
        self.kube = sim.kube
        self.auth = {"kubeconfig": str(cluster.kubeconfig)}

    def assert_sim_healthy(self):
        assert not self.sim.errors, "OLM simulator errors (log %s):\n%s" % (self.sim.log, "\n".join(self.sim.errors[:3]))


def start_odf_env(name: str) -> OdfEnv:
    from testbed.kube import KubeCluster  # pylint: disable=import-outside-toplevel
    from testbed.olm_sim import OlmSim  # pylint: disable=import-outside-toplevel

    cluster = KubeCluster(name=name).start()
    try:
        sim = OlmSim(cluster, name="olm-sim-%s" % cluster.id)
        sim.install_platform_crds()
        for node in NODES:
            sim.kube.create("/api/v1/nodes", {"apiVersion": "v1", "kind": "Node", "metadata": {
                "name": node, "labels": {"kubernetes.io/hostname": node, "node-role.kubernetes.io/worker": ""}}})
        for ns in ("openshift-marketplace",):
            sim.kube.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        sim.kube.create("/apis/operator.openshift.io/v1/consoles", {
            "apiVersion": "operator.openshift.io/v1", "kind": "Console", "metadata": {"name": "cluster"},
            "spec": {"managementState": "Managed", "plugins": ["monitoring-plugin"]}})
        sim.kube.create("/apis/storage.k8s.io/v1/storageclasses", {
            "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": "gp3-csi"},
            "provisioner": "ebs.csi.aws.com"})
        sim.start()
    except BaseException:
        cluster.stop()
        raise
    return OdfEnv(cluster, sim)


@pytest.fixture
def odf_env(request):
    """A fresh cluster per test: the uninstall role deletes CRDs and cluster-scoped objects."""
    env = start_odf_env("odf-%s" % request.node.name[:40].replace("[", "-").replace("]", "").replace("_", "-"))
    yield env
    env.sim.stop()
    env.cluster.stop()


# ---- registry, buildah storage, git repository -----------------------------------------------------

@pytest.fixture(scope="session")
def registry():
    from testbed.registry import Registry  # pylint: disable=import-outside-toplevel

    reg = Registry(name="odf-roles").start()
    yield reg
    reg.stop()


@pytest.fixture(scope="session")
def buildah_storage():
    """Private container storage (vfs) so builds neither need overlay nor touch the host's images."""
    if not shutil.which("buildah") or not shutil.which("skopeo"):
        raise PeerError("buildah", "buildah and skopeo are required (apt-get install buildah skopeo)")
    root = output_dir() / "buildah"
    shutil.rmtree(root, ignore_errors=True)
    (root / "root").mkdir(parents=True)
    (root / "runroot").mkdir()
    yield {"cephcsi_operator_build_storage_driver": "vfs",
           "cephcsi_operator_build_storage_root": str(root / "root"),
           "cephcsi_operator_build_storage_runroot": str(root / "runroot"),
           "cephcsi_operator_build_isolation": "chroot"}
    subprocess.run(["buildah", "--root", str(root / "root"), "--runroot", str(root / "runroot"),
                    "--storage-driver", "vfs", "rm", "--all"], capture_output=True, check=False)
    shutil.rmtree(root, ignore_errors=True)


def _git(repo: Path, *args):
    env = dict(os.environ, GIT_AUTHOR_NAME="cbt", GIT_AUTHOR_EMAIL="cbt@example.invalid",
               GIT_COMMITTER_NAME="cbt", GIT_COMMITTER_EMAIL="cbt@example.invalid")
    return subprocess.run(["git", "-C", str(repo)] + list(args), check=True, capture_output=True, text=True,
                          env=env).stdout.strip()


MAIN_GO = '''package main

import (
\t"fmt"
\t"os"
\t"runtime"
)

// version is set by the test through -ldflags.
var version = "dev"

func main() {
\tfmt.Printf("fake ceph-csi-operator %s %s/%s\\n", version, runtime.GOOS, runtime.GOARCH)
\tif len(os.Args) > 1 && os.Args[1] == "--fail" {
\t\tos.Exit(1)
\t}
}
'''

DOCKERFILE = '''# Same shape as the upstream operator Dockerfile: a builder stage, then a minimal final stage.
# The builder only copies binaries cross-compiled beforehand (no base image can be pulled here).
FROM scratch AS builder
ARG TARGETOS
ARG TARGETARCH
COPY prebuilt/manager-${TARGETOS}-${TARGETARCH} /workspace/manager

FROM scratch
COPY --from=builder /workspace/manager /manager
USER 65532:65532
ENTRYPOINT ["/manager"]
'''


@pytest.fixture(scope="session")
def operator_repo():
    """A local git repository: branch ``release-4.20`` with a Go program, pre-built binaries for the
    Dockerfile build and a Dockerfile; branch ``broken`` adds a compile error. Returns a dict."""
    if not Path(GO).exists():
        raise PeerError("go", "%s is missing (Go is needed to cross-compile the test operator)" % GO)
    repo = output_dir() / "operator-repo"
    shutil.rmtree(repo, ignore_errors=True)
    (repo / "cmd").mkdir(parents=True)
    (repo / "prebuilt").mkdir()
    _git(repo.parent, "init", "-q", "-b", "release-4.20", str(repo))
    (repo / "go.mod").write_text("module example.invalid/cephcsi-operator-fake\n\ngo 1.22\n")
    (repo / "cmd" / "main.go").write_text(MAIN_GO)
    (repo / "Dockerfile").write_text(DOCKERFILE)
    env = dict(os.environ, CGO_ENABLED="0", GOFLAGS="-mod=mod", GOPROXY="off", GOTOOLCHAIN="local")
    for arch in ("amd64", "arm64"):
        subprocess.run([GO, "build", "-trimpath", "-o", str(repo / "prebuilt" / ("manager-linux-%s" % arch)),
                        "./cmd/main.go"], cwd=str(repo), env=dict(env, GOOS="linux", GOARCH=arch), check=True,
                       capture_output=True)
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "fake operator")
    good = _git(repo, "rev-parse", "HEAD")
    _git(repo, "checkout", "-q", "-b", "broken")
    (repo / "cmd" / "main.go").write_text(MAIN_GO.replace("fmt.Printf(", "fmt.Printff("))
    _git(repo, "commit", "-q", "-am", "does not compile")
    broken = _git(repo, "rev-parse", "HEAD")
    _git(repo, "checkout", "-q", "release-4.20")
    return {"url": "file://%s" % repo, "path": repo, "commit": good, "broken_commit": broken,
            "go_env": {"GOFLAGS": "-mod=mod", "GOPROXY": "off", "GOTOOLCHAIN": "local"}}
