"""Pure answers of the device plugins: Allocate, GetPreferredAllocation, the device list, health judgement."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nodeagent.deviceplugin import allocate, errors, health, manager, model, registration
from policy import names

RES = "nvidia.com/node1-000001000"
ENV = "PCI_RESOURCE_NVIDIA_COM_NODE1-000001000"


def pci(address: str, group: int, numa: int | None = None) -> model.PciDevice:
    return model.PciDevice(address, group, numa)


def snap(*devs: model.PciDevice, unhealthy: tuple[str, ...] = (), cdev: bool = False, iommufd: bool = False):
    states = tuple(
        model.PciState(
            d,
            d.address not in unhealthy,
            "bound to nvidia, not vfio-pci" if d.address in unhealthy else "",
            f"vfio{i}" if cdev else None,
        )
        for i, d in enumerate(devs)
    )
    return model.PciSnapshot(RES, states, iommufd)


GPU = pci("0000:3b:00.0", 45, 0)
AUDIO = pci("0000:3b:00.1", 45, 0)
OTHER = pci("0000:af:00.0", 90, 1)


def test_pci_allocation_names_vfio_container_group_node_and_env():
    got = allocate.build_allocation(snap(GPU, OTHER), ["0000:af:00.0", "0000:3b:00.0"])
    assert got.envs == {ENV: "0000:af:00.0,0000:3b:00.0"}
    assert got.devices == (
        allocate.DeviceSpec("/dev/vfio/vfio", "/dev/vfio/vfio", "mrw"),
        allocate.DeviceSpec("/dev/vfio/90", "/dev/vfio/90", "mrw"),
        allocate.DeviceSpec("/dev/vfio/45", "/dev/vfio/45", "mrw"),
    )


def test_pci_allocation_lists_each_address_and_group_once():
    got = allocate.build_allocation(snap(GPU, AUDIO), ["0000:3b:00.0", "0000:3b:00.1", "0000:3b:00.0"])
    assert got.envs[ENV] == "0000:3b:00.0,0000:3b:00.1"
    assert [d.host_path for d in got.devices] == ["/dev/vfio/vfio", "/dev/vfio/45"]


def test_pci_allocation_adds_iommu_and_vfio_cdev_only_when_both_exist():
    with_both = allocate.build_allocation(snap(GPU, AUDIO, cdev=True, iommufd=True), ["0000:3b:00.1"])
    assert [d.host_path for d in with_both.devices] == [
        "/dev/vfio/vfio",
        "/dev/vfio/45",
        "/dev/iommu",
        "/dev/vfio/devices/vfio1",
    ]
    no_iommu = allocate.build_allocation(snap(GPU, cdev=True, iommufd=False), ["0000:3b:00.0"])
    no_cdev = allocate.build_allocation(snap(GPU, cdev=False, iommufd=True), ["0000:3b:00.0"])
    assert [d.host_path for d in no_iommu.devices] == ["/dev/vfio/vfio", "/dev/vfio/45"]
    assert [d.host_path for d in no_cdev.devices] == ["/dev/vfio/vfio", "/dev/vfio/45"]


def test_allocation_of_an_unknown_id_fails_naming_it_and_what_is_served():
    with pytest.raises(errors.UnknownDevice, match=r"has no device 0000:00:02.0; it serves 0000:3b:00.0"):
        allocate.build_allocation(snap(GPU), ["0000:3b:00.0", "0000:00:02.0"])


def test_allocation_of_an_unhealthy_id_fails_with_the_reason():
    with pytest.raises(errors.UnhealthyDevice, match=r"0000:3b:00.0: bound to nvidia, not vfio-pci"):
        allocate.build_allocation(snap(GPU, unhealthy=("0000:3b:00.0",)), ["0000:3b:00.0"])


def test_allocation_of_no_device_fails():
    with pytest.raises(errors.AllocationError, match="names no device"):
        allocate.build_allocation(snap(GPU), [])


def test_usb_allocation_names_the_bus_node_and_decimal_bus_and_device():
    dev = model.UsbDevice(2, 14)
    s = model.UsbSnapshot("kubevirt.io/node1-0951-1666-002014", model.UsbState(dev, True))
    got = allocate.build_allocation(s, [dev.id])
    assert got.envs == {"USB_RESOURCE_KUBEVIRT_IO_NODE1-0951-1666-002014": "2:14"}
    assert got.devices == (allocate.DeviceSpec("/dev/bus/usb/002/014", "/dev/bus/usb/002/014", "mrw"),)


def test_usb_allocation_of_a_missing_device_fails():
    dev = model.UsbDevice(2, 14)
    s = model.UsbSnapshot("kubevirt.io/x", health.judge_usb(dev, False))
    with pytest.raises(errors.UnhealthyDevice, match="/dev/bus/usb/002/014 does not exist"):
        allocate.build_allocation(s, [dev.id])


def test_env_var_names_come_from_the_naming_module_as_kubevirt_computes_them():
    pooled = "intel.com/ETHERNET_CONNECTION_11_I219LM"
    got = allocate.build_allocation(model.PciSnapshot(pooled, (model.PciState(GPU, True),)), [GPU.address])
    assert got.envs == {"PCI_RESOURCE_INTEL_COM_ETHERNET_CONNECTION_11_I219LM": GPU.address}


def test_device_list_omits_topology_when_numa_is_unknown():
    got = allocate.build_device_list(snap(GPU, pci("0000:00:02.0", 1, None), unhealthy=("0000:00:02.0",)))
    assert got == (
        allocate.ListedDevice("0000:3b:00.0", True, 0),
        allocate.ListedDevice("0000:00:02.0", False, None),
    )


# -- GetPreferredAllocation ------------------------------------------------------------------------------------


def addr(i: int) -> str:
    return f"0000:{i // 8 + 1:02x}:00.{i % 8}"


def test_preferred_keeps_iommu_groups_whole():
    # groups: 10 = {0,1}, 11 = {2}, 12 = {3,4}; asking for 2 must give a whole group, not 0 + 2
    devs = [pci(addr(0), 10), pci(addr(1), 10), pci(addr(2), 11), pci(addr(3), 12), pci(addr(4), 12)]
    ids = [d.address for d in devs]
    assert allocate.plan_preferred(snap(*devs), ids, [], 2) == (addr(0), addr(1))
    assert allocate.plan_preferred(snap(*devs), ids, [addr(3)], 3) == (addr(2), addr(3), addr(4))


def test_preferred_honours_must_include_and_takes_its_group_along():
    devs = [pci(addr(0), 10), pci(addr(1), 11), pci(addr(2), 11)]
    got = allocate.plan_preferred(snap(*devs), [d.address for d in devs], [addr(2)], 2)
    assert got == (addr(1), addr(2))


def test_preferred_prefers_one_numa_node():
    devs = [pci(addr(0), 1, 0), pci(addr(1), 2, 1), pci(addr(2), 3, 1), pci(addr(3), 4, 0)]
    ids = [d.address for d in devs]
    assert allocate.plan_preferred(snap(*devs), ids, [addr(3)], 2) == (addr(0), addr(3))
    assert allocate.plan_preferred(snap(*devs), ids, [addr(1)], 2) == (addr(1), addr(2))


def test_preferred_splits_a_group_only_when_no_whole_cover_exists():
    devs = [pci(addr(0), 10), pci(addr(1), 10), pci(addr(2), 11), pci(addr(3), 11)]
    got = allocate.plan_preferred(snap(*devs), [d.address for d in devs], [], 3)
    assert len(got) == 3 and set(got) >= {addr(0), addr(1)}


@settings(max_examples=200, deadline=None)
@given(
    groups=st.lists(st.integers(0, 6), min_size=1, max_size=16),
    numas=st.lists(st.sampled_from([None, 0, 1]), min_size=16, max_size=16),
    data=st.data(),
)
def test_preferred_returns_exactly_the_size_and_every_must_include(groups, numas, data):
    devs = [pci(addr(i), g, numas[i]) for i, g in enumerate(groups)]
    ids = [d.address for d in devs]
    must = data.draw(st.lists(st.sampled_from(ids), unique=True, max_size=len(ids)))
    size = data.draw(st.integers(len(must), len(ids)))
    got = allocate.plan_preferred(snap(*devs), ids, must, size)
    assert len(got) == size == len(set(got))
    assert set(must) <= set(got) <= set(ids)
    # whenever whole groups can make up the size, the answer splits no group
    by_group: dict[int, set[str]] = {}
    for d in devs:
        by_group.setdefault(d.iommu_group, set()).add(d.address)
    must_groups = {g for g, m in by_group.items() if m & set(must)}
    base = sum(len(by_group[g]) for g in must_groups)
    sums = {0}
    for g, m in by_group.items():
        if g not in must_groups:
            sums |= {s + len(m) for s in sums}
    if size - base in sums:
        assert all(m <= set(got) or not (m & set(got)) for m in by_group.values())


# -- health judgement ------------------------------------------------------------------------------------------


def member(a: str, driver: str | None = "vfio-pci", bridge: bool = False) -> health.GroupMember:
    return health.GroupMember(a, bridge, driver)


@pytest.mark.parametrize(
    ("facts", "healthy", "reason"),
    [
        (health.PciFacts("vfio-pci", True, (member(GPU.address),)), True, ""),
        (health.PciFacts("nvidia", True, (member(GPU.address, "nvidia"),)), False, "bound to nvidia"),
        (health.PciFacts(None, True, (member(GPU.address, None),)), False, "bound to no driver"),
        (health.PciFacts("vfio-pci", False, (member(GPU.address),)), False, "/dev/vfio/45 does not exist"),
        (
            health.PciFacts("vfio-pci", True, (member(GPU.address), member(AUDIO.address, "snd_hda_intel"))),
            False,
            "iommu group 45 incomplete: 0000:3b:00.1 not on vfio-pci",
        ),
        (
            health.PciFacts("vfio-pci", True, (member(GPU.address), member("0000:3a:00.0", "pcieport", True))),
            True,
            "",
        ),
        (health.PciFacts("vfio-pci", True, ()), False, "not a member of iommu group 45"),
    ],
    ids=["bound", "other driver", "no driver", "no group node", "group incomplete", "bridge exempt", "no member"],
)
def test_pci_health_requires_vfio_group_node_and_complete_group(facts, healthy, reason):
    got = health.judge_pci(GPU, facts)
    assert got.healthy is healthy
    assert reason in got.reason and (reason or got.reason == "")


# -- manager plan, backoff, socket names -----------------------------------------------------------------------


def test_plugin_plan_starts_stops_and_updates_by_resource_name():
    a = model.PciResource("a.com/x", (GPU,))
    a2 = model.PciResource("a.com/x", (GPU, AUDIO))
    u = model.UsbResource("kubevirt.io/u", model.UsbDevice(1, 2))
    u_as_pci = model.PciResource("kubevirt.io/u", (OTHER,))
    plan = manager.plan_plugins({"a.com/x": a, "kubevirt.io/u": u}, {"a.com/x": a2, "kubevirt.io/u": u_as_pci})
    assert plan == manager.PluginPlan(start=("kubevirt.io/u",), stop=("kubevirt.io/u",), update=("a.com/x",))
    assert manager.plan_plugins({"a.com/x": a}, {"a.com/x": a}) == manager.PluginPlan((), (), ())


def test_backoff_ladder_starts_at_a_quarter_second_and_ends_at_10_seconds():
    assert [manager.backoff(n) for n in range(1, 9)] == [0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 10.0, 10.0]


def test_socket_path_stays_short_for_a_63_character_node_and_the_longest_product_names():
    node = "n" + "-x" * 31  # 63 characters, the longest node name
    assert len(node) == 63
    product = "GA100 [A100 SXM4 80GB] / Very Long Marketing Name With Many Words And Virtual Function Suffix"
    resources = [
        names.pci_device_resource_name("NVIDIA Corporation", node, "0000:3b:00.0"),
        names.pci_device_resource_name("Advanced Micro Devices, Inc. [AMD/ATI]", node, "10000:e1:1f.7"),
        names.pci_resource_name("NVIDIA Corporation", product, "20b5"),
        names.usb_resource_name(names.usbdevice_name(node, "0951", "1666", 255, 127)),
    ]
    sockets = set()
    for resource in resources:
        assert all(len(part) <= 63 for part in resource.split("/"))  # valid extended-resource name parts
        path = f"{registration.DEVICE_PLUGIN_DIR}/{registration.socket_name(resource)}"
        assert len(path.encode()) < 108
        sockets.add(path)
    assert len(sockets) == len(resources)  # distinct resources never share a socket
    assert registration.socket_name(resources[0]) == registration.socket_name(resources[0])


def test_resources_group_pci_devices_by_name_and_give_each_usb_device_its_own():
    pooled = "nvidia.com/GA100_A100_SXM4_40GB"
    usb = model.UsbDevice(1, 3)
    got = model.build_resources(
        [(pooled, OTHER), (pooled, GPU), ("nvidia.com/node1-00003b001", AUDIO), (pooled, GPU)],
        [("kubevirt.io/node1-0951-1666-001003", usb)],
    )
    assert got == (
        model.UsbResource("kubevirt.io/node1-0951-1666-001003", usb),
        model.PciResource("nvidia.com/GA100_A100_SXM4_40GB", (GPU, OTHER)),
        model.PciResource("nvidia.com/node1-00003b001", (AUDIO,)),
    )
    with pytest.raises(ValueError, match="more than one device plugin"):
        model.build_resources([(pooled, GPU)], [(pooled, usb)])
