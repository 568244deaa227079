"""Dynamic Resource Allocation on a real node (issue 18): the kubelet in the qemu guest, our DRA driver, CDI in
containerd, and a pod that opens its vfio device as QEMU does.

On the node tier's guest node (tests/support/guestcluster.py: kubelet + containerd in the kernel tier's qemu guest
with an emulated Intel IOMMU and e1000e NICs, the chart installed, its agent pod in the guest binding for real, the
webhook here), one scenario, each step timed and recorded even when an earlier one failed; the tests judge the record:

1. the kubelet's plugin watcher registers both DRA drivers (the agent's metric);
2. an administrator claims the second e1000e with `spec.offer: DRA`: the agent binds it to vfio-pci and publishes it
   in the node's ResourceSlice (claim -> slice, measured), and offers it under no resource name;
3. bob, who may not use it, is refused a ResourceClaim pinning it (the webhook, D5);
4. alice, who may, makes a ResourceClaim pinning it and a launcher-like pod that names the claim: kube-scheduler
   allocates the claim, the kubelet calls our NodePrepareResources, containerd injects the CDI devices
   (/dev/vfio/vfio, /dev/vfio/<group>, PCI_RESOURCE_<NAME>) and tests/node/guest/vfio_check.c does what QEMU does
   with them (claim created -> pod running, measured);
5. the ResourceClaim's status shows the allocation (driver, pool, device) and the pod it is reserved for, the
   PCIDeviceClaim's allocatedTo names the pod, and the agent holds one prepared claim;
6. the pod deleted: the kubelet calls NodeUnprepareResources and the CDI spec goes, and the resource claim
   controller lets the ResourceClaim go;
7. a pod naming alice's ResourceClaimTemplate: the resource claim controller makes its claim, which carries alice's
   admission record (the webhook admits it only so, D7), and the pod gets the device;
8. broad claims ("any e1000e") narrowed by the mutator: kube-scheduler gives the device to its owner's claim, and
   alice's (she may use the device but owns none) stays unschedulable;
9. the PCIDeviceClaim released: the e1000e is back on e1000e, its slice gone.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from policy import dra, names, records
from tests.node.conftest import report
from tests.support import vmcluster as vc
from tests.support.dra import claim_template, pin_pci, request, resourceclaim
from tests.support.guestcluster import GuestCluster
from tests.support.guestnode import PAUSE_IMAGE
from tests.support.guestscenario import CHECK_DIR, Record, build_check, check_report, driver, needs, running, wait
from tests.support.guestscenario import container_log as _container_log

NS = "dra"
E1000E = ("8086", "10d3")
CDI_DIR = "/var/run/cdi"


def metric(metrics: str, name: str, driver_name: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(f'{name}{{driver="{driver_name}"}} '):
            return float(line.rsplit(" ", 1)[1])
    return -1.0


def cdi_specs(c: GuestCluster) -> list[str]:
    got = c.node.exec("sh", "-c", f"ls {CDI_DIR} 2>/dev/null || true")
    return sorted(n for n in got.stdout.split() if n.endswith(".json"))


def container_log(c: GuestCluster, pod: str) -> str:
    return _container_log(c, NS, pod)


def launcher(name: str, claim: str, env: str) -> dict[str, Any]:
    """A launcher-like pod that names a ResourceClaim (no extended resource): its container runs vfio-check on the
    variable the CDI spec sets, as root, without privileges or added capabilities."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": {"app": "dra-launcher"}},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "terminationGracePeriodSeconds": 15,
            "resourceClaims": [{"name": "nic", "resourceClaimName": claim}],
            "containers": [
                {
                    "name": "compute",
                    "image": PAUSE_IMAGE,
                    "imagePullPolicy": "Never",
                    "command": ["/check/vfio-check", env],
                    "securityContext": {"runAsUser": 0, "runAsGroup": 0, "allowPrivilegeEscalation": False},
                    "resources": {"claims": [{"name": "nic"}], "limits": {"cpu": "100m", "memory": "32Mi"}},
                    "volumeMounts": [{"name": "check", "mountPath": "/check", "readOnly": True}],
                }
            ],
            "volumes": [{"name": "check", "hostPath": {"path": CHECK_DIR, "type": "Directory"}}],
        },
    }


