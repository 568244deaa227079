"""The node agent against a real kube-apiserver (the cluster tier's binaries), on simulated hosts.

    .venv/bin/python bench/agent.py [--devices 24] [--rounds 4] [--idle-seconds 60] [--rss-devices 1000]

Prints:
- claim -> status.passthroughEnabled latency, p50/p99 (agent in-process, fake tree + simulated kernel; each claim is
  created by a separate client and timed until the status is visible to that client) — target p99 <= 1 s;
- API writes of an idle node, counted over a bounded window with a reconcile pass every 5 s (60 times more often than
  the default resync) and extrapolated to one hour — target 0;
- RSS of a separate agent process whose node has `--rss-devices` PCI functions (fake tree; every device object
  created through the real API server, then passes until idle) — target <= 80 MiB.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from typing import TYPE_CHECKING, Any  # noqa: E402

import apiclient.client  # noqa: E402
from policy import names  # noqa: E402

if TYPE_CHECKING:
    from tests.support.controlplane import ControlPlane

NAMESPACE = "kubevirt-bench"


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def until(ok: Callable[[], bool], timeout: float = 60.0, every: float = 0.002) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ok():
            return True
        time.sleep(every)
    return False


def setup_cluster(cp: ControlPlane) -> apiclient.client.Client:
    from tests.support.agent_env import kubevirt_cr

    cp.kubectl("apply", "-f", str(REPO / "crds"))
    cp.kubectl("apply", "-f", str(REPO / "tests" / "fixtures" / "crds"))
    cp.wait_for("--for=condition=Established", "crd", "--all")
    api = apiclient.client.Client.connect(cp.admin_kubeconfig)
    api.create(apiclient.NAMESPACES, {"metadata": {"name": NAMESPACE}})
    api.create(apiclient.KUBEVIRTS, kubevirt_cr(), namespace=NAMESPACE)
    return api


def add_node(api: apiclient.client.Client, node: str) -> None:
    api.create(apiclient.NODES, {"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}})


def bench_latency_and_idle(
    cp: ControlPlane, api: apiclient.client.Client, devices: int, rounds: int, idle_s: float
) -> None:
    from tests.support.agent_env import build_agent, pci_claim
    from tests.support.simhost import SimHost

    node = "bench-latency"
    add_node(api, node)
    base = Path(tempfile.mkdtemp(prefix="agentbench"))
    host = SimHost(base)
    addresses = [f"0000:00:{2 + i:02x}.0" for i in range(devices)]
    for i, a in enumerate(addresses):
        host.pci(a, native="e1000e", group=10 + i)
    agent = build_agent(
        host,
        apiclient.client.Client.connect(cp.admin_kubeconfig),
        node,
        kubevirt_namespace=NAMESPACE,
        namespace=NAMESPACE,
        resync_s=3600.0,
    )
    agent.start()
    try:
        selector = f"{names.LABEL_NODENAME}={node}"
        until(lambda: len(api.list(apiclient.PCIDEVICES, label_selector=selector).items) == devices + 1, timeout=120)
        latencies: list[float] = []
        for _ in range(rounds):
            for a in addresses:
                name = names.pcidevice_name(node, a)
                started = time.monotonic()
                api.create(apiclient.PCIDEVICECLAIMS, pci_claim(node, a))
                ok = until(
                    lambda n=name: bool(  # type: ignore[misc]
                        (api.get(apiclient.PCIDEVICECLAIMS, n).get("status") or {}).get("passthroughEnabled")
                    )
                )
                if not ok:
                    raise SystemExit(f"claim {name} never enabled")
                latencies.append(time.monotonic() - started)
            for a in addresses:
                api.delete(apiclient.PCIDEVICECLAIMS, names.pcidevice_name(node, a))
            until(lambda: not api.list(apiclient.PCIDEVICECLAIMS).items, timeout=120, every=0.05)
            until(lambda: all(host.sim.driver(a) == "e1000e" for a in addresses), timeout=60, every=0.05)
        med, p99 = statistics.median(latencies), pct(latencies, 99)
        print(
            f"claim -> passthroughEnabled          n={len(latencies):<4} p50 {med * 1e3:7.1f} ms   "
            f"p99 {p99 * 1e3:7.1f} ms   max {max(latencies) * 1e3:7.1f} ms   (target p99 <= 1000 ms)"
        )

        # Idle: half the devices claimed, everything converged; count writes over the window.
        for a in addresses[: devices // 2]:
            api.create(apiclient.PCIDEVICECLAIMS, pci_claim(node, a))
        until(
            lambda: all(
                (api.get(apiclient.PCIDEVICECLAIMS, names.pcidevice_name(node, a)).get("status") or {}).get(
                    "passthroughEnabled"
                )
                for a in addresses[: devices // 2]
            ),
            every=0.05,
        )
        time.sleep(3)
        before, passes = agent.api.writes, agent.runner.stats.passes
        deadline = time.monotonic() + idle_s
        while time.monotonic() < deadline:
            agent.runner.nudge()
            time.sleep(5)
        writes = agent.api.writes - before
        npasses = agent.runner.stats.passes - passes
        print(
            f"idle API writes                      {writes} in {idle_s:.0f} s over {npasses} passes "
            f"({devices + 1} devices, {devices // 2} claimed) -> extrapolated {writes * 3600 / idle_s:.0f} per hour "
            "(target 0)"
        )
    finally:
        agent.stop(timeout=1.0)


def rss_tree(ndev: int) -> Path:
    """A fake sysfs tree with `ndev` PCI functions (one the boot disk's NVMe), built here and not in the RSS child:
    the agent in a pod never builds trees, and the builder's interned path parts cost the child ~1.3 MiB."""
    from tests.support.sysfs_tree import SysfsTree

    base = Path(tempfile.mkdtemp(prefix="agentrss"))
    tree = SysfsTree(base)
    tree.pci("0000:00:1f.0", driver="nvme", iommu_group=0, vendor="144d", device="a808", cls="010802")
    tree.disk("nvme0n1", pci="0000:00:1f.0", partitions=(1,), subpath="nvme/nvme0")
    tree.mount("nvme0n1p1", "/")
    for i in range(ndev - 1):
        bus, rest = divmod(i, 256)
        dev, fn = divmod(rest, 8)
        tree.pci(f"0000:{0x10 + bus:02x}:{dev:02x}.{fn}", driver="e1000e", iommu_group=1 + i)
    return base


def rss_child(tree: Path, kubeconfig: Path, node: str, ndev: int) -> dict[str, Any]:
    """bench/agent_rss.py on `tree`'s code (this checkout or an older worktree), a fresh fake tree of `ndev`
    functions; its JSON line."""
    sysfs = rss_tree(ndev)
    try:
        proc = subprocess.run(
            [sys.executable, str(REPO / "bench" / "agent_rss.py"), str(tree), str(kubeconfig), node, str(ndev),
             str(sysfs)],
            capture_output=True, text=True, timeout=900, check=False, cwd=tree, env={**os.environ, "PYTHONPATH": ""},
        )  # fmt: skip
    finally:
        shutil.rmtree(sysfs, ignore_errors=True)
    if proc.returncode != 0:
        raise SystemExit(f"agent RSS child of {tree} failed: {proc.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def json_kubeconfig(cp: ControlPlane) -> Path:
    """The admin kubeconfig as JSON: the agent reads it without PyYAML, as an agent in a pod reads no kubeconfig."""
    import yaml

    path = Path(tempfile.mkdtemp(prefix="agentrss-kc")) / "kubeconfig.json"
    path.write_text(json.dumps(yaml.safe_load(cp.admin_kubeconfig.read_text())))
    return path


def bench_rss(cp: ControlPlane, api: apiclient.client.Client, ndev: int) -> None:
    node = "bench-rss"
    add_node(api, node)
    r = rss_child(REPO, json_kubeconfig(cp), node, ndev)
    objects = len(api.list(apiclient.PCIDEVICES, label_selector=f"{names.LABEL_NODENAME}={node}").items)
    print(
        f"agent RSS with {r['devices']} devices           {r['vm_rss_kib'] / 1024:.1f} MiB now, "
        f"{r['vm_hwm_kib'] / 1024:.1f} MiB peak  ({objects} objects created, first pass {r['first_pass_s']} s, "
        f"{r['passes']} passes, {r['failures']} failed) (target <= 80 MiB)"
    )


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--devices", type=int, default=24)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--idle-seconds", type=float, default=60.0)
    p.add_argument("--rss-devices", type=int, default=1000)
    args = p.parse_args()
    from tests.support.controlplane import Binaries, ControlPlane

    binaries = Binaries.locate(REPO)
    with ControlPlane(binaries, Path(tempfile.mkdtemp(prefix="agentbench-cp"))) as cp:
        api = setup_cluster(cp)
        bench_latency_and_idle(cp, api, args.devices, args.rounds, args.idle_seconds)
        bench_rss(cp, api, args.rss_devices)


if __name__ == "__main__":
    main()
