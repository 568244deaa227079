"""The agent's object graph, built in one place: settings + an API client -> a startable `Agent`.

Everything is injected here and nowhere else; tests build the same graph with a fake API, a fake tree and the
simulated kernel (`build(..., root=sim.root(), load_modules=sim.load_modules)`), and switch off the parts they do
not exercise (device plugins, udev, the HTTP port).
"""

from __future__ import annotations

import datetime
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

import apiclient
from apiclient import kinds
from nodeagent.deviceplugin import draplugin, model, usbowner
from nodeagent.deviceplugin import health as plugin_health
from nodeagent.deviceplugin import manager as plugin_manager
from nodeagent.deviceplugin import metrics as plugin_metrics
from nodeagent.dra import api as dra_api
from nodeagent.dra import cdi as dra_cdi
from nodeagent.dra.driver import DraDriver
from nodeagent.dra.model import PublishedDevice
from nodeagent.dra.node import DraNode, drivers_of
from nodeagent.errors import SysfsError
from nodeagent.events import EventRecorder
from nodeagent.health import HealthServer, HealthState
from nodeagent.host.binding import VfioBinder
from nodeagent.host.guard import KINDS as HOST_WRITE_KINDS
from nodeagent.host.guard import HostWriteGuard, guarded_chown, guarded_modules
from nodeagent.host.modules import Modprobe
from nodeagent.idsdb import NamesDatabases
from nodeagent.reconcile import allocations
from nodeagent.reconcile.cycle import HELD_RECHECK_S, NodePass
from nodeagent.reconcile.pcideviceclaims import PCIClaimReconciler
from nodeagent.reconcile.runner import Runner, Watcher
from nodeagent.reconcile.usbdeviceclaims import USBClaimReconciler
from nodeagent.settings import AgentSettings
from nodeagent.sysfs.root import SysfsRoot
from nodeagent.udev import UdevNudger
from policy import dra, names

log = logging.getLogger(__name__)


class UnexpectedAllocations(Collector):
    """Gauge `pcidevices_agent_unexpected_allocations{resource}`: per resource name this node offers, the pods the
    kubelet allocated it to that are not virt-launcher pods of a VMI the webhook admitted for it (the last pass's
    audit; 0 is the only good value)."""

    def __init__(self, node_pass: NodePass) -> None:
        self._pass = node_pass

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(
            "pcidevices_agent_unexpected_allocations",
            "Pods holding an offered device that are not virt-launcher pods of an admitted VMI, by resource name.",
            labels=["resource"],
        )
        for resource, count in sorted(self._pass.report.unexpected_allocations.items()):
            family.add_metric([resource], float(count))
        yield family


def utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Agent:
    """The running parts; `start()` launches their threads, `stop()` ends them."""

    settings: AgentSettings
    api: apiclient.CountingKube
    node_pass: NodePass
    runner: Runner
    watchers: list[Watcher]
    health: HealthState
    registry: CollectorRegistry
    binder: VfioBinder
    host_writes: HostWriteGuard
    plugins: plugin_manager.PluginManager | None = None
    dra: draplugin.DraPlugins | None = None
    dra_node: DraNode | None = None
    poller: allocations.AllocationPoller | None = None
    udev: UdevNudger | None = None
    server: HealthServer | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Agent:
        self._stop.clear()
        targets: list[tuple[str, Callable[[threading.Event], None]]] = [("reconcile", self.runner.run)]
        targets += [(f"watch {i}", w.run) for i, w in enumerate(self.watchers)]
        if self.poller is not None:
            targets.append(("allocations", self.poller.run))
        if self.plugins is not None:
            targets.append(("device plugins", self.plugins.run))
        if self.dra is not None:
            targets.append(("dra plugins", self.dra.run))
        for name, target in targets:
            t = threading.Thread(target=target, args=(self._stop,), name=name, daemon=True)
            t.start()
            self._threads.append(t)
        if self.udev is not None:
            self.udev.start()
        if self.server is not None:
            self.server.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self.runner.wake()
        if self.plugins is not None:
            self.plugins.wake()
        if self.dra is not None:
            self.dra.wake()
        if self.udev is not None:
            self.udev.stop()
        if self.server is not None:
            self.server.stop()
        for t in self._threads:
            t.join(timeout=timeout)
        self._threads.clear()

    def wait(self) -> None:
        self._stop.wait()


