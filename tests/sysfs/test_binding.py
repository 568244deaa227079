"""The vfio binder against the simulated kernel: bind, release, in-use, blocking unbind, crashes, foreign devices."""

from __future__ import annotations

import errno
import threading
from pathlib import Path

import pytest

from nodeagent.host.binding import BindingRecord, DeviceState, Outcome, VfioBinder, plan_bind, plan_release
from nodeagent.host.errors import BindError, NotOurs
from nodeagent.host.groups import group_status
from nodeagent.host.inuse import find_holders
from nodeagent.host.modules import Modprobe
from policy.names import InvalidName
from tests.support.simkernel import Crash, SimKernel

NIC1, NIC2 = "0000:01:00.0", "0000:02:00.0"
BRIDGE, LEG1, LEG2 = "0000:03:00.0", "0000:04:01.0", "0000:04:02.0"
FOREIGN, BARE = "0000:05:00.0", "0000:06:00.0"


@pytest.fixture
def sim(tmp_path: Path) -> SimKernel:
    s = SimKernel(tmp_path)
    s.add_device(NIC1, native="e1000e", group=1)
    s.add_device(NIC2, native="e1000e", group=2)
    s.add_device(BRIDGE, native=None, group=3, bridge=True)
    s.add_device(LEG1, native="e1000", group=3)
    s.add_device(LEG2, native="e1000", group=3)
    s.add_device(FOREIGN, native="nvme", group=5)
    s.add_device(BARE, native=None, group=6)
    return s


def binder(sim: SimKernel, **kw: object) -> VfioBinder:
    kw.setdefault("write_timeout", 0.3)
    kw.setdefault("verify_timeout", 0.2)
    kw.setdefault("read_timeout", 0.2)
    return VfioBinder(sim.root(), sim.load_modules, **kw)  # type: ignore[arg-type]


def device_writes(sim: SimKernel, address: str) -> list[tuple[str, str]]:
    return [(p, v) for p, v in sim.writes if address in p or v.strip() == address]


def test_bind_moves_the_device_to_vfio_pci_and_creates_its_group_node(sim: SimKernel) -> None:
    b = binder(sim)
    record = b.record_for(NIC1)
    assert record == BindingRecord(NIC1, "e1000e")
    result = b.bind(record)
    assert (result.outcome, result.driver, result.iommu_group) == (Outcome.BOUND, "vfio-pci", "1")
    assert sim.driver(NIC1) == "vfio-pci" and sim.vfio_node(1)
    assert sim.driver(NIC2) == "e1000e"


def test_bind_loads_the_vfio_modules_and_never_writes_new_id(sim: SimKernel) -> None:
    b = binder(sim)
    b.bind(b.record_for(NIC1))
    b.bind(b.record_for(NIC2))
    assert sim.modprobes == [("vfio-pci", "vfio_iommu_type1")]
    assert not [p for p, _ in sim.writes if p.endswith("/new_id")]
    assert sim.writes[:3] == [
        (f"/sys/bus/pci/devices/{NIC1}/driver_override", "vfio-pci"),
        ("/sys/bus/pci/drivers/e1000e/unbind", NIC1),
        ("/sys/bus/pci/drivers/vfio-pci/bind", NIC1),
    ]


def test_binding_a_bound_device_again_writes_nothing(sim: SimKernel) -> None:
    b = binder(sim)
    record = b.record_for(NIC1)
    b.bind(record)
    before = len(sim.writes)
    assert binder(sim).bind(record).outcome is Outcome.BOUND
    assert len(sim.writes) == before


def test_release_returns_the_original_driver_and_removes_the_group_node(sim: SimKernel) -> None:
    b = binder(sim)
    record = b.record_for(NIC1)
    b.bind(record)
    result = b.release(record)
    assert (result.outcome, result.driver) == (Outcome.RELEASED, "e1000e")
    assert sim.driver(NIC1) == "e1000e" and not sim.vfio_node(1)
    assert (sim.base / f"sys/bus/pci/devices/{NIC1}/driver_override").read_text() == "(null)\n"


