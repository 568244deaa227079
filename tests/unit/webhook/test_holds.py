"""Device holds (webhook/holds.py): the compare-and-swap that keeps exclusivity under parallel requests, over an
in-memory Lease store with resourceVersion semantics."""

from __future__ import annotations

from typing import Any

import apiclient
from policy.decision import Hold
from policy.snapshot import ClusterIndex
from tests.support.objects import Lab, pciclaim
from tests.support.ownership_model import Leases
from tests.support.vms import entry, recorded, vm
from webhook import holds

GPU = Lab.gpu["metadata"]["name"]


def _hold(requester: str, workload: str = "virtualmachine ns-a/v") -> Hold:
    return Hold("pcidevice", GPU, requester, workload)


class _Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _holds(leases: Leases, *objects: dict[str, Any], clock: _Clock | None = None) -> holds.Holds:
    view = ClusterIndex.from_objects(Lab.cluster(pciclaim(Lab.gpu), pciclaim(Lab.audio), *objects))
    return holds.Holds(lambda: leases, "harvester-system", view, grace_s=30.0, clock=clock or _Clock())


def test_the_first_requester_takes_the_hold_and_keeps_it() -> None:
    leases = Leases()
    h = _holds(leases)
    assert h.take([_hold("alice")], dry_run=False) is None
    assert [lease["spec"]["holderIdentity"] for lease in leases.items.values()] == ["alice"]
    assert h.take([_hold("alice", "virtualmachine ns-a/second")], dry_run=False) is None, "one requester's VMs share"


def test_another_requester_is_denied_while_the_hold_is_young_or_its_vms_still_name_the_device() -> None:
    leases, clock = Leases(), _Clock()
    alice_vm = recorded(vm("v", host=[entry(Lab.gpu), entry(Lab.audio)]), "alice")
    assert _holds(leases, alice_vm, clock=clock).take([_hold("alice")], dry_run=False) is None
    young = _holds(leases, clock=clock).take([_hold("bob", "virtualmachine ns-b/w")], dry_run=False)
    assert young is not None and 'is held for "alice" by virtualmachine ns-a/v' in young.message
    clock.now += 3600
    named = _holds(leases, alice_vm, clock=clock).take([_hold("bob", "virtualmachine ns-b/w")], dry_run=False)
    assert named is not None and not named.allowed


def test_a_stale_hold_is_taken_over_with_a_compare_and_swap() -> None:
    leases, clock = Leases(), _Clock()
    assert _holds(leases, clock=clock).take([_hold("alice")], dry_run=False) is None
    clock.now += 3600  # alice's VMs are gone and the hold is old
    assert _holds(leases, clock=clock).take([_hold("bob")], dry_run=False) is None
    assert [lease["spec"]["holderIdentity"] for lease in leases.items.values()] == ["bob"]


def test_of_two_requests_racing_for_a_free_device_exactly_one_wins() -> None:
    """Both read "no hold" before either writes: the API server's create-if-absent lets one through."""
    leases = Leases()
    original_get = leases.get
    seen: list[str] = []

    def get_then_let_the_other_in(
        res: apiclient.Resource, name: str, *, namespace: str | None = None
    ) -> dict[str, Any]:
        try:
            return original_get(res, name, namespace=namespace)
        except apiclient.NotFound:
            if not seen:
                seen.append(name)
                assert _holds(leases).take([_hold("bob")], dry_run=False) is None  # bob writes in between
            raise

    leases.get = get_then_let_the_other_in  # type: ignore[method-assign]
    denied = _holds(leases).take([_hold("alice")], dry_run=False)
    assert denied is not None and 'is held for "bob"' in denied.message


def test_a_dry_run_never_writes() -> None:
    leases = Leases()
    assert _holds(leases).take([_hold("alice")], dry_run=True) is None
    assert leases.items == {}


def test_lease_names_fit_an_object_name_for_any_device_name() -> None:
    assert holds.lease_name("pcidevice", "node1-00003b000") == "pcidevices-hold-pci-node1-00003b000"
    long = holds.lease_name("pcidevice", "n" * 300)
    assert len(long) <= 253 and long.startswith("pcidevices-hold-pci-")
