"""The harness itself: clients, identities, garbage collection and clean teardown against the real binaries."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

import apiclient
from tests.support.controlplane import NODE_NAME_EXTRA, Binaries, BinariesMissing, ControlPlane, ControlPlaneError

REPO = Path(__file__).resolve().parents[2]


def _eventually(check: Callable[[], bool], timeout: float = 60.0, interval: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(interval)
    return check()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def test_kubectl_and_the_python_client_both_work_with_the_admin_kubeconfig(control_plane: ControlPlane) -> None:
    version = json.loads(control_plane.kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"] == "v1.36.3"
    assert version["clientVersion"]["gitVersion"] == "v1.36.3"

    namespace = control_plane.api_client().get(apiclient.NAMESPACES, "default")
    assert namespace["metadata"]["name"] == "default"


def test_a_non_admin_user_is_forbidden_until_a_cluster_role_grants_access(
    control_plane: ControlPlane, unique: str
) -> None:
    tenant_a = control_plane.mint_user(f"tenant-a-{unique}", groups=("tenants",))
    tenant_b = control_plane.mint_user(f"tenant-b-{unique}", groups=("tenants",))

    denied = control_plane.kubectl("get", "namespaces", user=tenant_a, check=False)
    assert denied.returncode != 0
    assert "forbidden" in denied.stderr
    assert f'User "tenant-a-{unique}"' in denied.stderr

    control_plane.kubectl("create", "clusterrole", f"ns-reader-{unique}", "--verb=get,list", "--resource=namespaces")
    control_plane.kubectl(
        "create", "clusterrolebinding", f"ns-reader-{unique}", f"--clusterrole=ns-reader-{unique}",
        f"--user=tenant-a-{unique}",
    )  # fmt: skip

    assert _eventually(lambda: control_plane.kubectl("get", "ns", user=tenant_a, check=False).returncode == 0, 15)
    still_denied = control_plane.kubectl("get", "namespaces", user=tenant_b, check=False)
    assert still_denied.returncode != 0
    assert "forbidden" in still_denied.stderr


def test_a_minted_user_reports_its_name_and_groups(control_plane: ControlPlane, unique: str) -> None:
    user = control_plane.mint_user(f"tenant-a-{unique}", groups=("tenant-a", "tenants"))
    review = json.loads(control_plane.kubectl("auth", "whoami", "-o", "json", user=user).stdout)
    info = review["status"]["userInfo"]
    assert info["username"] == f"tenant-a-{unique}"
    assert {"tenant-a", "tenants", "system:authenticated"} <= set(info["groups"])


def test_a_node_bound_token_carries_the_node_name_and_dies_with_its_pod(
    control_plane: ControlPlane, unique: str
) -> None:
    node = f"node-{unique}"
    agent = control_plane.mint_node_token(node)

    info = json.loads(control_plane.kubectl("auth", "whoami", "-o", "json", user=agent).stdout)["status"]["userInfo"]
    assert info["username"] == "system:serviceaccount:pcidevices-system:pcidevices-agent"
    assert info["extra"][NODE_NAME_EXTRA] == [node]
    assert agent.extra[NODE_NAME_EXTRA] == (node,)

    reviews = apiclient.Resource("authentication.k8s.io", "v1", "selfsubjectreviews", "SelfSubjectReview")
    review = control_plane.api_client(user=agent).create(
        reviews, {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
    )
    assert review["status"]["userInfo"]["extra"][NODE_NAME_EXTRA] == [node]

    pod = f"pcidevices-agent-{node}"
    control_plane.kubectl("delete", "pod", pod, "-n", "pcidevices-system", "--grace-period=0", "--force")

    def revoked() -> bool:  # the API server caches successful token reviews for a few seconds
        result = control_plane.kubectl("auth", "whoami", user=agent, check=False)
        return result.returncode != 0 and "Unauthorized" in result.stderr

    assert _eventually(revoked, timeout=30), "the token still works 30s after its pod was deleted"


def test_the_api_server_restarts_on_the_same_url_and_keeps_the_data(binaries: Binaries, tmp_path: Path) -> None:
    # A control plane of its own: a restart would disturb clients other tests keep on the session's one.
    with ControlPlane(binaries, tmp_path / "cp") as cp:
        cp.kubectl("create", "configmap", "kept", "-n", "default", "--from-literal=k=v")
        server = cp.server

        cp.restart_apiserver()

        assert cp.server == server
        assert cp.kubectl("get", "configmap", "kept", "-n", "default", "-o", "jsonpath={.data.k}").stdout == "v"


def test_deleting_an_owner_deletes_its_dependents_once_the_garbage_collector_runs(
    garbage_collector: ControlPlane, unique: str
) -> None:
    cp = garbage_collector
    cp.kubectl("create", "configmap", f"owner-{unique}", "-n", "default")
    uid = cp.kubectl("get", "configmap", f"owner-{unique}", "-n", "default", "-o", "jsonpath={.metadata.uid}").stdout
    dependent = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": f"dependent-{unique}",
            "namespace": "default",
            "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": f"owner-{unique}", "uid": uid}],
        },
    }
    cp.kubectl("apply", "-f", "-", input=json.dumps(dependent))

    cp.kubectl("delete", "configmap", f"owner-{unique}", "-n", "default")

    def gone() -> bool:
        got = cp.kubectl("get", "configmap", f"dependent-{unique}", "-n", "default", check=False)
        return got.returncode != 0 and "NotFound" in got.stderr

    assert _eventually(gone, timeout=60), "the garbage collector did not delete the dependent within 60s"


def test_a_failed_start_stops_what_was_already_started(binaries: Binaries, tmp_path: Path) -> None:
    broken = replace(binaries, kube_apiserver=Path("/bin/false"))
    cp = ControlPlane(broken, tmp_path / "cp", startup_timeout=30)

    with pytest.raises(ControlPlaneError, match="kube-apiserver exited with 1 during start-up"):
        cp.start()

    ours = [p for p in _children(os.getpid()) if str(tmp_path / "cp") in _cmdline(p)]
    assert ours == [], "etcd of the failed start is still running"


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(stat[1]) == pid and stat[0] != "Z":
                found.append(int(entry.name))
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def test_components_die_when_the_test_process_is_killed(binaries: Binaries, tmp_path: Path) -> None:
    # An API server that never becomes ready keeps the start-up waiting; then the parent is SIGKILLed mid-start.
    hang = tmp_path / "hang-apiserver"
    hang.write_text("#!/bin/sh\nexec sleep 300\n")
    hang.chmod(0o755)
    program = textwrap.dedent(
        f"""
        from dataclasses import replace
        from pathlib import Path
        from tests.support.controlplane import Binaries, ControlPlane
        b = Binaries.locate(Path({str(REPO)!r}))
        ControlPlane(replace(b, kube_apiserver=Path({str(hang)!r})), Path({str(tmp_path / "cp")!r})).start()
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", program], cwd=REPO)
    try:
        assert _eventually(lambda: len(_children(parent.pid)) >= 2, timeout=30), "etcd and the api server never ran"
        kids = _children(parent.pid)
        assert any("etcd" in _cmdline(k) for k in kids)
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    assert _eventually(lambda: not any(_alive(k) for k in kids), timeout=15), "components outlived their parent"


