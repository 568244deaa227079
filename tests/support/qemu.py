"""Boot the kernel-tier guest (scripts/prepare-kernel) with a chosen device set and run one Python script in it.

The guest is a q35 machine with an emulated Intel IOMMU under TCG (docs/kernel.md: no usable KVM here); the
repository is shared read-only over virtio-9p at /repo, so the script runs the project's real code against a real
kernel. The script reports through its stdout on the serial console: `emit(obj)` (tests/support/guest.py) prints one
marker line with a JSON object, and the guest's init prints one `PCIDEVICES-GUEST PASS|FAIL` line when it exits.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RESULT_MARK = "PCIDEVICES-RESULT "
VERDICT_MARK = "PCIDEVICES-GUEST "
QEMU = "qemu-system-x86_64"


@dataclass(frozen=True)
class GuestImage:
    kernel: Path
    initramfs: Path
    kernel_version: str


@dataclass(frozen=True)
class Disk:
    """A raw disk image, created empty (sparse) for each run, as qemu drive `id` (devices refer to it)."""

    id: str
    size_mib: int


@dataclass(frozen=True)
class DeviceSet:
    devices: tuple[str, ...]
    disks: tuple[Disk, ...] = ()


@dataclass
class GuestRun:
    passed: bool
    verdict: str
    results: list[dict[str, Any]]
    output: str
    seconds: float
    returncode: int | None
    extra: dict[str, Any] = field(default_factory=dict)

    def result(self) -> dict[str, Any]:
        """The single JSON object the script emitted (merged if it emitted several)."""
        merged: dict[str, Any] = {}
        for r in self.results:
            merged.update(r)
        return merged


def find_image(cache_dir: Path) -> GuestImage | None:
    """The guest prepared by scripts/prepare-kernel under `cache_dir` (…/pcidevices/kernel), or None."""
    try:
        info = json.loads((cache_dir / "current.json").read_text())
    except (OSError, ValueError):
        return None
    d = Path(info["dir"])
    kernel, initramfs = d / "vmlinuz", d / "initramfs.cpio"
    if not (kernel.is_file() and initramfs.is_file() and (d / "ready").is_file()):
        return None
    return GuestImage(kernel, initramfs, str(info.get("kernel_version", "")))


def missing_tools() -> list[str]:
    return [t for t in (QEMU,) if shutil.which(t) is None]


def standard_devices() -> DeviceSet:
    """docs/kernel.md's set: two e1000e on their own root ports, a PCIe-to-PCI bridge with two e1000, an NVMe
    disk on its own root port (for a mounted filesystem), qemu-xhci with a keyboard and a tablet (same ids) and a
    USB stick. q35 adds the ICH9 LPC/SATA/SMBus functions by itself."""
    return DeviceSet(
        devices=(
            "pcie-root-port,id=rp1,chassis=1,bus=pcie.0",
            "e1000e,bus=rp1,mac=52:54:00:00:00:01",
            "pcie-root-port,id=rp2,chassis=2,bus=pcie.0",
            "e1000e,bus=rp2,mac=52:54:00:00:00:02",
            "pcie-pci-bridge,id=pb,bus=pcie.0",
            "e1000,bus=pb,addr=1,mac=52:54:00:00:00:03",
            "e1000,bus=pb,addr=2,mac=52:54:00:00:00:04",
            "pcie-root-port,id=rp3,chassis=3,bus=pcie.0",
            "nvme,bus=rp3,serial=pcidevices0,drive=data",
            "qemu-xhci,id=xhci,bus=pcie.0",
            "usb-kbd,bus=xhci.0",
            "usb-tablet,bus=xhci.0",
            "usb-storage,bus=xhci.0,drive=stick",
        ),
        disks=(Disk("data", 64), Disk("stick", 8)),
    )


def command(
    image: GuestImage,
    repo: Path,
    devices: DeviceSet,
    script: str,
    workdir: Path,
    guest_timeout: int,
    *,
    memory_mib: int = 1024,
    extra: Sequence[str] = (),
) -> list[str]:
    """The qemu command line (pure apart from the disk paths under `workdir`); `extra` is appended as given (a NIC,
    another shared folder: tests/support/guestnode.py)."""
    append = " ".join(
        [
            "console=ttyS0",
            "intel_iommu=on",
            "iommu=pt",
            "panic=-1",
            "loglevel=3",
            f"pcidevices.script={script}",
            f"pcidevices.timeout={guest_timeout}",
        ]
    )
    cmd = [
        QEMU,
        "-machine", "q35,kernel-irqchip=split",
        "-accel", "tcg",
        "-m", str(memory_mib),
        "-smp", "2",
        "-nodefaults", "-display", "none", "-no-reboot", "-monitor", "none",
        "-serial", "stdio",
        "-device", "intel-iommu,intremap=on",
        "-kernel", str(image.kernel),
        "-initrd", str(image.initramfs),
        "-append", append,
        "-fsdev", f"local,id=repo,path={repo},security_model=none,readonly=on",
        "-device", "virtio-9p-pci,fsdev=repo,mount_tag=repo,bus=pcie.0",
    ]  # fmt: skip
    for disk in devices.disks:
        cmd += ["-drive", f"if=none,id={disk.id},format=raw,file={workdir / (disk.id + '.img')}"]
    for dev in devices.devices:
        cmd += ["-device", dev]
    return cmd + list(extra)


def run_guest(
    image: GuestImage,
    repo: Path,
    script: str,
    *,
    devices: DeviceSet | None = None,
    guest_timeout: int = 120,
    boot_allowance: int = 120,
) -> GuestRun:
    """Boot, run `script` (a path relative to the repository) in the guest, power off; bounded in time."""
    devices = devices or standard_devices()
    with tempfile.TemporaryDirectory(prefix="pcidevices-qemu-") as tmp:
        workdir = Path(tmp)
        for disk in devices.disks:
            with open(workdir / f"{disk.id}.img", "wb") as f:
                f.truncate(disk.size_mib << 20)
        cmd = command(image, repo, devices, script, workdir, guest_timeout)
        start = time.monotonic()
        try:
            done = subprocess.run(
                cmd,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=guest_timeout + boot_allowance,
                check=False,
                env={**os.environ, "LC_ALL": "C"},
            )
            out, rc = done.stdout + done.stderr, done.returncode
        except subprocess.TimeoutExpired as e:
            out = (e.stdout or b"") + (e.stderr or b"") + b"\nhost: qemu timed out and was killed\n"
            rc = None
        seconds = time.monotonic() - start
    text = out.decode("utf-8", "replace").replace("\r\n", "\n").replace("\r", "\n")
    return parse(text, seconds, rc)


def parse(text: str, seconds: float, returncode: int | None) -> GuestRun:
    results: list[dict[str, Any]] = []
    verdicts: list[str] = []
    for line in text.splitlines():
        if RESULT_MARK in line:
            payload = line.split(RESULT_MARK, 1)[1]
            try:
                results.append(json.loads(payload))
            except ValueError:
                verdicts.append("FAIL bad result line")
        elif line.startswith(VERDICT_MARK):
            verdicts.append(line[len(VERDICT_MARK) :].strip())
    verdict = verdicts[-1] if verdicts else "none (no PASS/FAIL line)"
    return GuestRun(verdict == "PASS" and len(verdicts) == 1, verdict, results, text, seconds, returncode)


def tail(text: str, lines: int = 60) -> str:
    return "\n".join(text.splitlines()[-lines:])


def default_cache() -> Path:
    return Path(os.environ.get("PCIDEVICES_CACHE", str(Path.home() / ".cache" / "pcidevices"))) / "kernel"
