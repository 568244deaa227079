"""The node-side takeover against a real kernel: a NIC bound the upstream way (`new_id` + `bind`) stays bound and
`remove_id` takes effect (the second e1000e with the same ids is no longer taken by vfio-pci).

The guest script tests/kernel/guest/takeover.py acts and reports; these tests judge it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support import qemu

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def guest(guest_image: qemu.GuestImage) -> dict[str, Any]:
    run = qemu.run_guest(guest_image, REPO, "tests/kernel/guest/takeover.py", guest_timeout=180, boot_allowance=240)
    result = run.result()
    assert result, f"the guest reported nothing ({run.verdict}, {run.seconds:.0f}s):\n{qemu.tail(run.output)}"
    result["_verdict"] = run.verdict
    result["_output"] = run.output
    return result


def test_the_guest_run_passes_without_a_failed_step(guest: dict[str, Any]) -> None:
    assert guest["errors"] == {}, "\n".join(guest["errors"].values())
    assert guest["_verdict"] == "PASS", qemu.tail(guest["_output"])


def test_the_upstream_way_binds_by_id_and_makes_vfio_pci_take_the_other_nic(guest: dict[str, Any]) -> None:
    up = guest["upstream"]
    assert (up["new_id"], up["driver"], up["override"]) == ("ok", "vfio-pci", "(null)")
    assert guest["other_before"] == "e1000e"
    # the control: while the dynamic id is registered, vfio-pci accepts the other NIC without any override
    assert (guest["grab_before"]["vfio_bind"], guest["grab_before"]["driver"]) == ("ok", "vfio-pci")
    assert guest["grab_before"]["restored"] == "e1000e"


def test_dry_run_names_the_id_and_writes_nothing(guest: dict[str, Any]) -> None:
    dry = guest["dry_run"]
    assert dry["rc"] == 0, dry["err"]
    assert "would remove_id 8086 10d3" in dry["out"]


def test_after_the_takeover_the_nic_stays_bound_and_the_other_is_no_longer_taken(guest: dict[str, Any]) -> None:
    t = guest["takeover"]
    assert t["rc"] == 0, t["err"]
    assert "remove_id 8086 10d3: removed" in t["out"]
    assert (guest["nic_after"], guest["dev_vfio_after"]) == ("vfio-pci", True)
    after = guest["grab_after"]
    assert after["vfio_bind"] != "ok" and after["driver"] is None
    assert after["restored"] == "e1000e"


def test_a_second_run_finds_the_id_already_gone_and_leaves_the_nic_bound(guest: dict[str, Any]) -> None:
    second = guest["second_run"]
    assert second["rc"] == 0, second["err"]
    assert "remove_id 8086 10d3: not registered" in second["out"]
    assert guest["nic_after_second"] == "vfio-pci"