def test_release_writes_nothing_while_a_process_holds_the_device(sim: SimKernel) -> None:
    b = binder(sim)
    record = b.record_for(NIC1)
    b.bind(record)
    sim.hold(NIC1, pid=777, comm="qemu-kvm")
    before = len(sim.writes)
    result = b.release(record)
    assert result.outcome is Outcome.IN_USE
    assert [(h.pid, h.comm, h.path) for h in result.holders] == [(777, "qemu-kvm", "/dev/vfio/1")]
    assert "qemu-kvm (pid 777)" in result.message
    assert len(sim.writes) == before and sim.driver(NIC1) == "vfio-pci"


def test_release_writes_nothing_while_the_kubelet_has_the_device_allocated(sim: SimKernel) -> None:
    b = binder(sim, pods=lambda a: ["default/virt-launcher-vm1-abcde"] if a == NIC1 else [])
    record = b.record_for(NIC1)
    b.bind(record)
    before = len(sim.writes)
    result = b.release(record)
    assert (result.outcome, result.pods) == (Outcome.IN_USE, ("default/virt-launcher-vm1-abcde",))
    assert "pod default/virt-launcher-vm1-abcde" in result.message
    assert len(sim.writes) == before


def test_forced_release_under_a_holder_is_pending_until_the_holder_exits(sim: SimKernel) -> None:
    b = binder(sim)
    record = b.record_for(NIC1)
    b.bind(record)
    sim.hold(NIC1, pid=778)
    first = b.release(record, force=True)
    assert first.outcome is Outcome.UNBIND_PENDING and b.pending(NIC1)
    assert [h.pid for h in first.holders] == [778]
    # the binder keeps serving other devices while the unbind is stuck in the kernel
    assert b.bind(b.record_for(NIC2)).outcome is Outcome.BOUND
    assert b.release(record).outcome is Outcome.UNBIND_PENDING
    sim.exit_process(778)
    for _ in range(100):
        if not b.pending(NIC1):
            break
        threading.Event().wait(0.02)
    result = b.release(record)
    assert (result.outcome, result.driver) == (Outcome.RELEASED, "e1000e")
    assert not sim.vfio_node(1)


def test_a_restarted_agent_sees_a_still_blocked_unbind_as_pending_and_writes_nothing(sim: SimKernel) -> None:
    b = binder(sim)
    record = b.record_for(NIC1)
    b.bind(record)
    sim.hold(NIC1, pid=779)
    assert b.release(record, force=True).outcome is Outcome.UNBIND_PENDING
    before = len(sim.writes)
    restarted = binder(sim)
    result = restarted.release(record)
    assert result.outcome is Outcome.UNBIND_PENDING
    assert [h.pid for h in result.holders] == [779]
    assert len(sim.writes) == before
    sim.exit_process(779)


def test_a_vfio_device_bound_by_someone_else_is_never_touched(sim: SimKernel) -> None:
    sim.bind_foreign(FOREIGN)
    b = binder(sim)
    with pytest.raises(NotOurs):
        b.record_for(FOREIGN)
    assert b.bind(BindingRecord(FOREIGN, "vfio-pci")).outcome is Outcome.NOT_OURS
    assert device_writes(sim, FOREIGN) == []
    assert sim.driver(FOREIGN) == "vfio-pci"


def test_a_failed_vfio_bind_gives_the_device_back_to_its_driver(sim: SimKernel) -> None:
    b = binder(sim)
    record = b.record_for(NIC1)
    sim.load_modules(["vfio-pci", "vfio_iommu_type1"])
    sim.fail["/sys/bus/pci/drivers/vfio-pci/bind"] = errno.EBUSY
    result = b.bind(record)
    assert result.outcome is Outcome.FAILED and "vfio-pci/bind" in result.message
    assert sim.driver(NIC1) == "e1000e"


