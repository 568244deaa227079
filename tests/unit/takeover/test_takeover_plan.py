"""The takeover plan: tables over upstream-shaped objects; each plan is applied with jsonpatch and re-planned."""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch  # type: ignore[import-untyped]
import pytest

from policy import names, records
from policy.names import ADOPTED_FROM, ADOPTED_REQUESTER, ANNOTATION_ADOPTED
from policy.objects import FINALIZER_AGENT
from takeover.plan import (
    UPSTREAM_NODE_FINALIZER,
    UPSTREAM_PCI_FINALIZER,
    UPSTREAM_USB_FINALIZER,
    UPSTREAM_VMI_FINALIZER,
    AddonTarget,
    Observed,
    Plan,
    TakeoverSettings,
    map_owner,
    plan,
    repair_permits,
)

OWNER = names.ANNOTATION_REQUESTED_BY
USERS = (
    {"metadata": {"name": "user-7xk2p"}, "username": "admin", "displayName": "Default Admin"},
    {"metadata": {"name": "u-abc12"}, "username": "", "displayName": "Jane Doe", "principalIds": ["github_user://1"]},
    {"metadata": {"name": "u-dup1"}, "username": "", "displayName": "Twin"},
    {"metadata": {"name": "u-dup2"}, "username": "", "displayName": "Twin"},
)


def pci_claim(name: str, user: str, *, finalizers: tuple[str, ...] = (UPSTREAM_PCI_FINALIZER,), **meta: Any) -> dict:
    return {
        "apiVersion": names.API_VERSION,
        "kind": "PCIDeviceClaim",
        "metadata": {"name": name, "resourceVersion": "7", "finalizers": list(finalizers), **meta},
        "spec": {"address": "0000:01:00.0", "nodeName": "node1", "userName": user},
        "status": {"passthroughEnabled": True, "kernelDriverToUnbind": "e1000e"},
    }


def usb_claim(name: str, user: str) -> dict:
    return {
        "metadata": {"name": name, "resourceVersion": "8", "finalizers": [UPSTREAM_USB_FINALIZER]},
        "spec": {"userName": user},
    }


def pci_device(name: str, resource: str, vendor: str = "8086", device: str = "10d3") -> dict:
    return {"metadata": {"name": name}, "status": {"resourceName": resource, "vendorId": vendor, "deviceId": device}}


def kubevirt(pci: list[dict], usb: list[dict] | None = None) -> dict:
    permitted: dict[str, Any] = {"pciHostDevices": pci}
    if usb is not None:
        permitted["usb"] = usb
    return {
        "metadata": {"name": "kubevirt", "namespace": "harvester-system", "resourceVersion": "3"},
        "spec": {"configuration": {"permittedHostDevices": permitted}},
    }


POOLED = "intel.com/82574L_GIGABIT_NETWORK_CONNECTION"
SETTINGS = TakeoverSettings()


def apply(observed: Observed, p: Plan) -> Observed:
    """The cluster after the plan: patches applied to copies, deletes removed (what the I/O edge does)."""
    objs: dict[str, list[dict]] = {
        "pcideviceclaims": copy.deepcopy(list(observed.pci_claims)),
        "usbdeviceclaims": copy.deepcopy(list(observed.usb_claims)),
        "nodes": copy.deepcopy(list(observed.nodes)),
        "virtualmachineinstances": copy.deepcopy(list(observed.vmis)),
        "virtualmachines": copy.deepcopy(list(observed.vms)),
        "customresourcedefinitions": copy.deepcopy(list(observed.crds)),
    }
    kvs = copy.deepcopy(list(observed.kubevirts))
    node_devices = list(observed.node_devices)
    webhooks = list(observed.webhook_configurations)
    secrets = list(observed.secrets)
    addon = copy.deepcopy(observed.addon)
    for c in p.changes:
        t = c.target
        if c.op == "delete":
            node_devices = [o for o in node_devices if not (t.plural == "nodes" and o["metadata"]["name"] == t.name)]
            webhooks = [w for w in webhooks if w != (t.plural, t.name)]
            secrets = [s for s in secrets if not (t.plural == "secrets" and s == t.name)]
            continue
        if t.plural == "kubevirts":
            kvs = [jsonpatch.apply_patch(k, list(c.patch)) if k["metadata"]["name"] == t.name else k for k in kvs]
        elif t.plural == "addons":
            addon = jsonpatch.apply_patch(addon, list(c.patch))
        else:
            objs[t.plural] = [
                jsonpatch.apply_patch(o, list(c.patch)) if o["metadata"]["name"] == t.name else o
                for o in objs[t.plural]
            ]
    return Observed(
        pci_claims=objs["pcideviceclaims"],
        usb_claims=objs["usbdeviceclaims"],
        pci_devices=observed.pci_devices,
        users=observed.users,
        nodes=objs["nodes"],
        vmis=objs["virtualmachineinstances"],
        vms=objs["virtualmachines"],
        node_devices=node_devices,
        webhook_configurations=webhooks,
        secrets=secrets,
        crds=objs["customresourcedefinitions"],
        kubevirts=kvs,
        addon=addon,
        upstream_only=observed.upstream_only,
    )


