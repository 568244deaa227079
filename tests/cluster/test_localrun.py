"""`scripts/run`, the README's first command, as a newcomer uses it: start it, see the devices of both nodes, claim a
simulated device, see passthroughEnabled, attach it to a VirtualMachine, press Ctrl-C, and nothing is left running;
and `scripts/run --pooled`, where two simulated nodes share a GPU model and a VM is pinned to its pool's node."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from devcluster.__main__ import READY
from tests.support.controlplane import Binaries

REPO = Path(__file__).resolve().parents[2]
SIM = "sim-node-1"
SIM2 = "sim-node-2"
GPU = f"{SIM}-000000030"
GPU2 = f"{SIM2}-000000030"
Kubectl = Callable[..., subprocess.CompletedProcess[str]]


def _leftovers(marker: str) -> list[str]:
    """Processes whose command line or environment mentions `marker` (the run's state directory)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            text = (entry / "cmdline").read_bytes() + (entry / "environ").read_bytes()
        except OSError:
            continue
        if marker.encode() in text:
            found.append(f"{entry.name}: {(entry / 'cmdline').read_bytes()[:120]!r}")
    return found


@contextlib.contextmanager
def _local_run(binaries: Binaries, run_dir: Path, *args: str) -> Iterator[tuple[Kubectl, str]]:
    """`scripts/run *args` until its ready line; yields (kubectl, alice's --kubeconfig value); then Ctrl-C, and
    nothing may be left running."""
    env = {**os.environ, "PCIDEVICES_RUN_DIR": str(run_dir), "PCIDEVICES_SIM_NODE": SIM}
    proc = subprocess.Popen(
        [str(REPO / "scripts" / "run"), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    lines: list[str] = []
    stdout = proc.stdout
    assert stdout is not None
    reader = threading.Thread(target=lambda: lines.extend(iter(stdout.readline, "")), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 300
        while READY not in "".join(lines) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        out = "".join(lines)
        assert READY in out, out
        kubeconfig = next(x.split("=", 1)[1] for x in out.splitlines() if x.startswith("export KUBECONFIG="))
        alice = next(x.split("=", 2)[2].split()[0] for x in out.splitlines() if x.startswith("ALICE="))

        def kubectl(*a: str, config: str = kubeconfig, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [str(binaries.kubectl), f"--kubeconfig={config}", *a], input=stdin, capture_output=True, text=True,
                timeout=60,
            )  # fmt: skip

        yield kubectl, alice
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does to the foreground process group
        assert proc.wait(90) == 0
        reader.join(5)
        assert "nothing left running" in "".join(lines)
        assert _leftovers(str(run_dir)) == []
    finally:
        if proc.poll() is None:  # a failed assertion above: stop it the way a user would, then for sure
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        reader.join(5)
        stdout.close()


def _until_enabled(kubectl: Kubectl, claim_name: str) -> None:
    def enabled() -> bool:
        claim = json.loads(kubectl("get", "pcideviceclaim", claim_name, "-o", "json").stdout or "{}")
        return bool((claim.get("status") or {}).get("passthroughEnabled"))

    until = time.monotonic() + 60
    while not enabled() and time.monotonic() < until:
        time.sleep(0.5)
    assert enabled()


def _apply_vm(kubectl: Kubectl, alice: str, vm: str) -> None:
    """Until the cluster controller has claimed the GPU's audio sibling for alice (after its grace period), the VM is
    refused for an incomplete IOMMU group; then it is accepted."""
    until = time.monotonic() + 90
    while (applied := kubectl("apply", "-f", "-", config=alice, stdin=vm)).returncode != 0:
        assert "complete IOMMU groups" in applied.stderr, applied.stderr
        assert time.monotonic() < until, applied.stderr
        time.sleep(1)


def test_the_local_run_shows_both_nodes_enables_a_simulated_claim_and_stops_cleanly_on_ctrl_c(
    binaries: Binaries, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    with _local_run(binaries, run_dir) as (kubectl, alice):
        devices = json.loads(kubectl("get", "pcidevices", "-o", "json").stdout)["items"]
        nodes = {d["status"]["nodeName"] for d in devices}
        assert SIM in nodes and len(nodes) == 2, nodes  # the simulated node and this machine
        created = kubectl("create", "-f", str(run_dir / "examples" / "claim-gpu.yaml"), config=alice)
        assert created.returncode == 0, created.stderr
        _until_enabled(kubectl, GPU)
        resource = kubectl("get", "pcidevice", GPU, "-o", "jsonpath={.status.resourceName}").stdout
        _apply_vm(kubectl, alice, (run_dir / "examples" / "vm.yaml").read_text().replace("RESOURCE_NAME", resource))
        assert kubectl("get", "vm", "-n", "vms", "gpu-vm").returncode == 0


def test_the_pooled_local_run_pools_two_nodes_gpus_and_pins_a_vm_to_its_pools_node(
    binaries: Binaries, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    with _local_run(binaries, run_dir, "--pooled") as (kubectl, alice):
        names = {n: kubectl("get", "pcidevice", n, "-o", "jsonpath={.status.resourceName}").stdout for n in (GPU, GPU2)}
        assert names[GPU] == names[GPU2] and "-" not in names[GPU].partition("/")[2], names  # one pooled name
        created = kubectl("create", "-f", str(run_dir / "examples" / "claim-gpu-2.yaml"), config=alice)
        assert created.returncode == 0, created.stderr
        _until_enabled(kubectl, GPU2)
        _apply_vm(kubectl, alice, (run_dir / "examples" / "vm.yaml").read_text().replace("RESOURCE_NAME", names[GPU]))
        affinity = json.loads(kubectl("get", "vm", "-n", "vms", "gpu-vm", "-o",
                                      "jsonpath={.spec.template.spec.affinity}").stdout)  # fmt: skip
        terms = affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        assert all({"key": "metadata.name", "operator": "In", "values": [SIM2]} in t["matchFields"] for t in terms)
        repin = (run_dir / "examples" / "repin.yaml").read_text()
        moved = kubectl("-n", "vms", "patch", "vm", "gpu-vm", "--type=merge", "-p", repin, config=alice)
        assert moved.returncode != 0 and f'on node "{SIM}"' in moved.stderr, moved.stderr
