"""Benchmark of VM UPDATE reviews (part 2): the Harvester UI attaching a GPU and its audio sibling to a VM.

Uses the server, the fake SubjectAccessReview API and the open-loop load of bench/webhook.py (gunicorn, TLS,
`python -m webhook serve`, view from a file). The view holds --devices PCIDevices with their claims and --vms VMs
that already name devices (so the "named by another VM" and in-use indexes are full); each review is a VM UPDATE as
the API server sends it, object and oldObject (~30 KB together: Harvester's annotations, managedFields, cloud-init,
status), whose new hostDevices name a GPU and its audio function claimed by the requester, in the VM's namespace.

Two load shapes, both at --rate (default 200/s): `warm` cycles over a few hundred VMs, so after the warm-up the
SubjectAccessReview cache answers; `cold` puts every VM in a namespace of its own, so no (user, namespace) repeats
and every review waits for a SubjectAccessReview (the resource-wide question of `sar_broad_first`; with it off, one
per device), answered by the fake API on loopback, so this is the floor of a miss. The SAR cache's hits and misses
are reported for each.

    .venv/bin/python bench/webhook_vm.py             # 100,000 devices, 20,000 claims, 5,000 VMs; ~1-2 minutes
    .venv/bin/python bench/webhook_vm.py --quick     # small view, short steps
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import multiprocessing
import os
import random
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from policy import records  # noqa: E402
from policy.review import UserInfo  # noqa: E402
from webhook import certs  # noqa: E402

_spec = importlib.util.spec_from_file_location("bench_webhook", ROOT / "bench" / "webhook.py")
assert _spec is not None and _spec.loader is not None
base = importlib.util.module_from_spec(_spec)
sys.modules["bench_webhook"] = base
_spec.loader.exec_module(base)

SLO_P99_S = 0.010
USE_NAMESPACE = "vms-{user}"


def _managed(manager: str, when: str, operation: str = "Update") -> dict[str, Any]:
    return {
        "manager": manager,
        "operation": operation,
        "apiVersion": "kubevirt.io/v1",
        "time": when,
        "fieldsType": "FieldsV1",
        "fieldsV1": {
            "f:metadata": {
                "f:annotations": {f"f:harvesterhci.io/{k}": {} for k in ("vmRunStrategy", "sshNames", "mac-address")},
                "f:labels": {".": {}, "f:harvesterhci.io/creator": {}, "f:harvesterhci.io/os": {}},
            },
            "f:spec": {
                "f:runStrategy": {},
                "f:template": {
                    "f:metadata": {"f:annotations": {".": {}, "f:harvesterhci.io/sshNames": {}}},
                    "f:spec": {
                        "f:domain": {
                            "f:cpu": {"f:cores": {}, "f:sockets": {}, "f:threads": {}},
                            "f:devices": {"f:disks": {}, "f:interfaces": {}, "f:hostDevices": {}, "f:inputs": {}},
                            "f:features": {"f:acpi": {"f:enabled": {}}},
                            "f:machine": {"f:type": {}},
                            "f:memory": {"f:guest": {}},
                            "f:resources": {"f:limits": {"f:cpu": {}, "f:memory": {}}},
                        },
                        "f:evictionStrategy": {},
                        "f:networks": {},
                        "f:volumes": {},
                    },
                },
            },
        },
    }


def vm(name: str, namespace: str, host: list[tuple[str, str]], *, generation: int) -> dict[str, Any]:
    """A VM as Harvester stores it (UI-made), with status; hostDevices from `host`."""
    now = "2026-11-27T05:00:00Z"
    user_data = "#cloud-config\npackage_update: true\npackages:\n  - qemu-guest-agent\n" + "".join(
        f"write_files:\n  - path: /etc/app/{i}.conf\n    content: |\n      key{i}=value{i}\n" for i in range(70)
    )
    disks = [{"name": f"disk-{i}", "disk": {"bus": "virtio"}, "bootOrder": i + 1} for i in range(3)]
    disks.append({"name": "cloudinitdisk", "disk": {"bus": "virtio"}})
    devices: dict[str, Any] = {
        "disks": disks,
        "inputs": [{"bus": "usb", "name": "tablet", "type": "tablet"}],
        "interfaces": [
            {"name": "default", "bridge": {}, "model": "virtio", "macAddress": "52:54:00:12:34:56"},
            {"name": "storage", "bridge": {}, "model": "virtio", "macAddress": "52:54:00:12:34:57"},
        ],
    }
    if host:
        devices["hostDevices"] = [{"name": n, "deviceName": d} for n, d in host]
    volumes = [
        {"name": f"disk-{i}", "persistentVolumeClaim": {"claimName": f"{name}-disk-{i}-x1y2z"}} for i in range(3)
    ]
    volumes.append({"name": "cloudinitdisk", "cloudInitNoCloud": {"userData": user_data, "networkData": "version: 2"}})
    templates = [
        {"metadata": {"name": f"{name}-disk-{i}-x1y2z", "annotations": {"harvesterhci.io/imageId": "default/image-ab"}},
         "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "40Gi"}},
                  "volumeMode": "Block", "storageClassName": "longhorn-image-ab"}}
        for i in range(3)
    ]  # fmt: skip
    return {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"vm/{namespace}/{name}")),
            "resourceVersion": str(100000 + generation),
            "generation": generation,
            "creationTimestamp": now,
            "finalizers": [
                "harvesterhci.io/VMController.UnsetOwnerOfPVCs",
                "kubevirt.io/virtualMachineControllerFinalize",
            ],
            "labels": {"harvesterhci.io/creator": "harvester", "harvesterhci.io/os": "ubuntu"},
            "annotations": {
                "harvesterhci.io/vmRunStrategy": "RerunOnFailure",
                "harvesterhci.io/volumeClaimTemplates": json.dumps(templates),
                "harvesterhci.io/timestamp": now,
                "kubevirt.io/latest-observed-api-version": "v1",
                "kubevirt.io/storage-observed-api-version": "v1",
                "network.harvesterhci.io/ips": json.dumps(["10.52.0.17", "10.52.1.17"]),
                "harvesterhci.io/mac-address": json.dumps({"default": "52:54:00:12:34:56"}),
            },
            "managedFields": [
                _managed("harvester", now),
                _managed("virt-controller", now),
                _managed("harvester-network-controller", now),
                _managed("harvester-load-balancer", now),
                {**_managed("harvester-vm-controller", now), "subresource": "status"},
            ],
        },
        "spec": {
            "runStrategy": "RerunOnFailure",
            "template": {
                "metadata": {
                    "labels": {"harvesterhci.io/vmName": name},
                    "annotations": {"harvesterhci.io/sshNames": json.dumps([f"{namespace}/key-1"])},
                },
                "spec": {
                    "domain": {
                        "cpu": {"cores": 8, "sockets": 1, "threads": 1},
                        "memory": {"guest": "32668Mi"},
                        "resources": {"limits": {"cpu": "8", "memory": "32Gi"}},
                        "features": {"acpi": {"enabled": True}},
                        "machine": {"type": "q35"},
                        "devices": devices,
                    },
                    "evictionStrategy": "LiveMigrateIfPossible",
                    "hostname": name,
                    "networks": [
                        {"name": "default", "multus": {"networkName": f"{namespace}/vlan-10"}},
                        {"name": "storage", "multus": {"networkName": f"{namespace}/vlan-20"}},
                    ],
                    "terminationGracePeriodSeconds": 120,
                    "volumes": volumes,
                    "affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                        {"weight": 50, "preference": {"matchExpressions": [
                            {"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["zone-a"]}]}}]}},
                },
            },
        },
        "status": {
            "created": True,
            "ready": True,
            "printableStatus": "Running",
            "conditions": [
                {"type": t, "status": "True", "lastProbeTime": None, "lastTransitionTime": now}
                for t in ("Ready", "LiveMigratable", "AgentConnected", "Initialized")
            ],
            "volumeSnapshotStatuses": [{"name": v["name"], "enabled": v["name"] != "cloudinitdisk"} for v in volumes],
            "desiredGeneration": generation,
            "observedGeneration": generation,
        },
    }  # fmt: skip


def vm_update_review(name: str, namespace: str, user: str, pair: list[tuple[str, str]]) -> bytes:
    """The validating review of a UI edit that attaches `pair` (object) to a VM that had no host devices."""
    old = vm(name, namespace, [], generation=4)
    new = vm(name, namespace, pair, generation=5)
    # what the validating webhook sees: the object as the mutating webhook left it, the requester recorded
    info = base.user_info(user)
    requester = records.Requester.of(
        UserInfo(info["username"], uid=info.get("uid", ""), groups=tuple(info.get("groups", ())))
    )
    new["metadata"].setdefault("annotations", {})[records.ANNOTATION] = requester.encode()
    gvk = {"group": "kubevirt.io", "version": "v1", "kind": "VirtualMachine"}
    gvr = {"group": "kubevirt.io", "version": "v1", "resource": "virtualmachines"}
    review = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": gvk,
            "resource": gvr,
            "requestKind": gvk,
            "requestResource": gvr,
            "name": name,
            "namespace": namespace,
            "operation": "UPDATE",
            "userInfo": base.user_info(user),
            "object": new,
            "oldObject": old,
            "dryRun": False,
            "options": {"kind": "UpdateOptions", "apiVersion": "meta.k8s.io/v1", "fieldManager": "harvester"},
        },
    }
    return json.dumps(review).encode()


def claimed_pairs(objects: list[dict[str, Any]]) -> list[tuple[str, list[tuple[str, str]]]]:
    """(owner, [(name, resourceName) of the GPU and its audio function]) of every claimed group in the view."""
    devices = {o["metadata"]["name"]: o for o in objects if o["kind"] == "PCIDevice"}
    owners = {o["metadata"]["name"]: o["metadata"]["annotations"][f"{base.GROUP}/requested-by"]
              for o in objects if o["kind"] == "PCIDeviceClaim"}  # fmt: skip
    pairs = []
    for name, owner in owners.items():
        d = devices[name]
        if d["status"]["classId"] != "0302":
            continue
        audio = next(m["address"] for m in d["status"]["iommuGroupMembers"] if m["address"] != d["status"]["address"])
        audio_name = f"{d['status']['nodeName']}-{audio.replace(':', '').replace('.', '')}"
        if owners.get(audio_name) == owner:
            pairs.append((owner, [(name, d["status"]["resourceName"]),
                                  (audio_name, devices[audio_name]["status"]["resourceName"])]))  # fmt: skip
    return pairs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--claims", type=int, default=20_000)
    parser.add_argument("--vms", type=int, default=5_000, help="VMs in the view that already name devices")
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--load-processes", type=int, default=None, help="default: as bench/webhook.py")
    parser.add_argument("--warm-vms", type=int, default=300, help="distinct VMs the warm shape cycles over")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.load_processes is None:
        args.load_processes = base.default_load_processes()
    print(f"load: {args.connections} connections from {args.load_processes} process(es); {os.cpu_count()} CPUs")
    if args.quick:
        args.devices, args.claims, args.vms, args.duration = 4000, 2000, 200, 4.0
    rng = random.Random(7)
    work = Path(tempfile.mkdtemp(prefix="whvmbench"))
    sar_proc = None
    server = None
    try:
        objects, _ = base.build_view(args.devices, args.claims, rng)
        if not all(d["status"]["resourceName"].split("/")[1] == d["metadata"]["name"]
                   for d in objects if d["kind"] == "PCIDevice"):  # fmt: skip
            for d in (o for o in objects if o["kind"] == "PCIDevice"):  # per-device names (the default policy)
                d["status"]["resourceName"] = f"nvidia.com/{d['metadata']['name']}"
        pairs = claimed_pairs(objects)
        rng.shuffle(pairs)
        held, free = pairs[: args.vms], pairs[args.vms :]
        for i, (owner, pair) in enumerate(held):
            objects.append(vm(f"held-{i}", USE_NAMESPACE.format(user=owner), pair, generation=2))
        view = work / "view.jsonl"
        with view.open("w") as f:
            for obj in objects:
                f.write(json.dumps(obj) + "\n")
        warm = [vm_update_review(f"warm-{i}", USE_NAMESPACE.format(user=o), o, p)
                for i, (o, p) in enumerate(free[: args.warm_vms])]  # fmt: skip
        n_cold = int(args.rate * (args.duration + 2.5)) + 10
        cold_pairs = free[args.warm_vms : args.warm_vms + n_cold]
        cold = [
            vm_update_review(f"cold-{i}", f"{USE_NAMESPACE.format(user=o)}-{i}", o, p)
            for i, (o, p) in enumerate(cold_pairs)
        ]
        size = sum(map(len, warm)) / len(warm)
        print(f"view: {sum(o['kind'] == 'PCIDevice' for o in objects)} PCIDevices, "
              f"{sum(o['kind'] == 'PCIDeviceClaim' for o in objects)} claims, {len(held)} VMs naming devices; "
              f"review bodies {size / 1024:.1f} KiB (object + oldObject); {len(warm)} warm, {len(cold)} cold",
              flush=True)  # fmt: skip
        if len(cold) < n_cold:
            print(f"  (only {len(cold)} distinct cold reviews: later ones repeat and may hit the cache)", flush=True)
        certs.write_files(
            certs.fresh(certs.CertPolicy(dns_names=("localhost",), ip_addresses=("127.0.0.1",)),
                        datetime.datetime.now(datetime.UTC)),
            work / "certs",
        )  # fmt: skip
        sar_port = base._free_port()
        counter = multiprocessing.get_context("fork").Value("l", 0)
        sar_proc = multiprocessing.get_context("fork").Process(
            target=base._sar_server, args=(sar_port, counter), daemon=True
        )
        sar_proc.start()
        kubeconfig = work / "kubeconfig"
        kubeconfig.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "bench",
            "clusters": [{"name": "bench", "cluster": {"server": f"http://127.0.0.1:{sar_port}"}}],
            "users": [{"name": "bench", "user": {"token": "bench"}}],
            "contexts": [{"name": "bench", "context": {"cluster": "bench", "user": "bench"}}],
        }))  # fmt: skip
        t = time.perf_counter()
        server = base.start_server(work, floor=False, view=view, kubeconfig=kubeconfig, workers=None)
        print(f"server ready in {time.perf_counter() - t:.1f} s", flush=True)
        results: dict[str, Any] = {"rate": args.rate, "duration_s": args.duration, "body_bytes": size}
        for label, bodies in (("warm", warm), ("cold", cold)):
            hits0 = server.metric("pcidevices_webhook_sar_cache_total", 'result="hit"')
            miss0 = server.metric("pcidevices_webhook_sar_cache_total", 'result="miss"')
            seen0 = counter.value
            if label == "warm":
                base.load(server.port, server.cafile, bodies, 100.0, 3.0, args.connections, args.load_processes)
                hits0 = server.metric("pcidevices_webhook_sar_cache_total", 'result="hit"')
                miss0 = server.metric("pcidevices_webhook_sar_cache_total", 'result="miss"')
                seen0 = counter.value
            hist0 = server.histogram()
            r = base.load(server.port, server.cafile, bodies, args.rate, args.duration, args.connections,
                          args.load_processes)  # fmt: skip
            hist1 = server.histogram()
            in_app = {le: hist1[le] - hist0.get(le, 0.0) for le in sorted(hist1)}
            lat = r["latencies"]
            hits = server.metric("pcidevices_webhook_sar_cache_total", 'result="hit"') - hits0
            misses = server.metric("pcidevices_webhook_sar_cache_total", 'result="miss"') - miss0
            results[label] = {
                "sent": r["sent"],
                "answered": len(lat),
                "errors": len(r["errors"]),
                "p50_ms": base._percentile(lat, 0.5) * 1e3,
                "p99_ms": base._percentile(lat, 0.99) * 1e3,
                "max_ms": max(lat) * 1e3 if lat else float("nan"),
                "sar_cache_hits": hits,
                "sar_cache_misses": misses,
                "sar_requests_seen_by_fake_api": counter.value - seen0,
                "in_app_p50_le_ms": base._bucket_quantile(in_app, 0.5) * 1e3,
                "in_app_p99_le_ms": base._bucket_quantile(in_app, 0.99) * 1e3,
            }
            x = results[label]
            verdict = "meets" if x["p99_ms"] <= SLO_P99_S * 1e3 and not x["errors"] else "MISSES"
            print(f"  {label}: {args.rate:.0f}/s for {args.duration:.0f} s: p50 {x['p50_ms']:.2f} ms, "
                  f"p99 {x['p99_ms']:.2f} ms ({verdict} the {SLO_P99_S * 1e3:.0f} ms target), "
                  f"max {x['max_ms']:.1f} ms, "
                  f"errors {x['errors']}; SAR cache {hits:.0f} hits / {misses:.0f} misses "
                  f"(fake API saw {x['sar_requests_seen_by_fake_api']}); "
                  f"in the app p50 <= {x['in_app_p50_le_ms']:g} ms, p99 <= {x['in_app_p99_le_ms']:g} ms",
                  flush=True)  # fmt: skip
            if r["errors"]:
                print(f"    e.g. {r['errors'][0][:300]}", flush=True)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
        return 0
    finally:
        if server is not None:
            server.stop()
        if sar_proc is not None:
            sar_proc.terminate()
            sar_proc.join(5)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