def upstream_cluster(**over: Any) -> Observed:
    base: dict[str, Any] = dict(
        pci_claims=[pci_claim("node1-000001000", "admin"), pci_claim("node1-000002000", "Jane Doe")],
        usb_claims=[usb_claim("node1-0951-1666-002004", "bob")],
        pci_devices=[pci_device("node1-000001000", POOLED), pci_device("node1-000002000", POOLED)],
        users=USERS,
        nodes=[{"metadata": {"name": "node1", "resourceVersion": "1", "finalizers": [UPSTREAM_NODE_FINALIZER]}}],
        vmis=[
            {
                "metadata": {
                    "name": "vm1",
                    "namespace": "default",
                    "resourceVersion": "2",
                    "finalizers": ["foregroundDeleteVirtualMachine", UPSTREAM_VMI_FINALIZER],
                }
            }
        ],
        node_devices=[{"metadata": {"name": "node1"}}],
        webhook_configurations=[
            ("validatingwebhookconfigurations", "pcidevices-validator"),
            ("mutatingwebhookconfigurations", "pcidevices-mutator"),
        ],
        secrets=["pcidevices-webhook-ca", "pcidevices-webhook-tls"],
        crds=[{"metadata": {"name": "pcideviceclaims.devices.harvesterhci.io", "resourceVersion": "4"}}],
        kubevirts=[
            kubevirt(
                [
                    {"pciVendorSelector": "8086:10d3", "resourceName": POOLED},
                    {"pciVendorSelector": "8086:10d3", "resourceName": POOLED, "externalResourceProvider": True},
                    {"pciVendorSelector": "10de:1eb8", "resourceName": "nvidia.com/TU104GL_TESLA_T4"},
                ]
            )
        ],
        addon={
            "metadata": {"name": "pcidevices-controller", "namespace": "harvester-system", "resourceVersion": "5"},
            "spec": {
                "chart": "harvester-pcidevices-controller",
                "repo": "http://harvester-cluster-repo",
                "version": "0.3.0",
            },
        },
        upstream_only={"sriovnetworkdevices": [{"metadata": {"name": "node1-eno1"}, "spec": {"numVFs": 0}}]},
    )
    base.update(over)
    return Observed(**base)


@pytest.mark.parametrize(
    ("user_name", "owner"),
    [
        ("admin", "user-7xk2p"),  # Rancher's local admin: username matches
        ("Jane Doe", "u-abc12"),  # an external-auth user has no username: its displayName matches
        ("Twin", "legacy:Twin"),  # two Users share the displayName: no guess
        ("bob", "legacy:bob"),  # no Rancher User
        ("", "legacy:"),
    ],
)
def test_owner_is_the_rancher_user_name_or_legacy(user_name: str, owner: str) -> None:
    assert map_owner(user_name, USERS) == owner


def test_claims_are_adopted_with_mapped_owners_our_finalizer_and_spec_and_status_kept() -> None:
    before = upstream_cluster()
    after = apply(before, plan(before, SETTINGS))
    claims = {c["metadata"]["name"]: c for c in after.pci_claims + after.usb_claims}
    assert claims["node1-000001000"]["metadata"]["annotations"] == {
        OWNER: "user-7xk2p",
        ANNOTATION_ADOPTED: ADOPTED_FROM,
    }
    assert claims["node1-000002000"]["metadata"]["annotations"][OWNER] == "u-abc12"
    assert claims["node1-0951-1666-002004"]["metadata"]["annotations"][OWNER] == "legacy:bob"
    for name, claim in claims.items():
        assert claim["metadata"]["finalizers"] == [FINALIZER_AGENT], name
    old = {c["metadata"]["name"]: c for c in before.pci_claims}
    for name in old:
        assert claims[name]["spec"] == old[name]["spec"]
        assert claims[name]["status"] == old[name]["status"]


