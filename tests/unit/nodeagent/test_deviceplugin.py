"""Device plugins over real gRPC on unix sockets, against a fake kubelet (tests/support/fake_kubelet.py)."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator

import grpc
import pytest
from prometheus_client import CollectorRegistry

from nodeagent.deviceplugin import health, manager, metrics, model, podresources, registration
from tests.support.fake_host import FakeHost
from tests.support.fake_kubelet import FakeKubelet, PodDevices

GPU = model.PciDevice("0000:3b:00.0", 45, 0)
AUDIO = model.PciDevice("0000:3b:00.1", 45, 0)
NIC = model.PciDevice("0000:af:00.0", 90, None)
PCI_RES = "nvidia.com/node1-00003b000"
USB = model.UsbDevice(2, 4)
USB_RES = "kubevirt.io/node1-0951-1666-002004"


class Running:
    """A PluginManager supervised by its own thread, as the agent runs it."""

    def __init__(self, kubelet: FakeKubelet, host: FakeHost, **kw: float) -> None:
        self.registry = CollectorRegistry()
        self.manager = manager.PluginManager(
            plugin_dir=kubelet.plugin_dir,
            probe=host,
            counters=metrics.PluginMetrics(self.registry),
            clock=time.monotonic,
            tick_s=kw.get("tick_s", 0.02),
            health_interval_s=kw.get("health_interval_s", 60.0),
            register_timeout_s=2.0,
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self.manager.run, args=(self._stop,), name="plugin-manager")
        self._thread.start()

    def metric(self, name: str, resource: str) -> float:
        return self.registry.get_sample_value(f"pcidevices_deviceplugin_{name}_total", {"resource": resource}) or 0.0

    def wait_metric(self, name: str, resource: str, value: float, timeout: float = 2.0) -> float:
        deadline = time.monotonic() + timeout
        while self.metric(name, resource) != value and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.metric(name, resource)

    def close(self) -> None:
        self._stop.set()
        self.manager.wake()
        self._thread.join(10)
        assert not self._thread.is_alive()


@pytest.fixture
def kubelet() -> Iterator[FakeKubelet]:
    with FakeKubelet() as k:
        yield k


@pytest.fixture
def short_dir() -> Iterator[str]:
    """A directory with a short path (tmp_path can exceed the 108-byte socket path limit)."""
    d = tempfile.mkdtemp(prefix="dp")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def host() -> FakeHost:
    h = FakeHost()
    for d in (GPU, AUDIO, NIC):
        h.bind(d)
    h.plug_usb(USB)
    return h


@pytest.fixture
def running(kubelet: FakeKubelet, host: FakeHost) -> Iterator[Running]:
    r = Running(kubelet, host)
    yield r
    r.close()


def test_plugin_serves_then_registers_with_version_endpoint_name_and_options(kubelet, running):
    running.manager.set_desired([model.PciResource(PCI_RES, (GPU, AUDIO))])
    req = kubelet.registration(PCI_RES)
    assert req.version == "v1beta1"
    assert req.endpoint == registration.socket_name(PCI_RES)
    assert req.resource_name == PCI_RES
    assert req.options.get_preferred_allocation_available is True
    assert req.options.pre_start_required is False
    assert os.path.exists(os.path.join(kubelet.plugin_dir, req.endpoint))  # served (the kubelet dialled back)
    assert running.wait_metric("registrations", PCI_RES, 1) == 1


def test_list_and_watch_sends_full_list_with_numa_topology_only_when_known(kubelet, running):
    running.manager.set_desired([model.PciResource(PCI_RES, (GPU, NIC))])
    got = kubelet.wait_devices(PCI_RES, lambda d: len(d) == 2)
    assert [(d.id, d.health, d.numa_nodes) for d in got] == [
        ("0000:3b:00.0", "Healthy", (0,)),
        ("0000:af:00.0", "Healthy", ()),
    ]


def test_health_flips_when_a_device_is_unbound_or_its_group_incomplete_and_back(kubelet, host, running):
    running.manager.set_desired([model.PciResource(PCI_RES, (GPU,))])
    kubelet.wait_devices(PCI_RES, lambda d: d[0].health == "Healthy")
    host.bind(GPU, driver="nvidia")
    running.manager.refresh()
    kubelet.wait_devices(PCI_RES, lambda d: d[0].health == "Unhealthy", timeout=2)
    host.bind(GPU)
    running.manager.refresh()
    kubelet.wait_devices(PCI_RES, lambda d: d[0].health == "Healthy", timeout=2)
    members = (health.GroupMember(GPU.address, False, "vfio-pci"), health.GroupMember(AUDIO.address, False, "snd"))
    host.set_facts(GPU, health.PciFacts("vfio-pci", True, members))
    running.manager.refresh()
    kubelet.wait_devices(PCI_RES, lambda d: d[0].health == "Unhealthy", timeout=2)
    assert running.metric("health_changes", PCI_RES) == 3


def test_health_is_polled_without_a_refresh(kubelet, host):
    r = Running(kubelet, host, health_interval_s=0.1)
    try:
        r.manager.set_desired([model.PciResource(PCI_RES, (GPU,))])
        kubelet.wait_devices(PCI_RES, lambda d: d[0].health == "Healthy")
        host.bind(GPU, driver="nvidia")
        kubelet.wait_devices(PCI_RES, lambda d: d[0].health == "Unhealthy", timeout=2)
    finally:
        r.close()


def test_pci_allocate_over_grpc_answers_kubevirts_contract(kubelet, running):
    running.manager.set_desired([model.PciResource(PCI_RES, (GPU, AUDIO, NIC))])
    kubelet.wait_devices(PCI_RES, lambda d: len(d) == 3)
    resp = kubelet.allocate(PCI_RES, ["0000:3b:00.0", "0000:3b:00.1", "0000:3b:00.0"], ["0000:af:00.0"])
    first, second = resp.container_responses
    assert dict(first.envs) == {"PCI_RESOURCE_NVIDIA_COM_NODE1-00003B000": "0000:3b:00.0,0000:3b:00.1"}
    assert [(d.container_path, d.host_path, d.permissions) for d in first.devices] == [
        ("/dev/vfio/vfio", "/dev/vfio/vfio", "mrw"),
        ("/dev/vfio/45", "/dev/vfio/45", "mrw"),
    ]
    assert [d.host_path for d in second.devices] == ["/dev/vfio/vfio", "/dev/vfio/90"]
    assert running.wait_metric("allocated_devices", PCI_RES, 4) == 4


def test_usb_allocate_over_grpc_names_the_bus_node_and_bus_colon_device(kubelet, running):
    running.manager.set_desired([model.UsbResource(USB_RES, USB)])
    kubelet.wait_devices(USB_RES, lambda d: d[0].health == "Healthy")
    (resp,) = kubelet.allocate(USB_RES, [USB.id]).container_responses
    assert dict(resp.envs) == {"USB_RESOURCE_KUBEVIRT_IO_NODE1-0951-1666-002004": "2:4"}
    assert [(d.container_path, d.host_path, d.permissions) for d in resp.devices] == [
        ("/dev/bus/usb/002/004", "/dev/bus/usb/002/004", "mrw")
    ]


def test_allocate_of_unknown_or_unhealthy_id_fails_with_a_clear_message(kubelet, host, running):
    running.manager.set_desired([model.PciResource(PCI_RES, (GPU, NIC))])
    kubelet.wait_devices(PCI_RES, lambda d: len(d) == 2)
    with pytest.raises(grpc.RpcError) as unknown:
        kubelet.allocate(PCI_RES, ["0000:00:02.0"])
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    assert "has no device 0000:00:02.0" in unknown.value.details()
    host.bind(NIC, driver="ixgbe")
    running.manager.refresh()
    kubelet.wait_devices(PCI_RES, lambda d: d[1].health == "Unhealthy")
    with pytest.raises(grpc.RpcError) as unhealthy:
        kubelet.allocate(PCI_RES, ["0000:af:00.0"])
    assert unhealthy.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "0000:af:00.0: bound to ixgbe, not vfio-pci" in unhealthy.value.details()


def test_preferred_allocation_over_grpc_keeps_the_group_together(kubelet, running):
    running.manager.set_desired([model.PciResource(PCI_RES, (GPU, AUDIO, NIC))])
    kubelet.wait_devices(PCI_RES, lambda d: len(d) == 3)
    got = kubelet.preferred(PCI_RES, ["0000:af:00.0", "0000:3b:00.0", "0000:3b:00.1"], ["0000:3b:00.1"], 2)
    assert got == ["0000:3b:00.0", "0000:3b:00.1"]


def test_plugin_reregisters_within_two_seconds_after_a_kubelet_restart(kubelet, running):
    running.manager.set_desired([model.PciResource(PCI_RES, (GPU,)), model.UsbResource(USB_RES, USB)])
    assert running.wait_metric("registrations", PCI_RES, 1) == 1  # registered on both sides
    assert running.wait_metric("registrations", USB_RES, 1) == 1
    before = len(kubelet.registrations)
    kubelet.restart()
    restarted = time.monotonic()
    assert kubelet.wait_for(lambda: set(kubelet.registered()) == {PCI_RES, USB_RES}, timeout=2)
    took = max(t for t, _ in kubelet.registrations[before:]) - restarted
    assert took < 2.0
    assert kubelet.wait_devices(PCI_RES, lambda d: len(d) == 1)[0].health == "Healthy"
    assert running.wait_metric("registrations", PCI_RES, 2) == 2


def test_plugin_keeps_serving_while_the_kubelet_is_gone_and_registers_when_it_returns(host):
    k = FakeKubelet()
    r = Running(k, host)
    try:
        r.manager.set_desired([model.PciResource(PCI_RES, (GPU,))])
        sock = os.path.join(k.plugin_dir, registration.socket_name(PCI_RES))
        deadline = time.monotonic() + 2
        while not os.path.exists(sock) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert os.path.exists(sock)
        time.sleep(0.3)
        assert r.metric("registration_failures", PCI_RES) >= 1
        status = r.manager.status()[PCI_RES]
        assert status.serving and not status.registered
        k.start()
        k.registration(PCI_RES, timeout=4)  # the ladder's first step is 1 s, the second 2 s
    finally:
        r.close()
        k.stop()


def test_removing_a_resource_stops_its_plugin_and_removes_its_socket(kubelet, running):
    running.manager.set_desired([model.PciResource(PCI_RES, (GPU,)), model.UsbResource(USB_RES, USB)])
    kubelet.wait_devices(USB_RES, lambda d: len(d) == 1)
    kubelet.wait_devices(PCI_RES, lambda d: len(d) == 1)
    running.manager.set_desired([model.PciResource(PCI_RES, (GPU,))])
    assert kubelet.wait_for(lambda: kubelet.stream_ended(USB_RES), timeout=2)
    assert not os.path.exists(os.path.join(kubelet.plugin_dir, registration.socket_name(USB_RES)))
    assert os.path.exists(os.path.join(kubelet.plugin_dir, registration.socket_name(PCI_RES)))


def test_changing_the_devices_of_a_resource_updates_the_list_without_reregistering(kubelet, running):
    running.manager.set_desired([model.PciResource(PCI_RES, (GPU,))])
    kubelet.wait_devices(PCI_RES, lambda d: len(d) == 1)
    running.manager.set_desired([model.PciResource(PCI_RES, (GPU, AUDIO))])
    kubelet.wait_devices(PCI_RES, lambda d: [x.id for x in d] == ["0000:3b:00.0", "0000:3b:00.1"])
    assert running.metric("registrations", PCI_RES) == 1


def test_pod_resources_client_reads_which_pod_holds_each_device(kubelet):
    kubelet.set_pod_resources(
        [
            PodDevices("vms", "virt-launcher-a", "compute", PCI_RES, ("0000:3b:00.0", "0000:3b:00.1")),
            PodDevices("vms", "virt-launcher-b", "compute", USB_RES, (USB.id,)),
            PodDevices("other", "gpu-job", "main", "nvidia.com/gpu", ("GPU-123",)),
        ]
    )
    allocations = podresources.list_allocations(kubelet.pod_resources_socket)
    index = podresources.index_allocations(allocations, [PCI_RES, USB_RES])
    assert index == {
        (PCI_RES, "0000:3b:00.0"): (podresources.Holder("vms", "virt-launcher-a", "compute"),),
        (PCI_RES, "0000:3b:00.1"): (podresources.Holder("vms", "virt-launcher-a", "compute"),),
        (USB_RES, USB.id): (podresources.Holder("vms", "virt-launcher-b", "compute"),),
    }
    kubelet.set_pod_resources([])
    assert podresources.list_allocations(kubelet.pod_resources_socket) == ()


def test_pod_resources_client_fails_clearly_without_a_kubelet():
    from nodeagent.deviceplugin import errors

    with pytest.raises(errors.PodResourcesError, match="cannot list pod resources"):
        podresources.list_allocations("/nonexistent/kubelet.sock", timeout_s=0.5)


def test_registration_is_retried_from_a_quarter_second_up_to_every_10_seconds_while_no_kubelet_listens(host, short_dir):
    now = [0.0]
    registry = CollectorRegistry()
    m = manager.PluginManager(
        plugin_dir=short_dir,
        probe=host,
        counters=metrics.PluginMetrics(registry),
        clock=lambda: now[0],
    )
    m.set_desired([model.PciResource(PCI_RES, (GPU,))])
    attempts = []
    for t in (0.0, 0.2, 0.25, 0.7, 0.75, 1.7, 1.75, 3.7, 3.75, 8.7, 8.75, 18.7, 18.75, 28.7, 28.75):
        now[0] = t
        m.step()
        failed = registry.get_sample_value(
            "pcidevices_deviceplugin_registration_failures_total", {"resource": PCI_RES}
        )
        if not attempts or failed != attempts[-1][1]:
            attempts.append((t, failed))
    m.close()
    assert [t for t, _ in attempts] == [0.0, 0.25, 0.75, 1.75, 3.75, 8.75, 18.75, 28.75]
    assert m.status() == {}


def test_a_plugin_that_cannot_serve_is_restarted_on_the_ladder_and_recovers(host, short_dir):
    base = short_dir
    plugin_dir = os.path.join(base, "device-plugins")  # missing: listening fails until it exists
    now = [0.0]
    m = manager.PluginManager(
        plugin_dir=plugin_dir,
        probe=host,
        counters=metrics.PluginMetrics(CollectorRegistry()),
        clock=lambda: now[0],
    )
    try:
        m.set_desired([model.PciResource(PCI_RES, (GPU,))])
        m.step()
        assert m.status()[PCI_RES].failures == 1 and not m.status()[PCI_RES].serving
        with FakeKubelet(base) as kubelet:  # creates the directory and kubelet.sock
            now[0] = 0.5
            m.step()  # a new kubelet.sock ends the wait early
            assert m.status()[PCI_RES].serving and m.status()[PCI_RES].registered
            assert kubelet.registration(PCI_RES).resource_name == PCI_RES
            m.close()  # before the kubelet goes away
    finally:
        m.close()


def test_allocated_to_follows_the_kubelets_pod_resources(kubelet):
    def allocated_to(device_id: str) -> list[podresources.AllocatedTo]:
        index = podresources.index_allocations(podresources.list_allocations(kubelet.pod_resources_socket))
        return podresources.build_allocated_to(index, PCI_RES, device_id)

    assert allocated_to(GPU.address) == []
    kubelet.set_pod_resources([PodDevices("vms", "virt-launcher-a-x1", "compute", PCI_RES, (GPU.address,))])
    assert allocated_to(GPU.address) == [{"pod": "vms/virt-launcher-a-x1", "container": "compute"}]
    assert allocated_to(AUDIO.address) == []
    kubelet.set_pod_resources([PodDevices("vms", "virt-launcher-b-y2", "compute", PCI_RES, (AUDIO.address,))])
    assert allocated_to(GPU.address) == []
    assert allocated_to(AUDIO.address) == [{"pod": "vms/virt-launcher-b-y2", "container": "compute"}]


def test_sockets_left_by_a_previous_agent_are_removed_at_start_and_others_kept(kubelet, host):
    stale = os.path.join(kubelet.plugin_dir, registration.socket_name("nvidia.com/gone"))
    foreign = os.path.join(kubelet.plugin_dir, "kubevirt-other.sock")
    for path in (stale, foreign):
        open(path, "w").close()
    r = Running(kubelet, host)
    try:
        r.manager.set_desired([model.PciResource(PCI_RES, (GPU,))])
        kubelet.registration(PCI_RES)
        assert not os.path.exists(stale)
        assert os.path.exists(foreign)
    finally:
        r.close()


class FlakyHost(FakeHost):
    """A probe that raises an unexpected error a few times (a bug, not a SysfsError)."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    def pci_facts(self, device: model.PciDevice) -> health.PciFacts:
        if self.failures > 0:
            self.failures -= 1
            raise RuntimeError("probe bug")
        return super().pci_facts(device)


