"""The pieces the guest-node scenarios share (tests/node/test_passthrough_handoff.py, tests/node/test_dra.py): a
step-by-step record whose failed steps fail only the tests that judge them, polling, and vfio-check, the static program
that opens a device as QEMU does."""

from __future__ import annotations

import json
import subprocess
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.guestcluster import GuestCluster

REPO = Path(__file__).resolve().parents[2]
CHECK_DIR = "/node/check"  # in the guest: the share's check/ folder (tests/support/guestnode.py)


class Record(dict[str, Any]):
    """What the scenario saw, by step; `errors` holds the traceback of a step that failed (the rest still runs)."""

    def step(self, name: str) -> Callable[[Callable[[], None]], Callable[[], None]]:
        def run(fn: Callable[[], None]) -> Callable[[], None]:
            started = time.monotonic()
            try:
                fn()
            except Exception:
                self.setdefault("errors", {})[name] = traceback.format_exc()
            self.setdefault("step_s", {})[name] = round(time.monotonic() - started, 1)
            return fn

        return run


def needs(rec: Record, *steps: str) -> None:
    """Fail (with the step's traceback) when a step this test judges did not complete."""
    for s in steps:
        if s in rec.get("errors", {}):
            pytest.fail(f"step {s!r} failed:\n{rec['errors'][s]}")


def wait(what: str, check: Callable[[], Any], timeout: float, step: float = 0.1) -> tuple[Any, float]:
    """(check()'s first truthy value, seconds it took); AssertionError after `timeout`."""
    started = time.monotonic()
    while True:
        value = check()
        if value:
            return value, time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what}: not within {timeout}s (last: {value!r})")
        time.sleep(step)


def driver(cluster: GuestCluster, address: str) -> str:
    """The guest's driver of PCI function `address`, "" for none."""
    got = cluster.node.exec("readlink", f"/sys/bus/pci/devices/{address}/driver", check=False)
    return got.stdout.strip().rsplit("/", 1)[-1] if got.rc == 0 else ""


def container_log(cluster: GuestCluster, namespace: str, pod: str) -> str:
    """The CRI log of the pod's `compute` container, read in the guest."""
    return cluster.node.exec(
        "sh", "-c", f"cat /var/log/pods/{namespace}_{pod}_*/compute/*.log", check=False
    ).stdout  # fmt: skip


def running(cluster: GuestCluster, namespace: str, pod: str) -> Callable[[], dict[str, Any] | None]:
    """For wait(): the pod once Running; an AssertionError with its status and log once it ended instead."""

    def check() -> dict[str, Any] | None:
        p: dict[str, Any] = cluster.kubectl_json("get", "pod", "-n", namespace, pod)
        if p["status"].get("phase") in ("Failed", "Succeeded"):
            raise AssertionError(f"the launcher ended: {json.dumps(p['status'])[-2000:]}\n"
                                 f"{container_log(cluster, namespace, pod)}")  # fmt: skip
        return p if p["status"].get("phase") == "Running" else None

    return check


def check_report(log: str) -> dict[str, Any] | None:
    """The JSON line vfio-check printed (CRI log lines: `<time> stdout F <text>`)."""
    for line in log.splitlines():
        if "VFIO-CHECK " in line:
            parsed: dict[str, Any] = json.loads(line.split("VFIO-CHECK ", 1)[1])
            return parsed
    return None


def build_check(cluster: GuestCluster) -> None:
    """vfio-check built static here (once per work folder) and put into the share (the guest runs it from there)."""
    out = cluster.workdir / "vfio-check"
    if not out.exists():
        subprocess.run(["gcc", "-static", "-O2", "-Wall", "-o", str(out), str(REPO / "tests/node/guest/vfio_check.c")],
                       check=True, capture_output=True)  # fmt: skip
    cluster.node.put(out, "check/vfio-check")
