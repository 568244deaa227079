"""DRA benchmark: a claim made -> a pod running with its vfio device, DRA side by side with the device plugin.

    .venv/bin/python bench/dra.py [--rounds 3]

Needs scripts/prepare-node and scripts/prepare-kernel (the node tier's guest node: kubelet + containerd in the
kernel tier's qemu guest with an emulated IOMMU, tests/support/guestcluster.py). Boots the guest once, installs the
chart, then alternates per round on the same e1000e:

- device plugin: a PCIDeviceClaim, a VM and its VMI, and a launcher-like pod virt-controller would create asking for
  the device's resource name (the agent binds, registers the plugin, the kubelet allocates);
- DRA: a PCIDeviceClaim with spec.offer: DRA, a ResourceClaim pinning the device, and a pod naming it (the agent
  binds and publishes the slice, kube-scheduler allocates, the kubelet prepares through our plugin, containerd
  injects the CDI devices).

Each pod runs tests/node/guest/vfio_check.c, which opens the device as QEMU does; a round counts only when it
reports success. Measured: PCIDeviceClaim created -> pod Running (seconds, this machine's clock, polled every 0.1 s),
and for DRA the part from the ResourceClaim's creation. After each round everything is deleted and the device is
back on e1000e before the next. Prints each round and the medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from policy import dra, names  # noqa: E402
from tests.support import guestcluster, vms  # noqa: E402
from tests.support import vmcluster as vc  # noqa: E402
from tests.support.dra import pin_pci, request, resourceclaim  # noqa: E402
from tests.support.guestnode import PAUSE_IMAGE  # noqa: E402

NS = "bench"
E1000E = ("8086", "10d3")
VENDOR = "Intel Corporation"


def _wait(what: str, check: Any, timeout: float, step: float = 0.1) -> Any:
    started = time.monotonic()
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"{what}: not within {timeout}s (last {value!r})")
        time.sleep(step)


def _container(env: str) -> dict[str, Any]:
    return {
        "name": "compute",
        "image": PAUSE_IMAGE,
        "imagePullPolicy": "Never",
        "command": ["/check/vfio-check", env],
        "securityContext": {"runAsUser": 0, "runAsGroup": 0, "allowPrivilegeEscalation": False},
        "resources": {"limits": {"cpu": "100m", "memory": "32Mi"}},
        "volumeMounts": [{"name": "check", "mountPath": "/check", "readOnly": True}],
    }


def _pod_spec(container: dict[str, Any]) -> dict[str, Any]:
    return {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": 5,
        "containers": [container],
        "volumes": [{"name": "check", "hostPath": {"path": "/node/check", "type": "Directory"}}],
    }


class Bench:
    def __init__(self, c: guestcluster.GuestCluster) -> None:
        self.c = c
        self.cp = c.cp
        self.vcu = self.cp.mint_user(vms.VIRT_CONTROLLER, groups=("system:serviceaccounts",))

    def setup(self) -> None:
        out = self.c.workdir / "vfio-check"
        subprocess.run(["gcc", "-static", "-O2", "-o", str(out), str(REPO / "tests/node/guest/vfio_check.c")],
                       check=True, capture_output=True)  # fmt: skip
        self.c.node.put(out, "check/vfio-check")
        self.cp.kubectl("create", "namespace", NS)
        rule = {"apiGroups": ["kubevirt.io", ""], "resources": ["virtualmachineinstances", "pods"],
                "verbs": ["get", "list", "watch", "create", "delete"]}  # fmt: skip
        vc.apply(self.cp, [vc.cluster_role("bench-virt-controller", [rule]),
                           vc.bind(vms.VIRT_CONTROLLER, "bench-virt-controller")])  # fmt: skip

        def nics() -> list[dict[str, Any]]:
            items = self.c.kubectl_json("get", "pcidevices", "-l", f"{names.LABEL_NODENAME}={self.c.node.name}")
            return [d for d in items["items"] if (d["status"]["vendorId"], d["status"]["deviceId"]) == E1000E]

        self.nic = sorted(_wait("two e1000e published", lambda: len(nics()) == 2 and nics(), 180, 1),
                          key=lambda d: d["status"]["address"])[1]  # fmt: skip
        self.name, self.address = self.nic["metadata"]["name"], self.nic["status"]["address"]
        self.resource = names.pci_device_resource_name(VENDOR, self.c.node.name, self.address)

    def _claim(self, offer: str) -> float:
        body = vc.ui_claim(self.nic, self.nic["metadata"]["uid"])
        body["spec"]["offer"] = offer
        started = time.monotonic()
        self.cp.kubectl("create", "-f", "-", input=json.dumps(body))
        return started

    def _running(self, pod: str) -> None:
        def up() -> bool:
            p = self.c.kubectl_json("get", "pod", "-n", NS, pod)
            if p["status"].get("phase") in ("Failed", "Succeeded"):
                raise RuntimeError(f"{pod} ended: {json.dumps(p['status'])[-1500:]}")
            return p["status"].get("phase") == "Running"

        _wait(f"{pod} running", up, 300)

    def _checked(self, pod: str) -> None:
        def verdict() -> dict[str, Any] | None:
            log = self.c.node.exec("sh", "-c", f"cat /var/log/pods/{NS}_{pod}_*/compute/*.log", check=False).stdout
            line = next((x for x in log.splitlines() if "VFIO-CHECK " in x), None)
            return json.loads(line.split("VFIO-CHECK ", 1)[1]) if line else None

        got = _wait(f"{pod} vfio-check", verdict, 60, 0.5)
        if got.get("ok") is not True:
            raise RuntimeError(f"vfio-check failed in {pod}: {got}")

    def _released(self) -> None:
        # refused (A7) until the agent saw the pod go and the webhook's view followed: ask again
        _wait("the release admitted", lambda: self.cp.kubectl("delete", "pcideviceclaim", self.name, "--wait=false",
                                                              "--ignore-not-found", check=False).returncode == 0,
              120, 0.5)  # fmt: skip

        def back() -> bool:
            d = self.c.node.exec("readlink", f"/sys/bus/pci/devices/{self.address}/driver", check=False).stdout
            return d.strip().endswith("/e1000e") and not self.c.kubectl_json("get", "pcideviceclaims")["items"]

        _wait("the device back on e1000e", back, 240, 0.5)

    def device_plugin(self, i: int) -> dict[str, float]:
        started = self._claim(dra.OFFER_DEVICE_PLUGIN)

        def offered() -> bool:  # a VM may name the device once the agent offers it under its resource name
            st = self.c.kubectl_json("get", "pcidevices", self.name)["status"]
            return st.get("kernelDriverInUse") == "vfio-pci" and st.get("resourceName") == self.resource

        _wait("the device offered under its resource name", offered, 180)
        vm = vms.vm(f"vm{i}", NS, host=[(self.name, self.resource)])
        vm["metadata"].pop("uid", None)
        _wait("the VM admitted (the webhook's view follows)", lambda: vc.create(self.cp, vm, None).returncode == 0,
              30, 0.2)  # fmt: skip
        vm_obj = vc.get(self.cp, "vm", f"vm{i}", NS)
        vmi = vms.vmi(f"vm{i}", NS, host=[(self.name, self.resource)], owner=vm_obj)
        vmi["metadata"].pop("uid", None)
        made = vc.create_once_visible(self.cp, vmi, self.vcu)
        assert made.returncode == 0, made.stderr
        vmi_obj = vc.get(self.cp, "vmi", f"vm{i}", NS)
        assert vmi_obj is not None
        pod = vms.pod(f"launcher-dp{i}", NS, resources=[self.resource], owner=vmi_obj)
        pod["metadata"].pop("uid", None)
        container = _container(names.pci_resource_env_var(self.resource))
        container["resources"]["limits"][self.resource] = "1"
        pod["spec"] = _pod_spec(container)
        made = vc.create_once_visible(self.cp, pod, self.vcu, timeout=300)
        assert made.returncode == 0, made.stderr
        self._running(f"launcher-dp{i}")
        took = time.monotonic() - started
        self._checked(f"launcher-dp{i}")
        for kind, name in (("pod", f"launcher-dp{i}"), ("vmi", f"vm{i}"), ("vm", f"vm{i}")):
            self.cp.kubectl("delete", kind, "-n", NS, name, "--wait=true", check=False)
        self._released()
        return {"claim_to_running_s": took}

    def dra(self, i: int) -> dict[str, float]:
        started = self._claim(dra.OFFER_DRA)
        claimed = time.monotonic()
        self.cp.kubectl("create", "-f", "-", input=json.dumps(
            resourceclaim(f"nic{i}", request("nic", pin_pci(self.name)), namespace=NS)))  # fmt: skip
        container = _container(names.pci_resource_env_var(self.resource))
        container["resources"]["claims"] = [{"name": "nic"}]
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"launcher-dra{i}", "namespace": NS},
               "spec": {**_pod_spec(container), "resourceClaims": [{"name": "nic", "resourceClaimName": f"nic{i}"}]}}
        self.cp.kubectl("create", "-f", "-", input=json.dumps(pod))  # fmt: skip
        self._running(f"launcher-dra{i}")
        done = time.monotonic()
        self._checked(f"launcher-dra{i}")
        self.cp.kubectl("delete", "pod", "-n", NS, f"launcher-dra{i}", "--wait=true")
        self.cp.kubectl("delete", "resourceclaim", "-n", NS, f"nic{i}", "--wait=false")
        _wait("the ResourceClaim gone (the resource claim controller deallocates it)", lambda: self.cp.kubectl(
            "get", "resourceclaim", "-n", NS, f"nic{i}", check=False).returncode != 0, 120, 0.5)  # fmt: skip
        self._released()
        return {"claim_to_running_s": done - started, "resourceclaim_to_running_s": done - claimed}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    prepared = guestcluster.Prepared.locate()
    rows: dict[str, list[dict[str, float]]] = {"device plugin": [], "DRA": []}
    with guestcluster.running(prepared, kubelet_extra={"nodeStatusUpdateFrequency": "1s"}) as c:
        guestcluster.start_node(c)
        guestcluster.install_chart(c)
        c.wait_agent_serving()
        with c.entered():
            b = Bench(c)
            b.setup()
            for i in range(args.rounds):
                for label, fn in (("device plugin", b.device_plugin), ("DRA", b.dra)):
                    got = fn(i)
                    rows[label].append(got)
                    print(f"round {i + 1} {label:13s} " + "  ".join(f"{k} {v:6.2f}" for k, v in got.items()),
                          flush=True)  # fmt: skip
    print()
    for label, got in rows.items():
        keys = got[0].keys() if got else []
        print(f"median {label:13s} " + "  ".join(f"{k} {statistics.median(r[k] for r in got):6.2f}" for k in keys))
    dp = statistics.median(r["claim_to_running_s"] for r in rows["device plugin"])
    d = statistics.median(r["claim_to_running_s"] for r in rows["DRA"])
    print(f"DRA / device plugin (claim made -> pod running): {d / dp:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
