"""The agent's reconcile pass on a simulated host (fake tree + simulated kernel) against the in-memory API."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import apiclient
from nodeagent.deviceplugin.podresources import DeviceAllocation
from nodeagent.wiring import Agent
from policy import names
from policy.objects import FINALIZER_AGENT
from tests.support.agent_env import build_agent, kubevirt_cr, pci_claim, usb_claim
from tests.support.fake_kube import FakeKube
from tests.support.simhost import ROOT_DISK_CONTROLLER, SimHost
from tests.support.simkernel import Crash

NODE = "node1"
NIC, NIC2, GPU, GPU_AUDIO = "0000:00:02.0", "0000:00:03.0", "0000:00:04.0", "0000:00:04.1"
XHCI = "0000:00:14.0"
NS = "harvester-system"


@pytest.fixture
def host(tmp_path: Path) -> SimHost:
    h = SimHost(tmp_path)
    h.pci(NIC, native="e1000e", group=1)
    h.pci(NIC2, native="e1000e", group=2)
    h.pci(GPU, native="nouveau", group=3, vendor="10de", device="1eb8", cls="030200")
    h.pci(GPU_AUDIO, native="snd_hda_intel", group=3, vendor="10de", device="10f8", cls="040300")
    return h


@pytest.fixture
def api() -> FakeKube:
    k = FakeKube()
    k.put(apiclient.NODES, {"metadata": {"name": NODE}})
    k.put(apiclient.KUBEVIRTS, kubevirt_cr(pci=[_foreign()]), namespace=NS)
    return k


def _foreign() -> dict[str, Any]:
    return {"pciVendorSelector": "15b3:101e", "resourceName": "nvidia.com/MLX_VF", "externalResourceProvider": True}


def _name(address: str) -> str:
    return names.pcidevice_name(NODE, address)


def _claim_status(api: FakeKube, address: str) -> dict[str, Any]:
    obj = api.peek("pcideviceclaims", _name(address))
    assert obj is not None
    return obj.get("status") or {}


def _cond(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in status.get("conditions", []) if c["type"] == type_)


def _permitted(api: FakeKube) -> list[str]:
    cr = api.peek("kubevirts", "kubevirt", NS)
    assert cr is not None
    return [e["resourceName"] for e in cr["spec"]["configuration"]["permittedHostDevices"].get("pciHostDevices", [])]


def _agent(host: SimHost, api: FakeKube, **kw: Any) -> Agent:
    return build_agent(host, api, NODE, **kw)


def test_first_pass_creates_device_objects_with_node_owner_label_and_appearance_events(
    host: SimHost, api: FakeKube
) -> None:
    _agent(host, api).node_pass()
    objs = {o["metadata"]["name"]: o for o in api.objects("pcidevices")}
    assert set(objs) == {_name(a) for a in (NIC, NIC2, GPU, GPU_AUDIO, ROOT_DISK_CONTROLLER)}
    node_uid = api.peek("nodes", NODE)["metadata"]["uid"]  # type: ignore[index]
    nic = objs[_name(NIC)]
    assert nic["metadata"]["labels"] == {names.LABEL_NODENAME: NODE}
    assert nic["metadata"]["ownerReferences"] == [{"apiVersion": "v1", "kind": "Node", "name": NODE, "uid": node_uid}]
    assert nic["status"]["kernelDriverInUse"] == "e1000e"
    assert [(c["type"], c["status"]) for c in nic["status"]["conditions"]] == [("Present", "True")]
    assert objs[_name(ROOT_DISK_CONTROLLER)]["status"]["hostCritical"] is True
    reasons = {e["reason"] for e in api.objects("events")}
    assert reasons == {"Appeared"}


def test_an_idle_node_makes_zero_api_writes(host: SimHost, api: FakeKube) -> None:
    api.put(apiclient.PCIDEVICECLAIMS, pci_claim(NODE, NIC))
    agent = _agent(host, api)
    agent.node_pass()
    agent.node_pass()
    before = len(api.writes)
    for _ in range(5):
        agent.node_pass()
    assert api.writes[before:] == []
    assert host.sim.driver(NIC) == "vfio-pci"


def test_labels_and_annotations_set_by_others_are_kept(host: SimHost, api: FakeKube) -> None:
    agent = _agent(host, api)
    agent.node_pass()
    obj = api.peek("pcidevices", _name(NIC))
    assert obj is not None
    obj["metadata"]["labels"]["team"] = "gpu"
    obj["metadata"]["annotations"] = {"note": "keep me"}
    del obj["metadata"]["labels"][names.LABEL_NODENAME]
    api.put(apiclient.PCIDEVICES, obj)
    agent.node_pass()
    after = api.peek("pcidevices", _name(NIC))
    assert after is not None
    assert after["metadata"]["labels"] == {"team": "gpu", names.LABEL_NODENAME: NODE}
    assert after["metadata"]["annotations"] == {"note": "keep me"}


def test_a_claim_is_bound_and_permitted_with_its_per_device_resource_name(host: SimHost, api: FakeKube) -> None:
    api.put(apiclient.PCIDEVICECLAIMS, pci_claim(NODE, NIC))
    agent = _agent(host, api)
    agent.node_pass()
    claim = api.peek("pcideviceclaims", _name(NIC))
    assert claim is not None
    assert FINALIZER_AGENT in claim["metadata"]["finalizers"]
    st = claim["status"]
    assert st["kernelDriverToUnbind"] == "e1000e"
    assert st["passthroughEnabled"] is True
    assert _cond(st, "Bound")["status"] == "True"
    assert _cond(st, "GroupComplete")["status"] == "True"
    assert _cond(st, "Permitted")["status"] == "True"
    assert host.sim.driver(NIC) == "vfio-pci"
    assert host.sim.vfio_node(1)
    device = api.peek("pcidevices", _name(NIC))
    assert device is not None
    assert device["status"]["resourceName"] == f"intel.com/{_name(NIC)}"
    assert device["status"]["kernelDriverInUse"] == "e1000e"  # discovery of this pass ran before the bind
    agent.node_pass()
    device = api.peek("pcidevices", _name(NIC))
    assert device is not None and device["status"]["kernelDriverInUse"] == "vfio-pci"
    assert _permitted(api) == ["nvidia.com/MLX_VF", f"intel.com/{_name(NIC)}"]
    cr = api.peek("kubevirts", "kubevirt", NS)
    entry = cr["spec"]["configuration"]["permittedHostDevices"]["pciHostDevices"][1]  # type: ignore[index]
    assert entry == {
        "pciVendorSelector": "8086:10fb",
        "resourceName": f"intel.com/{_name(NIC)}",
        "externalResourceProvider": True,
    }


def test_resource_name_is_written_to_the_device_before_passthrough_is_enabled(host: SimHost, api: FakeKube) -> None:
    api.put(apiclient.PCIDEVICECLAIMS, pci_claim(NODE, NIC))
    _agent(host, api).node_pass()
    order = [
        (c.plural, c.subresource, c.body)
        for c in api.writes
        if (c.plural == "pcidevices" and c.name == _name(NIC) and "resourceName" in str(c.body))
        or (c.plural == "pcideviceclaims" and "passthroughEnabled" in str(c.body))
    ]
    kinds = [p for p, _, _ in order]
    assert kinds.index("pcidevices") < kinds.index("pcideviceclaims")


def test_original_driver_is_recorded_before_the_first_sysfs_write(host: SimHost, api: FakeKube) -> None:
    api.put(apiclient.PCIDEVICECLAIMS, pci_claim(NODE, NIC))
    host.sim.crash_at = 1
    with pytest.raises(Crash):
        _agent(host, api).node_pass()
    assert _claim_status(api, NIC)["kernelDriverToUnbind"] == "e1000e"


def test_deleting_a_claim_restores_the_driver_and_removes_the_permit(host: SimHost, api: FakeKube) -> None:
    api.put(apiclient.PCIDEVICECLAIMS, pci_claim(NODE, NIC))
    agent = _agent(host, api)
    agent.node_pass()
    api.remove(apiclient.PCIDEVICECLAIMS, _name(NIC))
    agent.node_pass()
    assert api.peek("pcideviceclaims", _name(NIC)) is None
    assert host.sim.driver(NIC) == "e1000e"
    assert _permitted(api) == ["nvidia.com/MLX_VF"]  # the foreign entry stays
    agent.node_pass()
    device = api.peek("pcidevices", _name(NIC))
    assert device is not None
    assert device["status"]["resourceName"] == "intel.com/82599ES_10GIGABIT_SFI_SFP_NETWORK_CONNECTION"


def test_release_writes_nothing_while_a_process_holds_the_device(host: SimHost, api: FakeKube) -> None:
    api.put(apiclient.PCIDEVICECLAIMS, pci_claim(NODE, NIC))
    agent = _agent(host, api)
    agent.node_pass()
    pid = host.sim.hold(NIC)
    api.remove(apiclient.PCIDEVICECLAIMS, _name(NIC))
    writes = len(host.sim.writes)
    agent.node_pass()
    assert host.sim.writes[writes:] == []
    st = _claim_status(api, NIC)
    assert _cond(st, "InUse")["status"] == "True"
    assert "qemu-kvm (pid 4242)" in _cond(st, "InUse")["message"]
    assert host.sim.driver(NIC) == "vfio-pci"
    host.sim.exit_process(pid)
    agent.node_pass()
    assert api.peek("pcideviceclaims", _name(NIC)) is None
    assert host.sim.driver(NIC) == "e1000e"


def test_release_waits_while_the_kubelet_has_the_device_allocated(host: SimHost, api: FakeKube) -> None:
    allocs: list[DeviceAllocation] = []
    api.put(apiclient.PCIDEVICECLAIMS, pci_claim(NODE, NIC))
    agent = _agent(host, api, pod_resources=lambda: allocs)
    agent.node_pass()
    rn = f"intel.com/{_name(NIC)}"
    allocs.append(DeviceAllocation("vms", "virt-launcher-a", "compute", rn, NIC))
    vmi_ref = {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance", "name": "vm1", "uid": "u1"}
    api.put(apiclient.PODS, {"metadata": {"name": "virt-launcher-a", "ownerReferences": [vmi_ref]}}, namespace="vms")
    agent.node_pass()
    assert _claim_status(api, NIC)["allocatedTo"] == [
        {"pod": "vms/virt-launcher-a", "container": "compute", "vmi": "vms/vm1"}
    ]
    api.remove(apiclient.PCIDEVICECLAIMS, _name(NIC))
    agent.node_pass()
    assert "pod vms/virt-launcher-a" in _cond(_claim_status(api, NIC), "InUse")["message"]
    assert host.sim.driver(NIC) == "vfio-pci"
    allocs.clear()
    agent.node_pass()
    assert api.peek("pcideviceclaims", _name(NIC)) is None


def test_a_claim_whose_group_member_became_host_critical_is_refused_with_a_condition_and_event(
    host: SimHost, api: FakeKube
) -> None:
    host.tree.disk("sda", pci=GPU_AUDIO)
    host.tree.mount("sda", "/var/lib/longhorn")
    api.put(apiclient.PCIDEVICECLAIMS, pci_claim(NODE, GPU))
    agent = _agent(host, api)
    agent.node_pass()
    st = _claim_status(api, GPU)
    bound = _cond(st, "Bound")
    assert (bound["status"], bound["reason"]) == ("False", "Refused")
    assert GPU_AUDIO in bound["message"] and "host-critical" in bound["message"]
    assert not st.get("passthroughEnabled")
    assert host.sim.driver(GPU) == "nouveau"
    assert [e["reason"] for e in api.objects("events") if e["involvedObject"]["kind"] == "PCIDeviceClaim"] == [
        "Refused"
    ]
    events = len(api.objects("events"))
    agent.node_pass()
    assert len(api.objects("events")) == events  # the same refusal is not announced again


def test_a_group_member_claimed_by_another_owner_refuses_the_bind(host: SimHost, api: FakeKube) -> None:
    api.put(apiclient.PCIDEVICECLAIMS, pci_claim(NODE, GPU_AUDIO, owner="bob"))
    host.sim.hold  # noqa: B018 - nothing held: bob's claim binds normally
    api.put(apiclient.PCIDEVICECLAIMS, pci_claim(NODE, GPU, owner="alice"))
    _agent(host, api).node_pass()
    st = _cond(_claim_status(api, GPU), "Bound")
    assert st["reason"] == "Refused" and "another owner (bob)" in st["message"]


def test_group_complete_is_false_until_every_member_is_claimed(host: SimHost, api: FakeKube) -> None:
    api.put(apiclient.PCIDEVICECLAIMS, pci_claim(NODE, GPU))
    agent = _agent(host, api)
    agent.node_pass()
    gc = _cond(_claim_status(api, GPU), "GroupComplete")
    assert gc["status"] == "False" and GPU_AUDIO in gc["message"]
    api.put(apiclient.PCIDEVICECLAIMS, pci_claim(NODE, GPU_AUDIO))
    agent.node_pass()
    agent.node_pass()
    assert _cond(_claim_status(api, GPU), "GroupComplete")["status"] == "True"


def test_a_device_vanishing_while_claimed_is_kept_absent_and_its_claim_can_be_released(
    host: SimHost, api: FakeKube
) -> None:
    api.put(apiclient.PCIDEVICECLAIMS, pci_claim(NODE, NIC))
    api.put(apiclient.PCIDEVICECLAIMS, pci_claim(NODE, NIC2))  # NIC2 unclaimed below
    agent = _agent(host, api)
    agent.node_pass()
    api.remove(apiclient.PCIDEVICECLAIMS, _name(NIC2))
    agent.node_pass()
    host.unplug(NIC)
    host.unplug(NIC2)
    agent.node_pass()
    kept = api.peek("pcidevices", _name(NIC))
    assert kept is not None and kept["status"]["absent"] is True
    assert _cond(kept["status"], "Present")["reason"] == "Vanished"
    assert api.peek("pcidevices", _name(NIC2)) is None
    assert api.peek("pcideviceclaims", _name(NIC)) is not None
    assert "Absent" in {e["reason"] for e in api.objects("events")}
    api.remove(apiclient.PCIDEVICECLAIMS, _name(NIC))
    agent.node_pass()
    assert api.peek("pcideviceclaims", _name(NIC)) is None
    agent.node_pass()
    assert api.peek("pcidevices", _name(NIC)) is None


def test_claimed_devices_are_bound_again_after_a_reboot(host: SimHost, api: FakeKube) -> None:
    api.put(apiclient.PCIDEVICECLAIMS, pci_claim(NODE, NIC))
    _agent(host, api).node_pass()
    host.reboot()
    assert host.sim.driver(NIC) == "e1000e"
    _agent(host, api).node_pass()  # a fresh agent process
    assert host.sim.driver(NIC) == "vfio-pci"
    assert _claim_status(api, NIC)["kernelDriverToUnbind"] == "e1000e"


@pytest.mark.parametrize("crash_at", [1, 2, 3])
def test_a_crash_after_any_bind_write_converges_on_restart(host: SimHost, api: FakeKube, crash_at: int) -> None:
    api.put(apiclient.PCIDEVICECLAIMS, pci_claim(NODE, NIC))
    host.sim.crash_at = crash_at
    with pytest.raises(Crash):
        _agent(host, api).node_pass()
    host.sim.crash_at = None
    agent = _agent(host, api)
    agent.node_pass()
    assert host.sim.driver(NIC) == "vfio-pci"
    assert _claim_status(api, NIC)["passthroughEnabled"] is True
    api.remove(apiclient.PCIDEVICECLAIMS, _name(NIC))
    agent.node_pass()
    assert host.sim.driver(NIC) == "e1000e"


@pytest.mark.parametrize("crash_at", [1, 2, 3])
def test_a_crash_after_any_release_write_converges_on_restart(host: SimHost, api: FakeKube, crash_at: int) -> None:
    api.put(apiclient.PCIDEVICECLAIMS, pci_claim(NODE, NIC))
    _agent(host, api).node_pass()
    api.remove(apiclient.PCIDEVICECLAIMS, _name(NIC))
    host.sim.crash_at = len(host.sim.writes) + crash_at
    host.sim._count = len(host.sim.writes)
    try:
        _agent(host, api).node_pass()
    except Crash:
        pass
    host.sim.crash_at = None
    _agent(host, api).node_pass()
    assert api.peek("pcideviceclaims", _name(NIC)) is None
    assert host.sim.driver(NIC) == "e1000e"


def test_a_foreign_vfio_device_is_never_touched(host: SimHost, api: FakeKube) -> None:
    host.sim.bind_foreign(NIC2)
    api.put(apiclient.PCIDEVICECLAIMS, pci_claim(NODE, NIC2))
    _agent(host, api).node_pass()
    assert _cond(_claim_status(api, NIC2), "Bound")["reason"] == "NotOurs"
    api.remove(apiclient.PCIDEVICECLAIMS, _name(NIC2))
    writes = len(host.sim.writes)
    _agent(host, api).node_pass()
    assert host.sim.writes[writes:] == []
    assert host.sim.driver(NIC2) == "vfio-pci"


def test_api_errors_are_retried_and_converge_without_duplicates(host: SimHost, api: FakeKube) -> None:
    api.put(apiclient.PCIDEVICECLAIMS, pci_claim(NODE, NIC))
    agent = _agent(host, api)
    api.fail_next("patch", "pcideviceclaims")
    agent.runner.step()
    assert agent.runner.stats.consecutive_failures == 1
    api.down = True
    agent.runner.step()
    api.down = False
    agent.runner.step()
    agent.runner.step()
    assert agent.runner.stats.consecutive_failures == 0
    assert _claim_status(api, NIC)["passthroughEnabled"] is True
    assert len(api.objects("pcidevices")) == 5
    assert _permitted(api).count(f"intel.com/{_name(NIC)}") == 1


def test_a_permit_conflict_is_retried_from_a_fresh_read(host: SimHost, api: FakeKube) -> None:
    api.put(apiclient.PCIDEVICECLAIMS, pci_claim(NODE, NIC))
    api.fail_next("patch", "kubevirts", apiclient.Conflict("409: modified", status=409))
    _agent(host, api).node_pass()
    assert f"intel.com/{_name(NIC)}" in _permitted(api)


def test_a_stale_resource_version_is_never_written_to_the_kubevirt_cr(host: SimHost, api: FakeKube) -> None:
    api.put(apiclient.PCIDEVICECLAIMS, pci_claim(NODE, NIC))
    agent = _agent(host, api)
    agent.node_pass()
    patches = [c for c in api.writes if c.plural == "kubevirts"]
    assert patches and all(c.body["metadata"]["resourceVersion"] for c in patches)


def test_the_host_devices_gate_off_is_reported_on_the_claim(host: SimHost, api: FakeKube) -> None:
    api.put(apiclient.KUBEVIRTS, kubevirt_cr(gate=False), namespace=NS)
    api.put(apiclient.PCIDEVICECLAIMS, pci_claim(NODE, NIC))
    _agent(host, api).node_pass()
    permitted = _cond(_claim_status(api, NIC), "Permitted")
    assert (permitted["status"], permitted["reason"]) == ("False", "HostDevicesGateOff")


def test_a_kubevirt_cr_in_another_namespace_is_found(host: SimHost, api: FakeKube) -> None:
    api.remove(apiclient.KUBEVIRTS, "kubevirt", namespace=NS)
    api.put(apiclient.KUBEVIRTS, kubevirt_cr(), namespace="kubevirt")
    api.put(apiclient.PCIDEVICECLAIMS, pci_claim(NODE, NIC))
    _agent(host, api).node_pass()
    cr = api.peek("kubevirts", "kubevirt", "kubevirt")
    assert cr is not None
    assert [e["resourceName"] for e in cr["spec"]["configuration"]["permittedHostDevices"]["pciHostDevices"]] == [
        f"intel.com/{_name(NIC)}"
    ]


def test_pooled_mode_and_adopted_claims_keep_the_pooled_name(host: SimHost, api: FakeKube) -> None:
    pooled = "intel.com/82599ES_10GIGABIT_SFI_SFP_NETWORK_CONNECTION"
    api.put(apiclient.PCIDEVICECLAIMS, pci_claim(NODE, NIC))
    api.put(apiclient.PCIDEVICECLAIMS, pci_claim(NODE, NIC2, disableResourcePooling=True))
    _agent(host, api, resource_names="pooled").node_pass()
    assert api.peek("pcidevices", _name(NIC))["status"]["resourceName"] == pooled  # type: ignore[index]
    assert api.peek("pcidevices", _name(NIC2))["status"]["resourceName"] == f"intel.com/{_name(NIC2)}"  # type: ignore[index]


def test_an_adopted_claim_keeps_the_pooled_name_in_per_device_mode(host: SimHost, api: FakeKube) -> None:
    claim = pci_claim(NODE, NIC)
    claim["metadata"]["annotations"] = {names.ANNOTATION_REQUESTED_BY: "legacy:admin"}
    api.put(apiclient.PCIDEVICECLAIMS, claim)
    _agent(host, api).node_pass()
    rn = api.peek("pcidevices", _name(NIC))["status"]["resourceName"]  # type: ignore[index]
    assert rn == "intel.com/82599ES_10GIGABIT_SFI_SFP_NETWORK_CONNECTION"


def test_a_pooled_permit_stays_while_a_claim_on_another_node_needs_it(host: SimHost, api: FakeKube) -> None:
    pooled = "intel.com/82599ES_10GIGABIT_SFI_SFP_NETWORK_CONNECTION"
    api.put(apiclient.PCIDEVICECLAIMS, pci_claim(NODE, NIC))
    agent = _agent(host, api, resource_names="pooled")
    agent.node_pass()
    other = "node2-000000020"
    api.put(
        apiclient.PCIDEVICES,
        {"metadata": {"name": other, "labels": {names.LABEL_NODENAME: "node2"}}, "status": {"resourceName": pooled}},
    )
    api.put(apiclient.PCIDEVICECLAIMS, pci_claim("node2", NIC))
    api.remove(apiclient.PCIDEVICECLAIMS, _name(NIC))
    agent.node_pass()
    assert pooled in _permitted(api)
    api.remove(apiclient.PCIDEVICECLAIMS, other)
    agent.node_pass()
    assert pooled not in _permitted(api)


def test_a_usb_claim_enables_the_device_and_reports_node_and_controller(host: SimHost, api: FakeKube) -> None:
    host.pci(XHCI, native="xhci_hcd", group=7, cls="0c0330")
    host.tree.usb("1-2", vendor="0951", product="1666", devnum=4, controller=XHCI, serial="ABC")
    owned: list[tuple[str, int, int]] = []
    agent = _agent(host, api, chown=lambda p, u, g: owned.append((p, u, g)))
    agent.node_pass()
    usb_name = names.usbdevice_name(NODE, "0951", "1666", 1, 4)
    assert api.peek("usbdevices", usb_name)["status"]["enabled"] is False  # type: ignore[index]
    api.put(apiclient.USBDEVICECLAIMS, usb_claim(usb_name))
    agent.node_pass()
    claim = api.peek("usbdeviceclaims", usb_name)
    assert claim is not None
    assert claim["status"]["nodeName"] == NODE and claim["status"]["pciAddress"] == XHCI
    assert api.peek("usbdevices", usb_name)["status"]["enabled"] is True  # type: ignore[index]
    assert owned and owned[0][0].endswith("dev/bus/usb/001/004") and owned[0][1:] == (107, 107)
    cr = api.peek("kubevirts", "kubevirt", NS)
    assert cr["spec"]["configuration"]["permittedHostDevices"]["usb"] == [  # type: ignore[index]
        {
            "resourceName": f"kubevirt.io/{usb_name}",
            "selectors": [{"vendor": "0951", "product": "1666"}],
            "externalResourceProvider": True,
        }
    ]
    api.remove(apiclient.USBDEVICECLAIMS, usb_name)
    agent.node_pass()
    agent.node_pass()
    assert api.peek("usbdeviceclaims", usb_name) is None
    assert api.peek("usbdevices", usb_name)["status"]["enabled"] is False  # type: ignore[index]
    assert "usb" not in str(_permitted(api)) and api.peek("kubevirts", "kubevirt", NS)["spec"]["configuration"][  # type: ignore[index]
        "permittedHostDevices"
    ]["usb"] == []


def test_a_claimed_usb_device_that_disappears_is_kept_orphaned(host: SimHost, api: FakeKube) -> None:
    host.pci(XHCI, native="xhci_hcd", group=7, cls="0c0330")
    where = host.tree.usb("1-2", vendor="0951", product="1666", devnum=4, controller=XHCI)
    usb_name = names.usbdevice_name(NODE, "0951", "1666", 1, 4)
    api.put(apiclient.USBDEVICECLAIMS, usb_claim(usb_name))
    agent = _agent(host, api)
    agent.node_pass()
    agent.node_pass()
    import shutil

    shutil.rmtree(where)
    (host.base / "sys/bus/usb/devices/1-2").unlink()
    agent.node_pass()
    dev = api.peek("usbdevices", usb_name)
    assert dev is not None
    assert dev["status"]["absent"] is True and dev["status"]["status"] == "orphaned"
    assert _cond(api.peek("usbdeviceclaims", usb_name)["status"], "Ready")["reason"] == "DeviceAbsent"  # type: ignore[index]


def test_a_usb_controller_with_claimed_usb_devices_cannot_be_bound(host: SimHost, api: FakeKube) -> None:
    host.pci(XHCI, native="xhci_hcd", group=7, cls="0c0330")
    host.tree.usb("1-2", vendor="0951", product="1666", devnum=4, controller=XHCI)
    usb_name = names.usbdevice_name(NODE, "0951", "1666", 1, 4)
    api.put(apiclient.USBDEVICECLAIMS, usb_claim(usb_name))
    api.put(apiclient.PCIDEVICECLAIMS, pci_claim(NODE, XHCI))
    _agent(host, api).node_pass()
    bound = _cond(_claim_status(api, XHCI), "Bound")
    assert bound["reason"] == "Refused" and "USB controller" in bound["message"]
    assert host.sim.driver(XHCI) == "xhci_hcd"


def test_a_blocked_unbind_shows_unbind_pending_until_the_holder_lets_go(host: SimHost, api: FakeKube) -> None:
    api.put(apiclient.PCIDEVICECLAIMS, pci_claim(NODE, NIC))
    agent = _agent(host, api)
    agent.node_pass()
    pid = host.sim.hold(NIC)
    # The holder's group-node fd is not visible to the scan (as when /proc is not the host's): only the kernel knows.
    for fd in (host.base / "proc" / str(pid) / "fd").iterdir():
        fd.unlink()
    api.remove(apiclient.PCIDEVICECLAIMS, _name(NIC))
    agent.node_pass()  # returns although the unbind is still blocked in the kernel
    pending = _cond(_claim_status(api, NIC), "UnbindPending")
    assert pending["status"] == "True"
    assert api.peek("pcideviceclaims", _name(NIC)) is not None
    agent.node_pass()
    assert _cond(_claim_status(api, NIC), "UnbindPending")["status"] == "True"
    host.sim.exit_process(pid)
    for _ in range(50):
        agent.node_pass()
        if api.peek("pcideviceclaims", _name(NIC)) is None:
            break
    assert api.peek("pcideviceclaims", _name(NIC)) is None
    assert host.sim.driver(NIC) == "e1000e"


def test_after_a_reboot_a_claim_whose_group_became_host_critical_is_refused_and_not_enabled(
    host: SimHost, api: FakeKube
) -> None:
    api.put(apiclient.PCIDEVICECLAIMS, pci_claim(NODE, GPU))
    api.put(apiclient.PCIDEVICECLAIMS, pci_claim(NODE, GPU_AUDIO))
    _agent(host, api).node_pass()
    assert _claim_status(api, GPU)["passthroughEnabled"] is True
    host.reboot()
    host.tree.disk("sda", pci=GPU_AUDIO)
    host.tree.mount("sda", "/var/lib/longhorn")
    _agent(host, api).node_pass()
    st = _claim_status(api, GPU)
    assert st["passthroughEnabled"] is False
    assert _cond(st, "Bound")["reason"] == "Refused"
    assert host.sim.driver(GPU) == "nouveau" and host.sim.driver(GPU_AUDIO) == "snd_hda_intel"


def test_a_claim_named_after_another_device_binds_nothing(host: SimHost, api: FakeKube) -> None:
    claim = pci_claim(NODE, NIC)
    claim["spec"]["address"] = NIC2
    api.put(apiclient.PCIDEVICECLAIMS, claim)
    _agent(host, api).node_pass()
    assert _cond(_claim_status(api, NIC), "Bound")["reason"] == "NameMismatch"
    assert host.sim.driver(NIC) == host.sim.driver(NIC2) == "e1000e"


def test_a_forbidden_kubevirt_list_or_node_read_does_not_stop_the_node(host: SimHost, api: FakeKube) -> None:
    import apiclient

    api.fail_next("list", "kubevirts", apiclient.KubeError("403: forbidden", status=403))
    api.fail_next("get", "nodes", apiclient.KubeError("403: forbidden", status=403))
    api.put(apiclient.PCIDEVICECLAIMS, pci_claim(NODE, NIC))
    _agent(host, api).node_pass()
    st = _claim_status(api, NIC)
    assert st["passthroughEnabled"] is True
    assert _cond(st, "Permitted")["reason"] == "NoKubeVirt"


def test_every_step_logs_constant_messages_with_valid_extras(
    host: SimHost, api: FakeKube, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    caplog.set_level(logging.DEBUG)
    api.put(apiclient.PCIDEVICECLAIMS, pci_claim(NODE, NIC))
    agent = _agent(host, api)
    agent.node_pass()
    host.unplug(NIC2)
    api.remove(apiclient.PCIDEVICECLAIMS, _name(NIC))
    agent.node_pass()
    messages = {r.getMessage() for r in caplog.records}
    assert {"device object created", "bound device to vfio-pci", "claim released", "device object deleted"} <= messages
    assert all(getattr(r, "object", None) for r in caplog.records if r.getMessage() == "device object created")


@pytest.mark.parametrize("failing_write", range(1, 9))  # a claim takes 8 writes, its release 5
def test_a_failed_api_write_at_any_step_of_claim_and_release_converges(
    host: SimHost, api: FakeKube, failing_write: int
) -> None:
    agent = _agent(host, api)
    agent.node_pass()
    api.put(apiclient.PCIDEVICECLAIMS, pci_claim(NODE, NIC))
    api.fail_write_at = failing_write
    for _ in range(3):
        agent.runner.step()
        assert host.sim.driver(NIC) in ("e1000e", "vfio-pci")  # never driverless
    assert api.fail_write_at is None  # the failure did happen (a failed Event is logged, not retried)
    st = _claim_status(api, NIC)
    assert st["passthroughEnabled"] is True and host.sim.driver(NIC) == "vfio-pci"
    assert _permitted(api).count(f"intel.com/{_name(NIC)}") == 1
    api.remove(apiclient.PCIDEVICECLAIMS, _name(NIC))
    api.fail_write_at = min(failing_write, 5)
    for _ in range(3):
        agent.runner.step()
        assert host.sim.driver(NIC) in ("e1000e", "vfio-pci")
    assert api.fail_write_at is None
    assert api.peek("pcideviceclaims", _name(NIC)) is None
    assert host.sim.driver(NIC) == "e1000e"
    assert _permitted(api) == ["nvidia.com/MLX_VF"]
    assert len(api.objects("pcidevices")) == 5