def test_the_supervisor_survives_an_unexpected_error_and_the_plugin_still_registers(kubelet):
    host = FlakyHost(failures=3)
    host.bind(GPU)
    r = Running(kubelet, host)
    try:
        r.manager.set_desired([model.PciResource(PCI_RES, (GPU,))])
        for _ in range(3):
            r.manager.refresh()
            time.sleep(0.05)
        assert kubelet.wait_devices(PCI_RES, lambda d: len(d) == 1, timeout=3)[0].health == "Healthy"
        assert host.failures == 0
    finally:
        r.close()


def test_a_plugin_that_recovered_early_still_notices_the_next_kubelet_restart_at_once(host, short_dir):
    now = [0.0]
    m = manager.PluginManager(
        plugin_dir=os.path.join(short_dir, "device-plugins"),
        probe=host,
        counters=metrics.PluginMetrics(CollectorRegistry()),
        clock=lambda: now[0],
    )
    os.makedirs(os.path.join(short_dir, "device-plugins"))
    try:
        m.set_desired([model.PciResource(PCI_RES, (GPU,))])
        m.step()  # no kubelet yet: next attempt at t=0.25 s
        assert m.status()[PCI_RES].failures == 1
        with FakeKubelet(short_dir) as kubelet:
            now[0] = 0.1
            m.step()  # kubelet.sock appeared: registers before the backoff ends
            assert m.status()[PCI_RES].registered
            kubelet.restart()
            now[0] = 0.15
            m.step()  # still inside the old backoff window, yet the restart is handled now
            assert kubelet.wait_for(lambda: PCI_RES in kubelet.registered(), timeout=1)
            assert m.status()[PCI_RES].registered
            m.close()
    finally:
        m.close()


def test_registering_before_serving_is_refused_by_the_kubelets_dial_back(kubelet):
    from nodeagent.deviceplugin import errors, servicer

    state = servicer.PluginState(model.PciSnapshot(PCI_RES, ()))
    server = registration.PluginServer(
        resource_name=PCI_RES,
        plugin_dir=kubelet.plugin_dir,
        state=state,
        counters=metrics.PluginMetrics(CollectorRegistry()),
        register_timeout_s=3,
    )
    with pytest.raises(errors.RegistrationError, match="cannot dial back"):
        server.register()
    assert kubelet.registered() == []
    server.serve()
    try:
        server.register()
        assert kubelet.registered() == [PCI_RES]
    finally:
        server.stop()
