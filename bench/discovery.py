"""Discovery benchmark: the agent's scan next to `lspci` on the same trees.

    .venv/bin/python bench/discovery.py [--functions 1000] [--usb 200] [--repeat 21] [--no-recording] [--python-only]
                                        [--cpu N]

Builds (1) a synthetic tree with N PCI functions spread over IOMMU groups behind bridges, and M USB devices, and
(2) the recorded HPE server (tests/fixtures/umockdev/hpe-proliant-all.umockdev) materialised as a plain tree
through one umockdev replay. For each tree it reports, as medians over interleaved runs: the in-process PCI scan
(`scan_pci` + objects, names database already loaded), the full discovery (PCI, USB, host-critical), the
whole-process time of `lspci -A linux-sysfs -O sysfs.path=<tree>/sys/bus/pci -nnDk`, their ratios; the names
database load time; and the scan's added memory (tracemalloc peak).
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from nodeagent import discovery  # noqa: E402
from nodeagent.hostcritical import HostCritical  # noqa: E402
from nodeagent.idsdb import NamesDatabases  # noqa: E402
from nodeagent.sysfs import pci  # noqa: E402
from nodeagent.sysfs.pci import scan_pci  # noqa: E402
from nodeagent.sysfs.root import SysfsRoot  # noqa: E402
from tests.support.sysfs_tree import SysfsTree  # noqa: E402

# (vendor, device, class) of the functions the synthetic server is made of: GPUs with audio, NICs, NVMe.
MODELS = [
    ("10de", "20b0", "030200"),
    ("10de", "1aef", "040300"),
    ("8086", "1572", "020000"),
    ("144d", "a808", "010802"),
]


def build_large_tree(base: Path, functions: int, usb: int) -> SysfsTree:
    """`functions` endpoint functions, four per slot and IOMMU group, each slot behind its own root-port bridge."""
    tree = SysfsTree(base)
    made = 0
    slot = 0
    while made < functions:
        domain, bus = divmod(slot, 250)
        port = f"{domain:04x}:00:{(slot % 32):02x}.{(slot // 32) % 8}"
        if port in tree._pci_paths:
            port = f"{domain:04x}:01:{(slot % 32):02x}.{(slot // 32) % 8}"
        group = slot + 10
        tree.pci(port, vendor="8086", device="2f02", cls="060400", header_type=0x81, secondary_bus=bus + 2,
                 driver="pcieport", iommu_group=group, numa_node=slot % 2)
        for fn in range(min(4, functions - made)):
            vendor, device, cls = MODELS[fn]
            tree.pci(f"{domain:04x}:{bus + 2:02x}:00.{fn}", vendor=vendor, device=device, cls=cls, parent=port,
                     driver="vfio-pci" if fn == 0 else None, iommu_group=group, numa_node=slot % 2)
            made += 1
        slot += 1
    tree.pci("0000:ff:14.0", vendor="8086", device="a36d", cls="0c0330", driver="xhci_hcd", iommu_group=9)
    for n in range(usb):
        bus, port = divmod(n, 100)
        tree.usb(f"{bus + 1}-{port + 1}", vendor="0951", product="1666", devnum=port + 2, controller="0000:ff:14.0",
                 serial=f"SN{n:05d}")
    return tree


def materialise_recording(recording: Path, dest: Path) -> Path:
    """The recorded server's /sys as a plain tree (one umockdev replay copies its testbed; drivers completed)."""
    script = (
        f'mkdir -p {dest} && cp -a "$UMOCKDEV_DIR/sys" {dest}/ && {sys.executable} -c '
        f'"import sys; sys.path.insert(0, \'{REPO}/tests/replay\'); import collect, pathlib; '
        f'collect.complete_driver_directories(pathlib.Path(\'{dest}\'))"'
    )
    subprocess.run(["umockdev-run", "-d", str(recording), "--", "sh", "-c", script], check=True)
    return dest