def test_a_claim_the_webhook_made_is_left_as_it_is() -> None:
    ours = pci_claim("node1-000003000", "tenant", finalizers=(FINALIZER_AGENT,), annotations={OWNER: "tenant-a"})
    p = plan(upstream_cluster(pci_claims=[ours], usb_claims=[]), SETTINGS)
    assert not [c for c in p.changes if c.target.plural == "pcideviceclaims"]


def test_a_claim_being_deleted_loses_the_upstream_finalizer_without_gaining_ours() -> None:
    deleting = pci_claim("node1-000001000", "admin", deletionTimestamp="2026-01-01T00:00:00Z")
    after = apply(upstream_cluster(pci_claims=[deleting]), plan(upstream_cluster(pci_claims=[deleting]), SETTINGS))
    assert after.pci_claims[0]["metadata"]["finalizers"] == []


def test_node_and_vmi_finalizers_of_upstream_are_removed_and_others_kept() -> None:
    before = upstream_cluster()
    after = apply(before, plan(before, SETTINGS))
    assert after.nodes[0]["metadata"]["finalizers"] == []
    assert after.vmis[0]["metadata"]["finalizers"] == ["foregroundDeleteVirtualMachine"]


def test_upstream_webhooks_secrets_and_node_objects_are_deleted() -> None:
    before = upstream_cluster()
    after = apply(before, plan(before, SETTINGS))
    assert after.webhook_configurations == []
    assert after.secrets == []
    assert after.node_devices == []


def test_our_crds_get_helm_ownership_metadata_keeping_other_entries() -> None:
    crd = {
        "metadata": {
            "name": "pcideviceclaims.devices.harvesterhci.io",
            "resourceVersion": "4",
            "labels": {"keep": "me"},
        }
    }
    other = {"metadata": {"name": "vgpudevices.devices.harvesterhci.io", "resourceVersion": "9"}}
    before = upstream_cluster(crds=[crd, other])
    after = apply(before, plan(before, TakeoverSettings(release_name="rel", release_namespace="ns")))
    meta = after.crds[0]["metadata"]
    assert meta["labels"] == {"keep": "me", "app.kubernetes.io/managed-by": "Helm"}
    assert meta["annotations"] == {"meta.helm.sh/release-name": "rel", "meta.helm.sh/release-namespace": "ns"}
    assert after.crds[1] == other


def test_permits_lose_duplicates_gain_external_provider_and_keep_every_resource_name() -> None:
    before = upstream_cluster()
    after = apply(before, plan(before, SETTINGS))
    pci = after.kubevirts[0]["spec"]["configuration"]["permittedHostDevices"]["pciHostDevices"]
    assert pci == [
        {"pciVendorSelector": "8086:10d3", "resourceName": POOLED, "externalResourceProvider": True},
        # not a resource of a claimed device here: kept as it is
        {"pciVendorSelector": "10de:1eb8", "resourceName": "nvidia.com/TU104GL_TESLA_T4"},
    ]


def test_a_claimed_device_whose_permit_vanished_gets_it_back() -> None:
    repaired, notes = repair_permits({"pciHostDevices": []}, {POOLED}, {POOLED: "8086:10d3"})
    assert repaired["pciHostDevices"] == [
        {"pciVendorSelector": "8086:10d3", "resourceName": POOLED, "externalResourceProvider": True}
    ]
    assert notes


def test_usb_permits_are_deduplicated_and_marked_external() -> None:
    rn = names.usb_resource_name("node1-0951-1666-002004")
    entry = {"resourceName": rn, "selectors": [{"vendor": "0951", "product": "1666"}]}
    repaired, _ = repair_permits({"usb": [entry, entry]}, {rn}, {})
    assert repaired["usb"] == [{**entry, "externalResourceProvider": True}]


def test_the_addon_is_pointed_at_our_chart_by_repo_version_and_values_only() -> None:
    target = AddonTarget(repo="https://charts.example.test", version="0.1.0", values="policy: {}\n")
    before = upstream_cluster()
    after = apply(before, plan(before, TakeoverSettings(addon=target)))
    assert after.addon is not None and before.addon is not None
    assert after.addon["spec"] == {
        "chart": "harvester-pcidevices-controller",
        "repo": "https://charts.example.test",
        "version": "0.1.0",
        "valuesContent": "policy: {}\n",
    }


def test_an_addon_with_another_chart_is_refused() -> None:
    addon = {"metadata": {"name": "pcidevices-controller"}, "spec": {"chart": "something-else"}}
    p = plan(upstream_cluster(addon=addon), TakeoverSettings(addon=AddonTarget("r", "1", "")))
    assert p.refused and p.changes == ()