# -- the scenario ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scenario(guest_installed: GuestCluster, pytestconfig: pytest.Config) -> Iterator[Record]:
    c = guest_installed
    with c.entered():
        rec = Record()
        run(c, rec)
        d = rec.get("pod", {})
        report(
            pytestconfig,
            f"DRA on the guest node: claim -> slice {rec.get('claim', {}).get('claim_to_slice_s')}s, "
            f"ResourceClaim created -> pod running with the device {d.get('claim_to_running_s')}s, pod deleted "
            f"-> unprepared {rec.get('unprepare', {}).get('deleted_to_unprepared_s')}s, pod of a template -> "
            f"running {rec.get('template', {}).get('created_to_running_s')}s; steps {rec.get('step_s')}",
        )
        yield rec


def run(c: GuestCluster, rec: Record) -> None:  # noqa: C901 - one scenario, step by step
    cp = c.cp
    ctx: dict[str, Any] = {}

    @rec.step("setup")
    def _() -> None:
        build_check(c)
        cp.kubectl("create", "namespace", NS)

        def published() -> list[dict[str, Any]]:
            items = c.kubectl_json("get", "pcidevices", "-l", f"{names.LABEL_NODENAME}={c.node.name}")["items"]
            return [d for d in items if (d["status"]["vendorId"], d["status"]["deviceId"]) == E1000E]

        nics, _ = wait("the agent publishes the guest's two e1000e", lambda: len(published()) == 2 and published(),
                       120, 1)  # fmt: skip
        nic = sorted(nics, key=lambda d: d["status"]["address"])[1]  # the handoff test uses the first
        ctx["device"] = nic
        u = "dra"
        claim_rules = {"apiGroups": ["resource.k8s.io"], "resources": ["resourceclaims", "resourceclaimtemplates"],
                       "verbs": ["get", "list", "create", "delete"]}  # fmt: skip
        pods = {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "create", "delete"]}
        use = {"apiGroups": [names.GROUP], "resources": ["pcidevices"], "verbs": ["use"],
               "resourceNames": [nic["metadata"]["name"]]}  # fmt: skip
        vc.apply(cp, [
            vc.cluster_role(f"{u}-claims", [claim_rules, pods]), vc.cluster_role(f"{u}-use", [use]),
            vc.bind("alice", f"{u}-claims", NS), vc.bind("alice", f"{u}-use", NS), vc.bind("bob", f"{u}-claims", NS),
        ])  # fmt: skip
        ctx["alice"], ctx["bob"] = cp.mint_user("alice"), cp.mint_user("bob")

    @rec.step("registered")
    def _() -> None:
        def both() -> dict[str, float] | None:
            m = c.agent_metrics()
            got = {d: metric(m, "pcidevices_agent_dra_registered", d) for d in dra.DRIVERS}
            return got if all(v == 1.0 for v in got.values()) else None

        got, took = wait("the kubelet registers both DRA drivers", both, 120, 1)
        rec["registered"] = {"drivers": got, "after_s": round(took, 1),
                             "classes": sorted(x["metadata"]["name"]
                                               for x in c.kubectl_json("get", "deviceclasses")["items"])}  # fmt: skip

    @rec.step("claim")
    def _() -> None:
        nic = ctx["device"]
        name, address = nic["metadata"]["name"], nic["status"]["address"]
        body = vc.ui_claim(nic, nic["metadata"]["uid"])
        body["spec"]["offer"] = dra.OFFER_DRA
        started = time.monotonic()
        cp.kubectl("create", "-f", "-", input=json.dumps(body))

        def in_slice() -> dict[str, Any] | None:
            for s in c.kubectl_json("get", "resourceslices")["items"]:
                if s["spec"]["driver"] == dra.PCI_DRIVER and s["spec"]["nodeName"] == c.node.name:
                    for d in s["spec"].get("devices", []):
                        if d["name"] == dra.pci_device_name(address):
                            return {"slice": s["metadata"]["name"], "pool": s["spec"]["pool"], "device": d}
            return None

        found, took = wait("the device is published in the node's ResourceSlice", in_slice, 180, 0.2)
        st = c.kubectl_json("get", "pcidevices", name)["status"]
        rec["claim"] = {
            **found,
            "address": address,
            "claim_to_slice_s": round(took, 2),
            "driver": driver(c, address),
            "device_resource_name": st.get("resourceName"),
            "per_device_name": names.pci_device_resource_name("Intel Corporation", c.node.name, address),
            "offered": next(
                (
                    x
                    for x in c.kubectl_json("get", "pcideviceclaims", name)["status"]["conditions"]
                    if x["type"] == "Offered"
                ),
                None,
            ),  # fmt: skip
            "started": started,
        }

    @rec.step("bob")
    def _() -> None:
        nic = ctx["device"]
        body = resourceclaim("bobs", request("nic", pin_pci(nic["metadata"]["name"])), namespace=NS)
        got = cp.kubectl("create", "-f", "-", input=json.dumps(body), user=ctx["bob"], check=False)
        rec["bob"] = {"rc": got.returncode, "stderr": got.stderr}

    @rec.step("pod")
    def _() -> None:
        nic = ctx["device"]
        name, address = nic["metadata"]["name"], nic["status"]["address"]
        env = names.pci_resource_env_var(names.pci_device_resource_name("Intel Corporation", c.node.name, address))
        started = time.monotonic()
        claim = resourceclaim("nic", request("nic", pin_pci(name)), namespace=NS)
        made = cp.kubectl("create", "-f", "-", input=json.dumps(claim), user=ctx["alice"], check=False)
        assert made.returncode == 0, made.stderr
        made = cp.kubectl("create", "-f", "-", input=json.dumps(launcher("launcher", "nic", env)), user=ctx["alice"],
                          check=False)  # fmt: skip
        assert made.returncode == 0, made.stderr

        p, _ = wait("the launcher pod runs", running(c, NS, "launcher"), 300, 0.2)
        to_running = time.monotonic() - started
        check, _ = wait("vfio-check reports", lambda: check_report(container_log(c, "launcher")), 60, 0.5)
        rec["pod"] = {"claim_to_running_s": round(to_running, 2), "check": check, "env": env,
                      "uid": p["metadata"]["uid"], "state": p["status"]["containerStatuses"][0]["state"]}  # fmt: skip

    @rec.step("status")
    def _() -> None:
        name = ctx["device"]["metadata"]["name"]
        rc = c.kubectl_json("get", "resourceclaim", "-n", NS, "nic")
        allocated, took = wait(
            "status.allocatedTo names the pod",
            lambda: c.kubectl_json("get", "pcideviceclaims", name)["status"].get("allocatedTo"), 60, 0.5,
        )  # fmt: skip
        refused = cp.kubectl("delete", "pcideviceclaim", name, "--dry-run=server", check=False)
        rec["status"] = {
            "release_refused": {"rc": refused.returncode, "stderr": refused.stderr},
            "allocated_after_s": round(took, 1),
            "results": rc["status"]["allocation"]["devices"]["results"],
            "reserved_for": rc["status"].get("reservedFor", []),
            "record": json.loads(rc["metadata"]["annotations"][records.ANNOTATION]),
            "allocated_to": allocated,
            "prepared": metric(c.agent_metrics(), "pcidevices_agent_dra_prepared_claims", dra.PCI_DRIVER),
            "cdi": cdi_specs(c),
            "uid": rc["metadata"]["uid"],
        }

    @rec.step("unprepare")
    def _() -> None:
        started = time.monotonic()
        cp.kubectl("delete", "pod", "-n", NS, "launcher", "--wait=false")
        wait("the kubelet unprepares the claim", lambda: not [f for f in cdi_specs(c) if "devices.harvesterhci.io"
                                                                in f], 120, 0.2)  # fmt: skip
        unprepared = time.monotonic() - started
        cp.kubectl("delete", "resourceclaim", "-n", NS, "nic", "--wait=false")
        gone, _ = wait("the resource claim controller lets the claim go",
                       lambda: cp.kubectl("get", "resourceclaim", "-n", NS, "nic", check=False).returncode != 0,
                       120, 0.5)  # fmt: skip
        rec["unprepare"] = {"deleted_to_unprepared_s": round(unprepared, 2), "claim_gone": gone,
                            "prepared": metric(c.agent_metrics(), "pcidevices_agent_dra_prepared_claims",
                                               dra.PCI_DRIVER)}  # fmt: skip

    @rec.step("template")
    def _() -> None:
        # a ResourceClaimTemplate: the resource claim controller makes the pod's claim; it carries alice's record
        nic = ctx["device"]
        name, address = nic["metadata"]["name"], nic["status"]["address"]
        env = names.pci_resource_env_var(names.pci_device_resource_name("Intel Corporation", c.node.name, address))
        tpl = claim_template("nic-tpl", request("nic", pin_pci(name)), namespace=NS)
        made = cp.kubectl("create", "-f", "-", input=json.dumps(tpl), user=ctx["alice"], check=False)
        assert made.returncode == 0, made.stderr
        pod = launcher("launcher-tpl", "", env)
        pod["spec"]["resourceClaims"] = [{"name": "nic", "resourceClaimTemplateName": "nic-tpl"}]
        started = time.monotonic()
        made = cp.kubectl("create", "-f", "-", input=json.dumps(pod), user=ctx["alice"], check=False)
        assert made.returncode == 0, made.stderr

        p, _ = wait("the template's pod runs", running(c, NS, "launcher-tpl"), 300, 0.2)
        to_running = time.monotonic() - started
        check, _ = wait("vfio-check reports", lambda: check_report(container_log(c, "launcher-tpl")), 60, 0.5)
        claim_name = p["status"]["resourceClaimStatuses"][0]["resourceClaimName"]
        made_claim = c.kubectl_json("get", "resourceclaim", "-n", NS, claim_name)
        cp.kubectl("delete", "pod", "-n", NS, "launcher-tpl", "--wait=false")
        wait("the template's claim is unprepared and goes with its pod",
             lambda: not [f for f in cdi_specs(c) if "devices.harvesterhci.io" in f]
             and cp.kubectl("get", "resourceclaim", "-n", NS, claim_name, check=False).returncode != 0,
             120, 0.5)  # fmt: skip
        rec["template"] = {"created_to_running_s": round(to_running, 2), "check": check,
                           "record": json.loads(made_claim["metadata"]["annotations"][records.ANNOTATION]),
                           "owner": made_claim["metadata"]["ownerReferences"][0]["name"]}  # fmt: skip

    @rec.step("broad")
    def _() -> None:
        # "any e1000e": narrowed by the mutator to its requester's own devices, evaluated by kube-scheduler
        address = ctx["device"]["status"]["address"]
        env = names.pci_resource_env_var(names.pci_device_resource_name("Intel Corporation", c.node.name, address))
        model = (f'device.attributes["{dra.PCI_DRIVER}"].vendorID == "8086" && '
                 f'device.attributes["{dra.PCI_DRIVER}"].deviceID == "10d3"')  # fmt: skip
        out: dict[str, Any] = {}
        for who, user in (("alice", ctx["alice"]), ("owner", None)):  # the owner: the admin who made the claim
            claim = resourceclaim(f"any-{who}", request("nic", model), namespace=NS)
            made = cp.kubectl("create", "-o", "json", "-f", "-", input=json.dumps(claim), user=user, check=False)
            assert made.returncode == 0, made.stderr
            selectors = [x["cel"]["expression"] for x in json.loads(made.stdout)["spec"]["devices"]["requests"][0][
                "exactly"]["selectors"]]  # fmt: skip
            pod = launcher(f"launcher-any-{who}", f"any-{who}", env)
            made = cp.kubectl("create", "-f", "-", input=json.dumps(pod), user=user, check=False)
            assert made.returncode == 0, made.stderr
            out[who] = {"selectors": selectors}

        def owner_running() -> bool:
            pod = c.kubectl_json("get", "pod", "-n", NS, "launcher-any-owner")
            return bool(pod["status"].get("phase") == "Running")

        wait("the owner's broad claim gets the device", owner_running, 300, 0.5)
        time.sleep(5)  # alice's pod has been tried by the scheduler all this while
        check, _ = wait("vfio-check reports", lambda: check_report(container_log(c, "launcher-any-owner")), 60, 0.5)
        alice = c.kubectl_json("get", "pod", "-n", NS, "launcher-any-alice")
        out["owner"]["check"] = check
        out["alice"].update(phase=alice["status"].get("phase"), node=alice["spec"].get("nodeName"),
                            conditions=alice["status"].get("conditions", []))  # fmt: skip
        for who in ("alice", "owner"):
            cp.kubectl("delete", "pod", "-n", NS, f"launcher-any-{who}", "--wait=false")
            cp.kubectl("delete", "resourceclaim", "-n", NS, f"any-{who}", "--wait=false")
        wait("both broad claims go, nothing prepared",
             lambda: not [f for f in cdi_specs(c) if "devices.harvesterhci.io" in f] and not c.kubectl_json(
                 "get", "resourceclaims", "-n", NS)["items"], 120, 0.5)  # fmt: skip
        rec["broad"] = out

    @rec.step("release")
    def _() -> None:
        nic = ctx["device"]
        name, address = nic["metadata"]["name"], nic["status"]["address"]
        # the release is admitted once the agent's next pass saw the unprepare (allocatedTo empty)
        wait("the release is admitted", lambda: cp.kubectl("delete", "pcideviceclaim", name, "--wait=false",
                                                            check=False).returncode == 0, 60, 0.5)  # fmt: skip
        wait(
            "the claim goes and the device is back on e1000e",
            lambda: driver(c, address) == "e1000e" and not c.kubectl_json("get", "pcideviceclaims")["items"],
            180,
            1,
        )
        slices = [s for s in c.kubectl_json("get", "resourceslices")["items"] if s["spec"]["driver"] == dra.PCI_DRIVER]
        rec["release"] = {"driver": driver(c, address), "slices": slices}