def _timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one call; CPU counts this process and any child it waited for."""
    wall, cpu = time.perf_counter(), time.process_time()
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    fn()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    child = (after.ru_utime - kids.ru_utime) + (after.ru_stime - kids.ru_stime)
    return time.perf_counter() - wall, time.process_time() - cpu + child


def measure(name: str, base: Path, db: NamesDatabases, repeat: int) -> dict[str, float]:
    root = SysfsRoot(base)
    lspci = ["lspci", "-A", "linux-sysfs", "-O", f"sysfs.path={base}/sys/bus/pci", "-nnDk"]

    def pci_scan() -> object:
        fns = scan_pci(root)
        return discovery.build_inventory(fns, [], HostCritical(), db, "bench")

    def full() -> object:
        return discovery.discover(root, db, "bench")

    def run_lspci() -> object:
        return subprocess.run(lspci, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)

    for f in (pci_scan, full, run_lspci):  # warm the page and dentry caches once
        f()
    samples: dict[str, list[float]] = {k: [] for k in ("scan", "full", "lspci", "scan_cpu", "full_cpu", "lspci_cpu")}
    for _ in range(repeat):
        for key, fn in (("lspci", run_lspci), ("scan", pci_scan), ("full", full)):
            wall, cpu = _timed(fn)
            samples[key].append(wall)
            samples[key + "_cpu"].append(cpu)
    tracemalloc.start()
    pci_scan()
    _, peak_scan = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    tracemalloc.start()
    full()
    _, peak_full = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    med = {k: statistics.median(v) for k, v in samples.items()}
    low = {k: min(v) for k, v in samples.items()}
    # Each round runs lspci and then the scan back to back, so a round's own ratio sees the same load on the shared
    # machine; the median of those is the steadier figure when the load changes between rounds.
    paired = {
        k: statistics.median(a / b for a, b in zip(samples[k], samples["lspci"], strict=True)) for k in ("scan", "full")
    }
    functions = len(scan_pci(root))
    print(f"== {name}: {functions} PCI functions (bridges included), {repeat} interleaved rounds ==")
    for key, label in (("scan", "in-process PCI scan"), ("full", "full discovery"), ("lspci", "lspci -nnDk process")):
        print(
            f"  {label:24} median wall {med[key] * 1000:8.2f} ms (ratio {med[key] / med['lspci']:.2f}),"
            f" CPU {med[key + '_cpu'] * 1000:8.2f} ms (ratio {med[key + '_cpu'] / med['lspci_cpu']:.2f});"
            f" best CPU {low[key + '_cpu'] * 1000:7.2f} ms (ratio {low[key + '_cpu'] / low['lspci_cpu']:.2f})"
        )
    print(f"  {'per-round ratio':24} median scan/lspci {paired['scan']:.2f}, full/lspci {paired['full']:.2f}")
    mib = 2**20
    print(f"  {'added memory (peak)':24} scan {peak_scan / mib:.2f} MiB, full discovery {peak_full / mib:.2f} MiB")
    return {**med, "paired_scan": paired["scan"], "peak_scan": peak_scan, "peak_full": peak_full}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--functions", type=int, default=1000)
    parser.add_argument("--usb", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=21)
    parser.add_argument("--no-recording", action="store_true", help="skip the recorded server (needs umockdev)")
    parser.add_argument(
        "--python-only", action="store_true", help="scan without the C accelerator (the path used where none is built)"
    )
    parser.add_argument(
        "--cpu", type=int, default=None, help="CPU that runs both the scan and lspci (default: the first allowed)"
    )
    parser.add_argument("--recording", type=Path, default=REPO / "tests/fixtures/umockdev/hpe-proliant-all.umockdev")
    args = parser.parse_args()
    # lspci inherits the pin: both sides run on one CPU, so a busy neighbour on the other CPU cannot favour either.
    cpu = args.cpu if args.cpu is not None else min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    if args.python_only:
        pci.ACCELERATOR = None
    accel = "C accelerator" if pci.ACCELERATOR is not None else "Python path only"
    print(f"pinned to CPU {cpu}; PCI scan: {accel}")
    logging.disable(logging.WARNING)  # synthetic trees have no root filesystem to trace; that warning is noise here
    if shutil.which("lspci") is None:
        print("bench: lspci not found (scripts/setup installs pciutils)", file=sys.stderr)
        return 2
    loads = []
    for _ in range(5):
        start = time.perf_counter()
        db = NamesDatabases.load()
        loads.append(time.perf_counter() - start)
    print(f"names databases (pci.ids + usb.ids) load: median {statistics.median(loads) * 1000:.1f} ms")
    with tempfile.TemporaryDirectory(prefix="pcid-bench-") as tmp:
        start = time.perf_counter()
        large = build_large_tree(Path(tmp) / "large", args.functions, args.usb)
        print(f"built synthetic tree in {time.perf_counter() - start:.1f} s")
        result = measure(f"synthetic ({args.functions} functions, {args.usb} USB devices)", large.base, db, args.repeat)
        if not args.no_recording and shutil.which("umockdev-run") and args.recording.exists():
            rec = materialise_recording(args.recording, Path(tmp) / "recorded")
            measure("recorded HPE ProLiant", rec, db, args.repeat)
    ratio = result["scan"] / result["lspci"]
    ok = ratio <= 0.5 and result["peak_scan"] <= 10 * 2**20
    print(
        f"target (scan <= 0.5 x lspci by the ratio of medians, <= 10 MiB): {'met' if ok else 'NOT met'}"
        f" (ratio {ratio:.2f}, per-round {result['paired_scan']:.2f}, {result['peak_scan'] / 2**20:.2f} MiB)"
    )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