def test_release_reports_when_the_original_driver_does_not_come_back(sim: SimKernel) -> None:
    b = binder(sim)
    b.bind(b.record_for(NIC1))
    result = b.release(BindingRecord(NIC1, "igb"))  # the kernel's own choice is e1000e
    assert (result.outcome, result.driver) == (Outcome.NOT_RESTORED, "e1000e")
    assert "igb" in result.message
    assert sim.driver(NIC1) == "e1000e"


def test_a_device_without_a_driver_goes_back_to_having_none(sim: SimKernel) -> None:
    b = binder(sim)
    record = b.record_for(BARE)
    assert record.original_driver is None
    assert b.bind(record).outcome is Outcome.BOUND
    result = b.release(record)
    assert (result.outcome, result.driver, sim.driver(BARE)) == (Outcome.RELEASED, None, None)


def test_a_host_critical_device_is_refused_before_any_write(sim: SimKernel) -> None:
    b = binder(sim, host_critical=lambda a: "mounted /" if a == NIC2 else None)
    result = b.bind(b.record_for(NIC2))
    assert result.outcome is Outcome.REFUSED and "mounted /" in result.message
    assert sim.writes == [] and sim.modprobes == []


def test_an_invalid_address_is_rejected_before_a_path_is_built(sim: SimKernel) -> None:
    b = binder(sim)
    with pytest.raises(InvalidName):
        b.bind(BindingRecord("0000:01:00.0/../../x", "e1000e"))
    assert sim.writes == []


def test_group_is_complete_only_when_every_endpoint_is_on_vfio_and_bridges_are_exempt(sim: SimKernel) -> None:
    b = binder(sim)
    b.bind(b.record_for(LEG1))
    half = group_status(sim.root(), "3")
    assert (half.complete, half.missing) == (False, (LEG2,))
    b.bind(b.record_for(LEG2))
    full = group_status(sim.root(), "3")
    assert (full.complete, full.missing) == (True, ())
    assert [m.address for m in full.members if m.bridge] == [BRIDGE]
    assert sim.driver(BRIDGE) is None


def test_plans_depend_only_on_the_observed_state() -> None:
    a = NIC1
    fresh = DeviceState(a, True, driver="e1000e", iommu_group="1")
    assert [w.path.rsplit("/", 2)[-2:] for w in plan_bind(fresh)] == [
        [a, "driver_override"],
        ["e1000e", "unbind"],
        ["vfio-pci", "bind"],
    ]
    driverless = DeviceState(a, True, driver=None, driver_override="vfio-pci", iommu_group="1")
    assert [w.value for w in plan_bind(driverless)] == [a]
    bound = DeviceState(a, True, driver="vfio-pci", driver_override="vfio-pci", iommu_group="1")
    assert plan_bind(bound) == []
    assert [(w.path, w.value) for w in plan_release(bound)] == [
        ("/sys/bus/pci/drivers/vfio-pci/unbind", a),
        (f"/sys/bus/pci/devices/{a}/driver_override", "\n"),
        ("/sys/bus/pci/drivers_probe", a),
    ]
    assert plan_release(DeviceState(a, True, driver="e1000e", iommu_group="1")) == []


def test_the_in_use_scan_recognises_a_vfio_device_fd_by_its_fdinfo(sim: SimKernel) -> None:
    pdir = sim.base / "proc/900"
    (pdir / "fd").mkdir(parents=True)
    (pdir / "fdinfo").mkdir()
    (pdir / "comm").write_text("dpdk-testpmd\n")
    (pdir / "fd/5").symlink_to("anon_inode:[vfio-device]")
    syspath = f"/sys/devices/pci0000:00/{NIC1}"
    (pdir / "fdinfo/5").write_text(f"pos:\t0\nflags:\t02\nvfio-device-syspath: {syspath}\n")
    holders = find_holders(sim.root(), ["/dev/vfio/1"], syspath)
    assert [(h.pid, h.comm) for h in holders] == [(900, "dpdk-testpmd")]
    assert find_holders(sim.root(), ["/dev/vfio/2"], f"/sys/devices/pci0000:00/{NIC2}") == ()