# -- the verdicts ----------------------------------------------------------------------------------------------------


def test_the_kubelet_registers_both_dra_drivers_and_the_classes_exist(scenario: Record) -> None:
    needs(scenario, "setup", "registered")
    assert scenario["registered"]["classes"] == sorted(dra.DRIVERS)


def test_a_dra_claim_is_bound_and_published_in_the_slice_only(scenario: Record) -> None:
    needs(scenario, "claim")
    got = scenario["claim"]
    assert got["driver"] == "vfio-pci" and got["pool"]["name"] == "guest1"
    attrs = got["device"]["attributes"]
    assert attrs["vendorID"] == {"string": "8086"} and attrs["deviceID"] == {"string": "10d3"}
    assert "resource.kubernetes.io/pcieRoot" in attrs and attrs["owner"]["string"]
    assert got["device_resource_name"] != got["per_device_name"]  # one path at a time: no device-plugin name
    assert got["offered"]["reason"] == "DynamicResourceAllocation"


def test_another_users_resourceclaim_for_the_device_is_denied(scenario: Record) -> None:
    needs(scenario, "setup", "bob")
    got = scenario["bob"]
    assert got["rc"] != 0 and "dra.validate.devices.harvesterhci.io" in got["stderr"]
    assert 'user "bob" lacks the verb use on pcidevices' in got["stderr"]