def test_helm_installs_a_chart_and_sees_the_stamped_kubernetes_version(
    control_plane: ControlPlane, tmp_path: Path, unique: str
) -> None:
    chart = tmp_path / "probe"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: probe\nversion: 0.1.0\n")
    (chart / "templates" / "cm.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}\n"
        "data:\n  kubeVersion: {{ .Capabilities.KubeVersion.Version | quote }}\n"
    )

    control_plane.helm("install", f"probe-{unique}", str(chart), "-n", "default")

    data = control_plane.kubectl("get", "configmap", f"probe-{unique}", "-n", "default", "-o", "json").stdout
    assert json.loads(data)["data"]["kubeVersion"] == "v1.36.3"
    releases = json.loads(control_plane.helm("list", "-n", "default", "-o", "json").stdout)
    assert {"name": f"probe-{unique}", "status": "deployed"}.items() <= next(
        r for r in releases if r["name"] == f"probe-{unique}"
    ).items()


def test_missing_binaries_are_reported_with_the_command_that_builds_them(tmp_path: Path) -> None:
    env = {**os.environ, "PCIDEVICES_BIN_CACHE": str(tmp_path / "empty")}
    with pytest.raises(BinariesMissing, match=r"run .*scripts/cluster-binaries") as raised:
        Binaries.locate(REPO, env=env)
    assert "kube-apiserver-v1.36.3/kube-apiserver" in str(raised.value)
