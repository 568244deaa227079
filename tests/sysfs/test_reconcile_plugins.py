"""The agent wired to its device plugins and health endpoints: claimed devices are offered to a (fake) kubelet under
their effective resource name, released ones are withdrawn; readiness needs a traced root filesystem."""

from __future__ import annotations

import time
from pathlib import Path

import apiclient
from nodeagent import wiring
from nodeagent.idsdb import NamesDatabases
from nodeagent.settings import AgentSettings
from policy import names
from tests.support.agent_env import NOW, build_agent, kubevirt_cr, pci_claim
from tests.support.fake_kube import FakeKube
from tests.support.fake_kubelet import FakeKubelet
from tests.support.simhost import SimHost

NODE = "node1"
NIC = "0000:00:02.0"


def _api() -> FakeKube:
    api = FakeKube()
    api.put(apiclient.NODES, {"metadata": {"name": NODE}})
    api.put(apiclient.KUBEVIRTS, kubevirt_cr(), namespace="harvester-system")
    return api


def test_a_claimed_device_is_offered_to_the_kubelet_and_withdrawn_on_release(tmp_path: Path) -> None:
    host = SimHost(tmp_path)
    host.pci(NIC, native="e1000e", group=1)
    api = _api()
    with FakeKubelet() as kubelet:
        settings = AgentSettings(node_name=NODE, udev=False, kubelet_dir=kubelet.base, resync_s=3600.0)
        agent = wiring.build(
            settings,
            api,
            root=host.root(),
            db=NamesDatabases.load(None, None),
            load_modules=host.sim.load_modules,
            serve_health=False,
            now=lambda: NOW,
        ).start()
        try:
            rn = f"intel.com/{names.pcidevice_name(NODE, NIC)}"
            api.put(apiclient.PCIDEVICECLAIMS, pci_claim(NODE, NIC))
            reg = kubelet.registration(rn, timeout=10)
            assert reg.resource_name == rn
            devices = kubelet.wait_devices(rn, lambda ds: [d.health for d in ds] == ["Healthy"], timeout=10)
            assert [d.id for d in devices] == [NIC]
            api.remove(apiclient.PCIDEVICECLAIMS, names.pcidevice_name(NODE, NIC))
            # the device leaves the kubelet first, then vfio-pci
            assert kubelet.wait_for(lambda: kubelet.stream_ended(rn), timeout=10)
            deadline = time.monotonic() + 10
            while host.sim.driver(NIC) != "e1000e" and time.monotonic() < deadline:
                time.sleep(0.02)
            assert host.sim.driver(NIC) == "e1000e"
        finally:
            agent.stop(timeout=2)


def test_the_agent_is_not_ready_while_the_root_filesystem_cannot_be_traced(tmp_path: Path) -> None:
    host = SimHost(tmp_path, root_disk=False)
    host.pci(NIC, native="e1000e", group=1)
    agent = build_agent(host, _api(), NODE)
    assert agent.runner.step() > 0
    verdict = agent.health.ready()
    assert not verdict.ok and "root filesystem" in verdict.reason
    host.pci("0000:00:1f.0", native="nvme", group=90, cls="010802")
    host.tree.disk("nvme0n1", pci="0000:00:1f.0", partitions=(1,), subpath="nvme/nvme0")
    host.tree.mount("nvme0n1p1", "/")
    agent.runner.step()
    assert agent.health.ready().ok