def test_the_pod_gets_its_vfio_device_through_the_kubelet_and_cdi_and_opens_it(scenario: Record) -> None:
    needs(scenario, "setup", "claim", "pod")
    check = scenario["pod"]["check"]
    assert check.get("ok") is True, check
    assert (check["env"], check["value"]) == (scenario["pod"]["env"], scenario["claim"]["address"])
    group = str(scenario["claim"]["device"]["attributes"]["iommuGroup"]["int"])
    assert sorted(check["dev_vfio"]) == sorted(["vfio", group]), "exactly the nodes the CDI spec named"
    assert "running" in scenario["pod"]["state"]


def test_the_resourceclaim_status_shows_the_allocation(scenario: Record) -> None:
    needs(scenario, "pod", "status")
    st = scenario["status"]
    [result] = st["results"]
    assert result["driver"] == dra.PCI_DRIVER and result["pool"] == "guest1"
    assert result["device"] == scenario["claim"]["device"]["name"]
    assert [r["name"] for r in st["reserved_for"]] == ["launcher"]
    assert st["record"]["user"] == "alice"
    assert [a["pod"] for a in st["allocated_to"]] == [f"{NS}/launcher"]
    assert st["release_refused"]["rc"] != 0 and f'pods "{NS}/launcher" hold it' in st["release_refused"]["stderr"]
    assert st["prepared"] == 1.0 and st["cdi"] == [f"devices.harvesterhci.io-pci-{st['uid']}.json"]


