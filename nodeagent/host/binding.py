"""Crash-safe vfio-pci binding and release of single PCI functions.

The design is "observe, plan, apply, verify": `observe` reads the device's state through the root, the pure
`plan_bind`/`plan_release` turn that state into the writes still missing, `VfioBinder.apply` performs them and the
binder verifies the result. Because every call re-plans from what the kernel shows now, a restart after a crash at
any step converges; no step is remembered anywhere except the caller's `BindingRecord`.

The caller persists a `BindingRecord` (in the claim status: `kernelDriverToUnbind` is its `original_driver`) before
the first write. It is the proof that this agent bound the device: a device already on vfio-pci without a record is
never touched (`NotOurs`). Never `new_id`: vfio-pci is chosen per device with `driver_override`.

Writes run in a worker thread bounded by a timeout: unbinding vfio-pci while something holds the device blocks in
the kernel until the holder lets go, and cannot be interrupted. Such a device reports `UnbindPending` until the write
completes; the binder (and the agent around it) keeps serving meanwhile.
"""

from __future__ import annotations

import enum
import functools
import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from nodeagent.errors import SysfsError
from nodeagent.host.errors import BindError, ModuleLoadError, NotOurs
from nodeagent.host.inuse import Holder, find_holders, vfio_nodes
from nodeagent.sysfs.root import SysfsRoot
from policy.names import is_pci_address, pci_address

log = logging.getLogger(__name__)

VFIO_DRIVER = "vfio-pci"
VFIO_MODULES = ("vfio-pci", "vfio_iommu_type1")
_DRIVER_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:+-]*$")

ModuleLoader = Callable[[Sequence[str]], None]
"""Loads kernel modules by name (e.g. `nodeagent.host.modules.Modprobe()`); raises OSError on failure."""

PodAllocations = Callable[[str], Sequence[str]]
"""The kubelet's view: pods ("namespace/name") that hold the device with this PCI address."""

HostCriticalGuard = Callable[[str], str | None]
"""Returns why the device must not be taken from the host (e.g. "mounted /var"), or None."""


class Outcome(enum.StrEnum):
    BOUND = "Bound"
    RELEASED = "Released"
    IN_USE = "InUse"
    UNBIND_PENDING = "UnbindPending"
    NOT_RESTORED = "NotRestored"
    NOT_OURS = "NotOurs"
    REFUSED = "Refused"
    VANISHED = "Vanished"
    FAILED = "Failed"


@dataclass(frozen=True)
class SysfsWrite:
    """One write of the plan: `value` to the attribute at host path `path` (under the root)."""

    path: str
    value: str


@dataclass(frozen=True)
class BindingRecord:
    """What the caller persists before the first write; `original_driver` is None for a device without a driver."""

    address: str
    original_driver: str | None


@dataclass(frozen=True)
class DeviceState:
    """What the kernel shows about one PCI function right now."""

    address: str
    present: bool
    driver: str | None = None
    driver_override: str | None = None
    iommu_group: str | None = None
    vfio_node: bool = False
    group_on_vfio: bool = False
    locked: bool = False
    """The kernel holds the device lock (reading driver_override blocked): a driver change is still running."""


@dataclass(frozen=True)
class Result:
    """The outcome of one bind or release call, with what a person needs to act on it."""

    outcome: Outcome
    address: str
    driver: str | None = None
    iommu_group: str | None = None
    holders: tuple[Holder, ...] = ()
    pods: tuple[str, ...] = ()
    message: str = ""


def _devdir(address: str) -> str:
    return SysfsRoot.sys("bus", "pci", "devices", address)


def _drvdir(driver: str, attr: str) -> str:
    if not _DRIVER_NAME.match(driver):
        raise ValueError(f"invalid driver name {driver!r}")
    return SysfsRoot.sys("bus", "pci", "drivers", driver, attr)


def _probe() -> str:
    return SysfsRoot.sys("bus", "pci", "drivers_probe")


def plan_bind(state: DeviceState) -> list[SysfsWrite]:
    """Writes that move the device from its current state to vfio-pci (empty when it is there already)."""
    a = pci_address(state.address)
    writes = []
    if state.driver_override != VFIO_DRIVER:
        writes.append(SysfsWrite(_devdir(a) + "/driver_override", VFIO_DRIVER))
    if state.driver == VFIO_DRIVER:
        return writes
    if state.driver is not None:
        writes.append(SysfsWrite(_drvdir(state.driver, "unbind"), a))
    writes.append(SysfsWrite(_drvdir(VFIO_DRIVER, "bind"), a))
    return writes