def test_a_second_run_plans_nothing() -> None:
    settings = TakeoverSettings(addon=AddonTarget("https://charts.example.test", "0.1.0", ""))
    before = upstream_cluster()
    first = plan(before, settings)
    assert first.changes
    second = plan(apply(before, first), settings)
    assert second.changes == () and not second.refused


@pytest.mark.parametrize(
    ("over", "fragment"),
    [
        (
            {"upstream_only": {"sriovnetworkdevices": [{"metadata": {"name": "n-eno1"}, "spec": {"numVFs": 4}}]}},
            "SR-IOV",
        ),
        ({"upstream_only": {"vgpudevices": [{"metadata": {"name": "n-vgpu"}, "spec": {"enabled": True}}]}}, "vGPU"),
        (
            {"upstream_only": {"sriovgpudevices": [{"metadata": {"name": "n-gpu"}, "spec": {"enabled": True}}]}},
            "GPU VFs",
        ),
        ({"upstream_only": {"migconfigurations": [{"metadata": {"name": "n-mig"}, "spec": {"enabled": True}}]}}, "MIG"),
        (
            {
                "pci_claims": [
                    pci_claim(
                        "node1-000001000", "admin", annotations={"pcidevices.harvesterhci.io/skip-vfio-binding": "true"}
                    )
                ]
            },
            "skip-vfio-binding",
        ),
    ],
)
def test_upstream_only_features_in_use_refuse_the_whole_takeover(over: dict[str, Any], fragment: str) -> None:
    p = plan(upstream_cluster(**over), SETTINGS)
    assert p.refused
    assert any(fragment in r for r in p.refusals)
    assert p.changes == ()


def test_a_claimed_device_with_an_overridden_resource_name_is_refused_an_unclaimed_one_is_not() -> None:
    overridden = {
        **pci_device("node1-000001000", "custom.io/NIC"),
        "metadata": {
            "name": "node1-000001000",
            "annotations": {"pcidevice.harvesterhci.io/override-resource-name": "custom.io/NIC"},
        },
    }
    p = plan(upstream_cluster(pci_devices=[overridden]), SETTINGS)
    assert p.refused and "override-resource-name" in p.refusals[0] and p.changes == ()
    unclaimed = {**overridden, "metadata": {**overridden["metadata"], "name": "node1-000009000"}}
    assert not plan(upstream_cluster(pci_devices=[unclaimed]), SETTINGS).refused


def test_upstream_only_objects_not_in_use_are_left_alone_without_refusing() -> None:
    p = plan(upstream_cluster(), SETTINGS)
    assert not p.refused
    assert not [c for c in p.changes if "sriov" in c.target.plural]
    assert any("sriovnetworkdevices (left alone)" in f for f in p.found)


def test_every_patch_is_conditional_on_the_observed_resource_version() -> None:
    p = plan(upstream_cluster(), TakeoverSettings(addon=AddonTarget("r", "1", "")))
    for change in p.changes:
        if change.op == "patch":
            assert change.patch[0]["op"] == "test" and change.patch[0]["path"] == "/metadata/resourceVersion"


def _upstream_vm(name: str, device_names: list[str], annotations: dict[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "default", "resourceVersion": "7"}
    if annotations is not None:
        meta["annotations"] = annotations
    host = [{"name": f"d{i}", "deviceName": d} for i, d in enumerate(device_names)]
    return {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "metadata": meta,
            "spec": {"template": {"spec": {"domain": {"devices": {"hostDevices": host}}}}}}  # fmt: skip


def test_vms_naming_claimed_devices_are_recorded_with_the_names_they_used_and_forged_records_dropped() -> None:
    forged = records.Requester("alice").encode()
    observed = upstream_cluster(vms=[
        _upstream_vm("uses-it", [POOLED]),
        _upstream_vm("other", ["nvidia.com/GRID_T4-1Q"], {records.ANNOTATION: forged, "keep": "me"}),
        _upstream_vm("plain", []),
    ])  # fmt: skip
    p = plan(observed, SETTINGS)
    after = apply(observed, p)
    by_name = {vm["metadata"]["name"]: vm for vm in after.vms}
    recorded = records.Requester.decode(by_name["uses-it"]["metadata"]["annotations"][records.ANNOTATION])
    assert recorded is not None and recorded.adopted == (POOLED,) and recorded.username == ADOPTED_REQUESTER
    assert by_name["other"]["metadata"]["annotations"] == {"keep": "me"}, "a record nobody wrote is removed"
    assert "annotations" not in by_name["plain"]["metadata"]
    assert [c for c in plan(after, SETTINGS).changes if c.target.plural == "virtualmachines"] == []  # idempotent