def test_deleting_the_pod_unprepares(scenario: Record) -> None:
    needs(scenario, "unprepare")
    assert scenario["unprepare"]["prepared"] == 0.0 and scenario["unprepare"]["claim_gone"]


def test_a_claim_made_from_a_template_carries_its_creators_record_and_gets_the_device(scenario: Record) -> None:
    needs(scenario, "template")
    got = scenario["template"]
    assert got["check"].get("ok") is True, got["check"]
    assert got["record"]["user"] == "alice" and got["record"]["via"] == f"resourceclaimtemplate {NS}/nic-tpl"
    assert got["owner"] == "launcher-tpl"


def test_a_broad_claim_gets_only_its_requesters_devices_at_the_scheduler(scenario: Record) -> None:
    needs(scenario, "broad")
    got = scenario["broad"]
    assert got["alice"]["selectors"][-1] == dra.owner_selector("alice", [dra.PCI_DRIVER])
    assert got["alice"]["phase"] == "Pending" and not got["alice"]["node"], got["alice"]
    assert got["owner"]["check"].get("ok") is True, got["owner"]["check"]


def test_the_release_gives_the_device_back_and_its_slice_goes(scenario: Record) -> None:
    needs(scenario, "release")
    assert scenario["release"]["driver"] == "e1000e" and scenario["release"]["slices"] == []