def _steps(sim: SimKernel, action: str) -> int:
    """Writes a clean run of `action` makes on NIC1 (bind from e1000e, or release from vfio-pci)."""
    b = binder(sim)
    record = b.record_for(NIC1)
    if action == "release":
        b.bind(record)
    start = len(sim.writes)
    getattr(b, action)(record)
    return len(sim.writes) - start


@pytest.mark.parametrize("then", ["bind", "release"])
@pytest.mark.parametrize("action", ["bind", "release"])
def test_a_crash_after_any_step_converges_after_a_restart(tmp_path: Path, action: str, then: str) -> None:
    probe = SimKernel(tmp_path / "probe")
    probe.add_device(NIC1, native="e1000e", group=1)
    steps = _steps(probe, action)
    assert steps == 3
    for k in range(1, steps + 1):
        sim = SimKernel(tmp_path / f"{action}-{then}-{k}")
        sim.add_device(NIC1, native="e1000e", group=1)
        sim.add_device(NIC2, native="e1000e", group=2)
        record = binder(sim).record_for(NIC1)
        if action == "release":
            binder(sim).bind(record)
        sim.crash_at = len(sim.writes) + k
        with pytest.raises(Crash):
            getattr(binder(sim), action)(record)
        sim.crash_at = None
        result = getattr(binder(sim), then)(record)  # a fresh binder is a restarted agent
        want = ("vfio-pci", Outcome.BOUND) if then == "bind" else ("e1000e", Outcome.RELEASED)
        assert (sim.driver(NIC1), result.outcome) == want, f"crash after step {k} of {action}"
        assert sim.vfio_node(1) == (then == "bind")
        assert all(sim.driver(a) is not None for a in sim.devices), "a device was left driverless"


def test_a_module_that_cannot_be_loaded_fails_the_bind_before_any_write(sim: SimKernel) -> None:
    def broken(names: object) -> None:
        raise OSError("modprobe: FATAL: Module vfio-pci not found")

    b = VfioBinder(sim.root(), broken, write_timeout=0.3, verify_timeout=0.2, read_timeout=0.2)
    result = b.bind(b.record_for(NIC1))
    assert result.outcome is Outcome.FAILED and "not found" in result.message
    assert sim.writes == [] and sim.driver(NIC1) == "e1000e"


def test_modprobe_reports_the_commands_failure() -> None:
    Modprobe(("true",))(["vfio-pci"])
    with pytest.raises(OSError, match="exit 1"):
        Modprobe(("false",))(["vfio-pci"])


def test_polling_a_device_whose_lock_the_kernel_holds_costs_one_thread(sim: SimKernel) -> None:
    b = binder(sim)
    record = b.record_for(NIC1)
    b.bind(record)
    sim.hold(NIC1, pid=780)
    b.release(record, force=True)
    restarted = binder(sim, read_timeout=0.05)
    threads = threading.active_count()
    outcomes = {restarted.release(record).outcome for _ in range(5)}
    assert outcomes == {Outcome.UNBIND_PENDING}
    assert threading.active_count() <= threads + 1
    with pytest.raises(BindError, match="busy in the kernel"):
        restarted.record_for(NIC1)  # the driver link is gone, but e1000e is not the "original driver: none"
    sim.exit_process(780)


def test_concurrent_binds_of_one_device_write_each_step_once(sim: SimKernel) -> None:
    b = binder(sim)
    record = b.record_for(NIC1)
    results = []
    workers = [threading.Thread(target=lambda: results.append(b.bind(record).outcome)) for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert results == [Outcome.BOUND] * 4
    assert len(device_writes(sim, NIC1)) == 3


def test_a_claim_whose_device_vanished_can_still_be_released(sim: SimKernel) -> None:
    b = binder(sim)
    record = b.record_for(NIC1)
    b.bind(record)
    sim.remove_device(NIC1)
    before = len(sim.writes)
    result = b.release(record)
    assert result.outcome is Outcome.VANISHED and NIC1 in result.message
    assert len(sim.writes) == before and not sim.vfio_node(1)
    assert b.bind(record).outcome is Outcome.VANISHED
