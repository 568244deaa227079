"""The agent's DRA side on a simulated kernel with an in-memory API server: a claim with spec.offer: DRA is bound and
published in its node's ResourceSlice (never as a resource name, permit or device plugin), an idle pass writes
nothing, the kubelet's prepare gets the device through CDI for a recorded requester who may use it, the release waits
while a prepared claim holds the device, and the slice goes with the claim."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

import apiclient
from apiclient import kinds
from nodeagent import wiring
from nodeagent.idsdb import NamesDatabases
from nodeagent.settings import AgentSettings
from policy import dra, names, records
from policy.records import Requester
from tests.support.agent_env import NOW, kubevirt_cr, pci_claim
from tests.support.fake_dra_kubelet import FakeDraKubelet
from tests.support.fake_kube import FakeKube
from tests.support.simhost import SimHost

NODE = "node1"
NIC, OTHER = "0000:00:02.0", "0000:00:03.0"
NS = "team-a"
ALICE = Requester("alice", "uid-alice", ("system:authenticated",))


class Kube(FakeKube):
    """FakeKube that answers SubjectAccessReviews from a table, as the API server would (nothing is stored)."""

    def __init__(self) -> None:
        super().__init__()
        self.use: set[tuple[str, str, str]] = set()  # (user, device, namespace)
        self.reviews = 0

    def create(self, res: apiclient.Resource, body: Mapping[str, Any], *, namespace: str | None = None) -> Any:
        if res.plural == "subjectaccessreviews":
            self.reviews += 1
            spec = body["spec"]
            attrs = spec["resourceAttributes"]
            ok = attrs["verb"] == "use" and (spec["user"], attrs["name"], attrs["namespace"]) in self.use
            return {**body, "status": {"allowed": ok}}
        return super().create(res, body, namespace=namespace)


@pytest.fixture
def base() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="drs")  # short: sun_path holds 108 bytes
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _setup(tmp_path: Path, base: str) -> tuple[SimHost, Kube, wiring.Agent]:
    host = SimHost(tmp_path)
    host.pci(NIC, native="e1000e", group=1)
    host.pci(OTHER, native="e1000e", group=2)
    api = Kube()
    api.put(apiclient.NODES, {"metadata": {"name": NODE}})
    api.put(apiclient.KUBEVIRTS, kubevirt_cr(), namespace="harvester-system")
    settings = AgentSettings(node_name=NODE, udev=False, dra=True, kubelet_dir=base, cdi_dir=os.path.join(base, "cdi"))
    agent = wiring.build(
        settings,
        api,
        root=host.root(),
        db=NamesDatabases.load(None, None),
        load_modules=host.sim.load_modules,
        serve_health=False,
        now=lambda: NOW,
        pod_resources=lambda: [],  # the kubelet's PodResources: no device-plugin allocation
    )
    assert agent.dra is not None and agent.dra_node is not None
    return host, api, agent


def _slices(api: FakeKube) -> list[dict[str, Any]]:
    return api.objects("resourceslices")


def _resourceclaim(api: FakeKube, name: str, device: str, record: str | None = ALICE.encode()) -> tuple[str, str, str]:
    uid = str(uuid.uuid4())
    body: dict[str, Any] = {
        "metadata": {"name": name, "uid": uid, "annotations": {records.ANNOTATION: record} if record else {}},
        "status": {
            "allocation": {"devices": {"results": [
                {"request": "nic", "driver": dra.PCI_DRIVER, "pool": NODE, "device": device}]}},
            "reservedFor": [{"resource": "pods", "name": f"{name}-pod", "uid": "p"}],
        },
    }  # fmt: skip
    api.put(kinds.RESOURCECLAIMS, body, namespace=NS)
    got = api.peek("resourceclaims", name, NS)
    assert got is not None
    return NS, got["metadata"]["uid"], name


def test_a_dra_claim_is_published_in_the_slice_and_nowhere_else(tmp_path: Path, base: str) -> None:
    host, api, agent = _setup(tmp_path, base)
    obj = names.pcidevice_name(NODE, NIC)
    api.put(apiclient.PCIDEVICECLAIMS, pci_claim(NODE, NIC, offer=dra.OFFER_DRA))
    api.put(apiclient.PCIDEVICECLAIMS, pci_claim(NODE, OTHER))  # through the device plugin
    agent.runner.step()
    agent.runner.step()
    assert host.sim.driver(NIC) == "vfio-pci"
    claim = api.peek("pcideviceclaims", obj)
    assert claim is not None and claim["status"]["passthroughEnabled"] is True
    offered = {c["type"]: c for c in claim["status"]["conditions"]}["Offered"]
    assert offered["reason"] == "DynamicResourceAllocation" and "pci-0000-00-02-0" in offered["message"]
    assert "Permitted" not in {c["type"] for c in claim["status"]["conditions"]}
    [s] = _slices(api)
    assert s["spec"]["driver"] == dra.PCI_DRIVER and s["spec"]["pool"]["name"] == NODE
    [entry] = s["spec"]["devices"]
    assert entry["name"] == "pci-0000-00-02-0" and entry["attributes"]["owner"] == {"string": "alice"}
    assert entry["attributes"]["pciDevice"] == {"string": obj}
    # one path at a time: no per-device name on the device, no permit, while the other claim has both
    device = api.peek("pcidevices", obj)
    assert device is not None and device["status"]["resourceName"] != f"intel.com/{obj}"
    permitted = json.dumps(api.objects("kubevirts"))
    assert f"intel.com/{obj}" not in permitted and f"intel.com/{names.pcidevice_name(NODE, OTHER)}" in permitted
    assert agent.node_pass.report.dra_published == (obj,)
    before = len(api.writes)
    agent.runner.step()
    assert len(api.writes) == before  # an idle pass writes nothing, slices included


def test_the_kubelet_gets_the_device_through_cdi_and_the_release_waits_for_unprepare(tmp_path: Path, base: str) -> None:
    host, api, agent = _setup(tmp_path, base)
    assert agent.dra is not None and agent.dra_node is not None
    obj = names.pcidevice_name(NODE, NIC)
    api.use.add(("alice", obj, NS))
    api.put(apiclient.PCIDEVICECLAIMS, pci_claim(NODE, NIC, offer=dra.OFFER_DRA))
    agent.runner.step()
    agent.dra.step()
    kubelet = FakeDraKubelet()
    pci = next(s for s in agent.dra.servers if s.driver.driver == dra.PCI_DRIVER)
    kubelet.register(pci.registration)
    assert agent.registry.get_sample_value("pcidevices_agent_dra_registered", {"driver": dra.PCI_DRIVER}) == 1.0
    assert agent.registry.get_sample_value("pcidevices_agent_dra_registered", {"driver": dra.USB_DRIVER}) == 0.0
    ref = _resourceclaim(api, "nic", "pci-0000-00-02-0")
    entry = kubelet.prepare(dra.PCI_DRIVER, [ref]).claims[ref[1]]
    assert entry.error == "" and list(entry.devices[0].cdi_device_ids) == [
        f"devices.harvesterhci.io/pci={ref[1]}-pci-0000-00-02-0"]  # fmt: skip
    with open(os.path.join(base, "cdi", f"devices.harvesterhci.io-pci-{ref[1]}.json")) as f:
        spec = json.load(f)
    assert [n["path"] for n in spec["devices"][0]["containerEdits"]["deviceNodes"]] == ["/dev/vfio/1"]
    assert spec["devices"][0]["containerEdits"]["env"] == [
        f"{names.pci_resource_env_var(f'intel.com/{obj}')}={NIC}"]  # fmt: skip
    agent.runner.step()
    assert agent.registry.get_sample_value("pcidevices_agent_dra_prepared_claims", {"driver": dra.PCI_DRIVER}) == 1.0
    claim = api.peek("pcideviceclaims", obj)
    assert claim is not None
    assert claim["status"]["allocatedTo"] == [{"pod": f"{NS}/nic-pod", "resourceClaim": f"{NS}/nic"}]
    # bob's claim for the same device (made while the webhook was away) gets nothing
    bob = _resourceclaim(api, "bob", "pci-0000-00-02-0", record=Requester("bob").encode())
    assert "lacks the verb use" in kubelet.prepare(dra.PCI_DRIVER, [bob]).claims[bob[1]].error
    # the claim is deleted while the pod holds the device: out of the slice at once, kept on vfio-pci until unprepared
    api.remove(apiclient.PCIDEVICECLAIMS, obj)
    agent.runner.step()
    assert _slices(api) == [] and host.sim.driver(NIC) == "vfio-pci"
    kept = api.peek("pcideviceclaims", obj)
    assert kept is not None and "resourceclaim team-a/nic" in json.dumps(kept["status"]["conditions"])
    assert kubelet.unprepare(dra.PCI_DRIVER, [ref]).claims[ref[1]].error == ""
    agent.runner.step()
    assert host.sim.driver(NIC) == "e1000e" and api.peek("pcideviceclaims", obj) is None
    agent.dra.servers[0].stop()
    agent.dra.servers[1].stop()


def test_a_deleted_slice_is_written_again(tmp_path: Path, base: str) -> None:
    _, api, agent = _setup(tmp_path, base)
    api.put(apiclient.PCIDEVICECLAIMS, pci_claim(NODE, NIC, offer=dra.OFFER_DRA))
    agent.runner.step()
    [s] = _slices(api)
    api.remove(kinds.RESOURCESLICES, s["metadata"]["name"])  # the kubelet wiped it
    agent.runner.step()
    assert [o["metadata"]["name"] for o in _slices(api)] == [s["metadata"]["name"]]