def plan_release(state: DeviceState) -> list[SysfsWrite]:
    """Writes that take the device off vfio-pci and let the kernel probe its native driver again."""
    a = pci_address(state.address)
    writes = []
    if state.driver == VFIO_DRIVER:
        writes.append(SysfsWrite(_drvdir(VFIO_DRIVER, "unbind"), a))
    if state.driver_override == VFIO_DRIVER:
        writes.append(SysfsWrite(_devdir(a) + "/driver_override", "\n"))
    if state.driver in (None, VFIO_DRIVER):
        writes.append(SysfsWrite(_probe(), a))
    return writes


class _Job:
    """A sysfs access running in its own thread, so a caller can stop waiting for a kernel that blocks."""

    def __init__(self, what: str, fn: Callable[[], object]) -> None:
        self.what = what
        self.fn = fn
        self.done = threading.Event()
        self.value: object = None
        self.error: BaseException | None = None
        self.started = time.monotonic()
        threading.Thread(target=self._run, name=f"sysfs {what}", daemon=True).start()

    def _run(self) -> None:
        try:
            self.value = self.fn()
        except BaseException as e:  # handed to the waiting caller, or kept for the next call if it gave up
            self.error = e
        finally:
            self.done.set()


class VfioBinder:
    """Binds devices to vfio-pci and releases them, through one root; safe to call again after any failure."""

    def __init__(
        self,
        root: SysfsRoot,
        load_modules: ModuleLoader,
        *,
        pods: PodAllocations | None = None,
        host_critical: HostCriticalGuard | None = None,
        write_timeout: float = 5.0,
        verify_timeout: float = 3.0,
        read_timeout: float = 1.0,
        write_guard: Callable[[str, str], None] | None = None,
    ) -> None:
        self._root = root
        self._write_guard = write_guard  # HostWriteGuard.check: counts writes, refuses them in observe mode
        self._load_modules = load_modules
        self._pods = pods
        self._host_critical = host_critical
        self._write_timeout = write_timeout
        self._verify_timeout = verify_timeout
        self._read_timeout = read_timeout
        self._lock = threading.Lock()
        self._pending: dict[str, _Job] = {}
        self._reads: dict[str, _Job] = {}
        self._devices: dict[str, threading.Lock] = {}

    def _serial(self, address: str) -> threading.Lock:
        """One bind or release at a time per device (calls for different devices run side by side)."""
        with self._lock:
            return self._devices.setdefault(address, threading.Lock())

    # -- reading -------------------------------------------------------------------------------------------------

    def observe(self, address: str, *, override: bool = True) -> DeviceState:
        """Read the device's state. Links never block; `driver_override` takes the device lock in the kernel, so it
        is read with a timeout and a device whose lock is held reports `locked`."""
        a = pci_address(address)
        root, dev = self._root, _devdir(a)
        if not root.exists(dev):
            return DeviceState(address=a, present=False)
        driver = root.try_link_name(dev + "/driver")
        group = root.try_link_name(dev + "/iommu_group")
        if group is not None and not group.isdigit():
            group = None
        group_on_vfio = False
        if group is not None:
            for member in root.children(root.sys("kernel", "iommu_groups", group, "devices")):
                if is_pci_address(member) and root.try_link_name(_devdir(member) + "/driver") == VFIO_DRIVER:
                    group_on_vfio = True
        value, locked = None, False
        if override:
            with self._lock:
                job = self._reads.get(a)
                if job is None or job.done.is_set():
                    job = _Job(f"read {a} driver_override", lambda: root.try_read_attr(dev + "/driver_override"))
                    self._reads[a] = job
            # A read still stuck from an earlier call is reused, so a locked device costs one thread, not one per call.
            if not job.done.wait(self._read_timeout):
                locked = True
                log.warning("device lock held by the kernel", extra={"pci_address": a})
            elif job.error is not None:
                raise job.error
            else:
                value = job.value if isinstance(job.value, str) else None
        return DeviceState(
            address=a,
            present=True,
            driver=driver,
            driver_override=None if value in (None, "", "(null)") else value,
            iommu_group=group,
            vfio_node=group is not None and root.exists(root.dev("vfio", group)),
            group_on_vfio=group_on_vfio,
            locked=locked,
        )

    def record_for(self, address: str) -> BindingRecord:
        """The record to persist before binding; raise NotOurs for a device someone else put on vfio-pci."""
        state = self.observe(address)
        if not state.present:
            raise BindError(f"PCI device {state.address} does not exist", address=state.address)
        if state.driver == VFIO_DRIVER:
            raise NotOurs(f"PCI device {state.address} is bound to vfio-pci by someone else", address=state.address)
        if state.locked:
            # a driver change is still running in the kernel: the driver link does not tell the original driver yet
            raise BindError(f"PCI device {state.address} is busy in the kernel; try again", address=state.address)
        return BindingRecord(address=state.address, original_driver=state.driver)

    def holders(self, state: DeviceState) -> tuple[Holder, ...]:
        nodes = vfio_nodes(self._root, state.address, state.iommu_group)
        syspath = self._root.resolve(_devdir(state.address)) if state.present else None
        return find_holders(self._root, nodes, syspath)

    # -- bind ----------------------------------------------------------------------------------------------------

    def bind(self, record: BindingRecord) -> Result:
        """Converge the device onto vfio-pci; verify the driver link and /dev/vfio/<group>."""
        a = pci_address(record.address)
        with self._serial(a):
            return self._bind(a, record)

    def _bind(self, a: str, record: BindingRecord) -> Result:
        pending = self._check_pending(a)
        if pending is not None:
            return pending
        if record.original_driver == VFIO_DRIVER:
            return Result(Outcome.NOT_OURS, a, VFIO_DRIVER, message="record names vfio-pci as the original driver")
        state = self.observe(a)
        if not state.present:
            return Result(Outcome.VANISHED, a, message=f"PCI device {a} is gone")
        if state.locked:
            return self._pending_result(a)
        if self._host_critical is not None and state.driver != VFIO_DRIVER:
            reason = self._host_critical(a)
            if reason:
                return Result(Outcome.REFUSED, a, state.driver, state.iommu_group, message=f"host-critical: {reason}")
        if state.iommu_group is None:
            return Result(Outcome.FAILED, a, state.driver, message=f"PCI device {a} has no IOMMU group")
        try:
            self._ensure_modules(a)
            if not self._apply(a, plan_bind(state)):
                return self._pending_result(a)
        except (SysfsError, BindError) as e:
            log.error("binding to vfio-pci failed", extra={"pci_address": a}, exc_info=True)
            self._rescue(a)
            after = self.observe(a)
            return Result(Outcome.FAILED, a, after.driver, after.iommu_group, message=str(e))
        return self._verify_bound(a)

    def _ensure_modules(self, address: str) -> None:
        root = self._root
        if root.exists(root.sys("bus", "pci", "drivers", VFIO_DRIVER)) and root.exists(
            root.sys("module", "vfio_iommu_type1")
        ):
            return
        try:
            self._load_modules(VFIO_MODULES)
        except OSError as e:
            raise ModuleLoadError(str(e), address=address) from e
        if not root.exists(root.sys("bus", "pci", "drivers", VFIO_DRIVER)):
            raise ModuleLoadError("vfio-pci driver missing after loading it", address=address)

    def _verify_bound(self, a: str) -> Result:
        state = self._wait(a, lambda s: s.driver == VFIO_DRIVER and s.vfio_node)
        if state.driver == VFIO_DRIVER and state.vfio_node:
            log.info("bound device to vfio-pci", extra={"pci_address": a, "iommu_group": state.iommu_group})
            return Result(Outcome.BOUND, a, VFIO_DRIVER, state.iommu_group)
        what = f"driver is {state.driver or 'none'}" if state.driver != VFIO_DRIVER else "no /dev/vfio node"
        return Result(Outcome.FAILED, a, state.driver, state.iommu_group, message=f"bind not verified: {what}")

    def _rescue(self, a: str) -> None:
        """After a failed bind: never leave the device driverless; hand it back to the kernel's choice."""
        try:
            state = self.observe(a)
            if state.present and state.driver is None:
                self._apply(a, plan_release(state))
        except (SysfsError, BindError):
            log.error("could not give a device back to a driver", extra={"pci_address": a}, exc_info=True)

    # -- release -------------------------------------------------------------------------------------------------

    def release(self, record: BindingRecord, *, force: bool = False) -> Result:
        """Converge the device back to its original driver; write nothing while it is in use (unless `force`)."""
        a = pci_address(record.address)
        with self._serial(a):
            return self._release(a, record, force)

    def _release(self, a: str, record: BindingRecord, force: bool) -> Result:
        pending = self._check_pending(a)
        if pending is not None:
            return pending
        state = self.observe(a)
        if not state.present:
            return Result(Outcome.VANISHED, a, message=f"PCI device {a} is gone")
        if state.driver == VFIO_DRIVER and not force:
            holders = self.holders(state)
            pods = tuple(self._pods(a)) if self._pods is not None else ()
            if holders or pods:
                who = "; ".join([f"pod {p}" for p in pods] + [str(h) for h in holders])
                log.info("device in use; release postponed", extra={"pci_address": a, "holders": who})
                return Result(Outcome.IN_USE, a, VFIO_DRIVER, state.iommu_group, holders, pods, f"in use by {who}")
        elif state.locked or (state.driver is None and state.vfio_node and not state.group_on_vfio):
            # An unbind from an earlier run is still blocked in the kernel (it holds the device lock, the group node
            # outlives the driver link); any write to the device would block too.
            return Result(
                Outcome.UNBIND_PENDING,
                a,
                None,
                state.iommu_group,
                self.holders(state),
                message="vfio-pci unbind still waiting for the device's holder",
            )
        try:
            if not self._apply(a, plan_release(state)):
                return self._pending_result(a)
        except (SysfsError, BindError) as e:
            log.error("release from vfio-pci failed", extra={"pci_address": a}, exc_info=True)
            after = self.observe(a)
            return Result(Outcome.FAILED, a, after.driver, after.iommu_group, message=str(e))
        return self._verify_released(record)

    def _verify_released(self, record: BindingRecord) -> Result:
        a = record.address
        want = record.original_driver
        state = self._wait(a, lambda s: s.driver == want or (want is None and s.driver != VFIO_DRIVER))
        if state.driver != want and state.driver is None and want is not None:
            # drivers_probe found nothing: ask the original driver directly.
            try:
                if self._root.exists(self._root.sys("bus", "pci", "drivers", want)):
                    self._apply(a, [SysfsWrite(_drvdir(want, "bind"), a)])
            except (SysfsError, BindError, ValueError):
                log.warning("original driver refused the device", extra={"pci_address": a, "driver": want})
            state = self._wait(a, lambda s: s.driver == want)
        if state.driver == want or (want is None and state.driver != VFIO_DRIVER):
            log.info("released device from vfio-pci", extra={"pci_address": a, "driver": state.driver})
            return Result(Outcome.RELEASED, a, state.driver, state.iommu_group)
        msg = f"original driver {want or 'none'} not restored; device now uses {state.driver or 'no driver'}"
        log.warning("original driver not restored", extra={"pci_address": a, "driver": state.driver})
        return Result(Outcome.NOT_RESTORED, a, state.driver, state.iommu_group, message=msg)

    # -- applying writes -----------------------------------------------------------------------------------------

    def apply(self, address: str, writes: Sequence[SysfsWrite]) -> bool:
        """Perform the writes in order; False when one is still blocked in the kernel after the timeout."""
        return self._apply(pci_address(address), writes)

    def _apply(self, a: str, writes: Sequence[SysfsWrite]) -> bool:
        root = self._root
        for w in writes:
            if self._write_guard is not None:
                self._write_guard("sysfs", w.path)
            job = _Job(f"write {w.path}", functools.partial(root.write_attr, w.path, w.value))
            if not job.done.wait(self._write_timeout):
                with self._lock:
                    self._pending[a] = job
                log.warning("sysfs write blocked; reporting it pending", extra={"pci_address": a, "path": w.path})
                return False
            if job.error is not None:
                raise job.error
        return True

    def pending(self, address: str) -> bool:
        """Whether a write to this device is still blocked in the kernel."""
        with self._lock:
            job = self._pending.get(pci_address(address))
        return job is not None and not job.done.is_set()

    def _check_pending(self, a: str) -> Result | None:
        with self._lock:
            job = self._pending.get(a)
            if job is None:
                return None
            if job.done.is_set():
                del self._pending[a]
        if not job.done.is_set():
            return self._pending_result(a)
        if job.error is not None:
            log.warning("blocked write finished with an error", extra={"pci_address": a, "job": job.what})
        return None

    def _pending_result(self, a: str) -> Result:
        state = self.observe(a, override=False)
        with self._lock:
            job = self._pending.get(a)
        waited = f" for {time.monotonic() - job.started:.0f}s" if job is not None else ""
        holders = self.holders(state) if state.present else ()
        who = "; ".join(str(h) for h in holders) or "unknown holder"
        return Result(
            Outcome.UNBIND_PENDING,
            a,
            state.driver,
            state.iommu_group,
            holders,
            message=f"write blocked in the kernel{waited}; waiting for {who}",
        )

    def _wait(self, a: str, ok: Callable[[DeviceState], bool]) -> DeviceState:
        deadline = time.monotonic() + self._verify_timeout
        state = self.observe(a)
        while not ok(state) and time.monotonic() < deadline:
            time.sleep(0.02)
            state = self.observe(a)
        return state
