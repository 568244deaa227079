"""The node agent in-process against a real kube-apiserver (with kube-controller-manager's garbage collector), on a
simulated host: claims bind and permit, deletes restore, vanished devices keep their claims, an API-server restart
converges, an idle minute writes nothing, and allocatedTo follows a fake kubelet's PodResources."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import apiclient.client
from nodeagent.reconcile import allocations
from nodeagent.wiring import Agent
from policy import names
from tests.support import controlplane
from tests.support.agent_env import build_agent, kubevirt_cr, pci_claim
from tests.support.controlplane import ControlPlane
from tests.support.fake_kubelet import FakeKubelet, PodDevices
from tests.support.simhost import SimHost

NIC, NIC2 = "0000:00:02.0", "0000:00:03.0"
IDLE_WINDOW_S = 60.0
_NAMESPACES = apiclient.Resource("", "v1", "namespaces", "Namespace")


def _until(ok: Callable[[], bool], timeout: float = 20.0, every: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if ok():
                return True
        except apiclient.KubeError:
            pass
        time.sleep(every)
    return ok()


@dataclass
class Env:
    cp: ControlPlane
    api: apiclient.client.Client  # the test's own client (admin)
    host: SimHost
    node: str
    namespace: str
    agent: Agent | None = None

    def start(self, **kw: Any) -> Agent:
        agent_api = apiclient.client.Client.connect(self.cp.admin_kubeconfig)
        self.agent = build_agent(
            self.host,
            agent_api,
            self.node,
            kubevirt_namespace=self.namespace,
            namespace=self.namespace,
            watch_timeout_s=5,
            **kw,
        ).start()
        return self.agent

    def claim(self, address: str) -> dict[str, Any]:
        return self.api.get(apiclient.PCIDEVICECLAIMS, names.pcidevice_name(self.node, address))

    def enabled(self, address: str) -> bool:
        return bool((self.claim(address).get("status") or {}).get("passthroughEnabled"))

    def permitted(self) -> list[str]:
        cr = self.api.get(apiclient.KUBEVIRTS, "kubevirt", namespace=self.namespace)
        return [
            e["resourceName"] for e in cr["spec"]["configuration"]["permittedHostDevices"].get("pciHostDevices") or []
        ]

    def create_claim(self, address: str) -> None:
        device = self.api.get(apiclient.PCIDEVICES, names.pcidevice_name(self.node, address))
        body = pci_claim(self.node, address)
        body["metadata"]["ownerReferences"] = [
            {
                "apiVersion": names.API_VERSION,
                "kind": "PCIDevice",
                "name": device["metadata"]["name"],
                "uid": device["metadata"]["uid"],
            }
        ]
        self.api.create(apiclient.PCIDEVICECLAIMS, body)


@pytest.fixture
def env(
    garbage_collector: ControlPlane, installed_crds: str, unique: str, tmp_path: Path
) -> Iterator[Env]:
    cp = garbage_collector
    api = apiclient.client.Client.connect(cp.admin_kubeconfig)
    node = f"node-{unique}"
    ns = f"kv-{unique}"
    api.create(apiclient.NODES, {"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}})
    api.create(_NAMESPACES, {"metadata": {"name": ns}})
    api.create(apiclient.KUBEVIRTS, kubevirt_cr(pci=[_foreign()]), namespace=ns)
    host = SimHost(tmp_path)
    host.pci(NIC, native="e1000e", group=1)
    host.pci(NIC2, native="e1000e", group=2)
    e = Env(cp, api, host, node, ns)
    try:
        yield e
    finally:
        _clean_up(e)


def _clean_up(e: Env) -> None:
    """Leave nothing for other tests on the shared API server: claims released by the still-running agent, then
    the Node (its device objects go with it through garbage collection) and the namespace with the KubeVirt CR."""
    try:
        for c in e.api.list(apiclient.PCIDEVICECLAIMS).items:
            if (c.get("spec") or {}).get("nodeName") == e.node:
                e.api.delete(apiclient.PCIDEVICECLAIMS, c["metadata"]["name"])
        _until(
            lambda: not [c for c in e.api.list(apiclient.PCIDEVICECLAIMS).items if c["spec"].get("nodeName") == e.node],
            timeout=20.0,
            every=0.1,
        )
    finally:
        if e.agent is not None:
            e.agent.stop(timeout=1.0)
        for res, name, ns in ((apiclient.NODES, e.node, None), (_NAMESPACES, e.namespace, None)):
            try:
                e.api.delete(res, name, namespace=ns)
            except apiclient.KubeError:
                pass


def _foreign() -> dict[str, Any]:
    return {"pciVendorSelector": "15b3:101e", "resourceName": "nvidia.com/MLX_VF", "externalResourceProvider": True}


def _devices_created(env: Env) -> bool:
    return len(env.api.list(apiclient.PCIDEVICES, label_selector=f"nodename={env.node}").items) == 3


def test_a_claim_is_bound_and_permitted_and_its_delete_restores_the_driver(env: Env) -> None:
    env.start()
    assert _until(lambda: _devices_created(env))
    device = env.api.get(apiclient.PCIDEVICES, names.pcidevice_name(env.node, NIC))
    assert device["metadata"]["ownerReferences"][0]["kind"] == "Node"
    env.create_claim(NIC)
    started = time.monotonic()
    assert _until(lambda: env.enabled(NIC), timeout=10.0, every=0.01)
    latency = time.monotonic() - started
    assert latency < 2.0, f"claim to passthroughEnabled took {latency:.2f}s"
    assert env.host.sim.driver(NIC) == "vfio-pci"
    rn = f"intel.com/{names.pcidevice_name(env.node, NIC)}"
    assert env.api.get(apiclient.PCIDEVICES, names.pcidevice_name(env.node, NIC))["status"]["resourceName"] == rn
    assert env.permitted() == ["nvidia.com/MLX_VF", rn]
    reasons = {
        e["reason"]
        for e in env.api.list(apiclient.EVENTS, namespace="default").items
        if e["involvedObject"]["name"] == names.pcidevice_name(env.node, NIC)
    }
    assert {"Appeared", "PassthroughEnabled"} <= reasons
    env.api.delete(apiclient.PCIDEVICECLAIMS, names.pcidevice_name(env.node, NIC))

    def gone() -> bool:
        try:
            env.claim(NIC)
        except apiclient.NotFound:
            return True
        return False

    assert _until(gone)
    assert env.host.sim.driver(NIC) == "e1000e"
    assert _until(lambda: env.permitted() == ["nvidia.com/MLX_VF"])


def test_a_device_vanishing_while_claimed_keeps_its_claim_through_garbage_collection(env: Env) -> None:
    env.start()
    assert _until(lambda: _devices_created(env))
    env.create_claim(NIC)
    assert _until(lambda: env.enabled(NIC))
    env.host.unplug(NIC)
    env.agent.runner.nudge()  # type: ignore[union-attr] # what the udev remove event does
    name = names.pcidevice_name(env.node, NIC)
    assert _until(lambda: env.api.get(apiclient.PCIDEVICES, name)["status"].get("absent") is True)
    time.sleep(3)  # give the garbage collector its chance
    assert env.claim(NIC)["metadata"]["name"] == name
    env.api.delete(apiclient.PCIDEVICECLAIMS, name)

    def both_gone() -> bool:
        for res in (apiclient.PCIDEVICECLAIMS, apiclient.PCIDEVICES):
            try:
                env.api.get(res, name)
                return False
            except apiclient.NotFound:
                pass
        return True

    env.agent.runner.nudge()  # type: ignore[union-attr]
    assert _until(both_gone)


def _restart_apiserver(cp: ControlPlane, monkeypatch: pytest.MonkeyPatch) -> None:
    proc = next(p for p in cp._processes if p.name == "kube-apiserver")
    proc.stop()
    cp._processes.remove(proc)
    port = cp._port
    monkeypatch.setattr(controlplane, "free_port", lambda: port)  # clients keep their URL
    cp._start_apiserver()


def test_an_api_server_restart_mid_way_converges_without_duplicates(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = env.start()
    assert _until(lambda: _devices_created(env))
    env.create_claim(NIC)
    env.create_claim(NIC2)
    _restart_apiserver(env.cp, monkeypatch)
    assert _until(lambda: env.enabled(NIC) and env.enabled(NIC2), timeout=60.0)
    assert env.host.sim.driver(NIC) == env.host.sim.driver(NIC2) == "vfio-pci"
    assert _devices_created(env)
    permitted = env.permitted()
    assert sorted(permitted) == sorted(set(permitted)) and len(permitted) == 3
    assert agent.runner.stats.passes > 1


def test_an_idle_minute_makes_no_api_writes(env: Env) -> None:
    agent = env.start()
    assert _until(lambda: _devices_created(env))
    env.create_claim(NIC)
    assert _until(lambda: env.enabled(NIC))
    time.sleep(2)  # the echoes of our own writes settle
    before = dict(agent.api.counts)
    passes = agent.runner.stats.passes
    deadline = time.monotonic() + IDLE_WINDOW_S
    while time.monotonic() < deadline:
        agent.runner.nudge()  # a resync every 5 s instead of every 5 min
        time.sleep(5)
    assert agent.runner.stats.passes >= passes + 10
    assert agent.api.counts == before


def test_allocated_to_follows_the_kubelets_pod_resources(env: Env) -> None:
    with FakeKubelet() as kubelet:
        env.start(pod_resources=allocations.socket_lister(kubelet.pod_resources_socket), allocations_poll_s=0.2)
        assert _until(lambda: _devices_created(env))
        env.create_claim(NIC)
        assert _until(lambda: env.enabled(NIC))
        rn = f"intel.com/{names.pcidevice_name(env.node, NIC)}"
        kubelet.set_pod_resources([PodDevices("vms", "virt-launcher-vm1-abc", "compute", rn, (NIC,))])
        want = [{"pod": "vms/virt-launcher-vm1-abc", "container": "compute"}]
        assert _until(lambda: env.claim(NIC)["status"].get("allocatedTo") == want)
        kubelet.set_pod_resources([])
        assert _until(lambda: env.claim(NIC)["status"].get("allocatedTo") == [])