def build(
    settings: AgentSettings,
    api: apiclient.KubeApi,
    *,
    root: SysfsRoot | None = None,
    db: NamesDatabases | None = None,
    load_modules: Callable[[Sequence[str]], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    now: Callable[[], str] = utc_now,
    chown: Callable[[str, int, int], None] | None = None,
    serve_health: bool = True,
    pod_resources: allocations.Lister | None = None,
    binder_timeouts: tuple[float, float, float] = (5.0, 3.0, 1.0),
) -> Agent:
    root = root or SysfsRoot(settings.root, proc=settings.proc)
    db = db or NamesDatabases.load(settings.pci_ids, settings.usb_ids)
    counting = api if isinstance(api, apiclient.CountingKube) else apiclient.CountingKube(api)
    registry = CollectorRegistry()
    events = EventRecorder(counting, node=settings.node_name, now=now)

    lister = pod_resources
    socket_path: str | None = None
    if lister is None and settings.device_plugins:
        socket_path = settings.pod_resources_socket
        lister = allocations.socket_lister(socket_path)

    holder: dict[str, NodePass] = {}
    # Observe mode by setting, or by the node's label as the last pass read it; until the first pass has read it no
    # claim has been reconciled, so nothing asks to write.
    guard = HostWriteGuard(lambda: settings.observe_only or ("pass" in holder and holder["pass"].observe_only))

    dra_node, dra_plugins = _dra(settings, counting, root, clock) if settings.dra else (None, None)

    def pods(address: str) -> Sequence[str]:
        held = holder["pass"].allocations.pods_of(address) if "pass" in holder else ()
        if dra_node is not None:  # a DRA claim prepared on this node holds the device too
            held = (*held, *dra_node.pods_of(names.pcidevice_name(settings.node_name, address)))
        return held

    def host_critical(address: str) -> str | None:
        reasons = holder["pass"].host_critical.get(address) if "pass" in holder else None
        return "; ".join(reasons) if reasons else None

    write_t, verify_t, read_t = binder_timeouts
    binder = VfioBinder(
        root,
        guarded_modules(load_modules or Modprobe(), guard),
        pods=pods,
        host_critical=host_critical,
        write_timeout=write_t,
        verify_timeout=verify_t,
        read_timeout=read_t,
        write_guard=guard.check,
    )

    plugins: plugin_manager.PluginManager | None = None
    if settings.device_plugins:
        plugins = plugin_manager.PluginManager(
            plugin_dir=settings.plugin_dir,
            probe=plugin_health.SysfsProbe(root),
            counters=plugin_metrics.PluginMetrics(registry),
            clock=clock,
        )

    owner_change = guarded_chown(chown or os.chown, guard)

    def set_owner(device: model.UsbDevice) -> bool:
        return usbowner.apply_usb_owner(root, device, chown=owner_change)

    node_pass = NodePass(
        counting,
        root,
        db,
        events,
        PCIClaimReconciler(counting, binder, root, events, node=settings.node_name, now=now),
        USBClaimReconciler(counting, events, node=settings.node_name, now=now, set_owner=set_owner),
        node=settings.node_name,
        node_ip=settings.node_ip,
        resource_names=settings.resource_names,
        read_allocations=lambda: allocations.read_allocations(lister, socket_path),
        set_plugins=plugins.set_desired if plugins is not None else None,
        dra_node=dra_node,
        kubevirt_namespace=settings.kubevirt_namespace,
        now=now,
        observe_only=settings.observe_only,
    )
    holder["pass"] = node_pass

    def work() -> None:
        node_pass()
        if plugins is not None:
            plugins.refresh()  # binds may have changed health

    runner = Runner(work, clock=clock, resync_s=settings.resync_s)
    if dra_node is not None:  # a claim prepared or unprepared: allocatedTo to write, a release that may go on
        for dra_driver in dra_node.drivers.values():
            dra_driver.on_change = runner.nudge
    runner.sooner = lambda: HELD_RECHECK_S if node_pass.report.held else None
    poller = allocations.AllocationPoller(
        lambda: allocations.read_allocations(lister, socket_path), runner.nudge, interval_s=settings.allocations_poll_s
    )
    state = HealthState(clock, stale_after_s=max(3 * settings.resync_s, 60.0))
    runner.on_pass = lambda ok: state.passed(ok, root_traced=node_pass.report.root_traced if ok else None)

    passes = Counter("pcidevices_agent_reconcile_passes", "Reconcile passes, by result.", ["result"], registry=registry)
    runner_on_pass = runner.on_pass

    def on_pass(ok: bool) -> None:
        passes.labels(result="ok" if ok else "error").inc()
        runner_on_pass(ok)

    runner.on_pass = on_pass
    writes = Gauge("pcidevices_agent_api_writes", "API writes (create, patch, delete) since start.", registry=registry)
    writes.set_function(lambda: float(counting.writes))
    host_writes = Gauge(
        "pcidevices_agent_host_writes",
        "Host writes (sysfs attributes, device-node owners, module loads) since start, by kind and result "
        "(written, or refused in observe mode).",
        ["kind", "result"],
        registry=registry,
    )

    def host_count(key: tuple[str, str]) -> Callable[[], float]:
        return lambda: float(guard.counts[key])

    for kind in HOST_WRITE_KINDS:
        for result in ("written", "refused"):
            host_writes.labels(kind=kind, result=result).set_function(host_count((kind, result)))
    observing = Gauge("pcidevices_agent_observe_only", "1 while the agent runs in observe mode.", registry=registry)
    observing.set_function(lambda: float(settings.observe_only or node_pass.observe_only))
    registry.register(UnexpectedAllocations(node_pass))
    if dra_plugins is not None:
        _dra_metrics(registry, dra_plugins)

    selector = f"{names.LABEL_NODENAME}={settings.node_name}"
    watchers = [
        Watcher(
            counting, apiclient.PCIDEVICES, runner.nudge, label_selector=selector, timeout_s=settings.watch_timeout_s
        ),
        Watcher(
            counting, apiclient.USBDEVICES, runner.nudge, label_selector=selector, timeout_s=settings.watch_timeout_s
        ),
        Watcher(counting, apiclient.PCIDEVICECLAIMS, runner.nudge, timeout_s=settings.watch_timeout_s),
        Watcher(counting, apiclient.USBDEVICECLAIMS, runner.nudge, timeout_s=settings.watch_timeout_s),
        Watcher(counting, apiclient.KUBEVIRTS, runner.nudge, timeout_s=settings.watch_timeout_s),
    ]
    if dra_node is not None:  # the kubelet deletes a node's slices when a driver's plugin is gone: write them again
        watchers.append(
            Watcher(counting, kinds.RESOURCESLICES, runner.nudge, label_selector=selector,
                    timeout_s=settings.watch_timeout_s)  # fmt: skip
        )
    server = (
        HealthServer(state, registry, host=settings.health_host, port=settings.health_port) if serve_health else None
    )
    return Agent(
        settings=settings,
        api=counting,
        node_pass=node_pass,
        runner=runner,
        watchers=watchers,
        health=state,
        registry=registry,
        binder=binder,
        host_writes=guard,
        plugins=plugins,
        dra=dra_plugins,
        dra_node=dra_node,
        poller=poller if lister is not None else None,
        udev=UdevNudger(runner.nudge) if settings.udev else None,
        server=server,
    )


def _dra(
    settings: AgentSettings, api: apiclient.KubeApi, root: SysfsRoot, clock: Callable[[], float]
) -> tuple[DraNode, draplugin.DraPlugins]:
    """The DRA drivers of this node (docs/dra.md): their tables and CDI specs, slices, and kubelet-facing servers."""
    probe = plugin_health.SysfsProbe(root)
    store = dra_cdi.CdiStore(settings.cdi_dir)

    def unusable(device: PublishedDevice) -> str | None:
        if device.usb is not None:
            bus, devnum = device.usb
            return None if probe.usb_present(model.UsbDevice(bus, devnum)) else "its device node is gone"
        pci = model.PciDevice(device.address, device.iommu_group or 0)
        state = plugin_health.judge_pci(pci, probe.pci_facts(pci))
        return None if state.healthy else state.reason or "not usable for passthrough"

    def vfio_cdev(address: str, group: int) -> str | None:
        return probe.pci_facts(model.PciDevice(address, group)).vfio_cdev

    def pcie_root(address: str) -> str | None:
        try:
            return dra.pcie_root(root.resolve(root.sys("bus", "pci", "devices", address)))
        except SysfsError:
            return None

    drivers = [
        DraDriver(
            driver,
            settings.node_name,
            store,
            get_claim=dra_api.claim_reader(api),
            may_use=dra_api.use_checker(api),
            iommufd=probe.iommufd_present,
            unusable=unusable,
        )
        for driver in dra.DRIVERS
    ]
    node = DraNode(
        settings.node_name, drivers_of(*drivers), dra_api.ApiSlices(api), pcie_root=pcie_root, vfio_cdev=vfio_cdev
    )
    # the kubelet-facing servers only where there is a kubelet (device_plugins: false says there is none, as in the
    # local run); the slices are published either way
    servers = [
        draplugin.DraPluginServer(
            d, plugin_dir=settings.dra_plugin_dir(d.driver), registry_dir=settings.plugins_registry
        )
        for d in drivers
        if settings.device_plugins
    ]
    return node, draplugin.DraPlugins(servers, clock=clock)


def _dra_metrics(registry: CollectorRegistry, plugins: draplugin.DraPlugins) -> None:
    registered = Gauge(
        "pcidevices_agent_dra_registered",
        "1 while the kubelet has registered the DRA driver (its plugin watcher called NotifyRegistrationStatus).",
        ["driver"],
        registry=registry,
    )
    prepared = Gauge(
        "pcidevices_agent_dra_prepared_claims",
        "ResourceClaims this node's DRA drivers hold prepared (a CDI spec each), by driver.",
        ["driver"],
        registry=registry,
    )

    def is_registered(server: draplugin.DraPluginServer) -> Callable[[], float]:
        return lambda: float(server.registered)

    def count(driver: DraDriver) -> Callable[[], float]:
        return lambda: float(len(driver.prepared_claims()))

    for server in plugins.servers:
        registered.labels(driver=server.driver.driver).set_function(is_registered(server))
        prepared.labels(driver=server.driver.driver).set_function(count(server.driver))
