"""DRA on the node tier's real kubelet 1.36 (issue 18): the chart's agent serves both DRA drivers and the kubelet's
plugin watcher registers them (GetInfo, the v1 DRAPlugin service, NotifyRegistrationStatus), the DeviceClasses are
installed, and an agent in observe mode publishes no ResourceSlice."""

from __future__ import annotations

import time

import pytest

from policy import dra
from tests.node.conftest import NS, Installed, report


def _metrics(installed: Installed) -> str:
    pod = installed.pods("pcidevices-agent")[0]["metadata"]["name"]
    return installed.cp.kubectl("get", "--raw", f"/api/v1/namespaces/{NS}/pods/{pod}:8089/proxy/metrics").stdout


def test_the_kubelet_registers_both_dra_drivers(installed: Installed, pytestconfig: pytest.Config) -> None:
    started = time.monotonic()
    wanted = [f'pcidevices_agent_dra_registered{{driver="{d}"}} 1.0' for d in dra.DRIVERS]
    deadline = started + 90
    metrics = ""
    while time.monotonic() < deadline:
        metrics = _metrics(installed)
        if all(w in metrics for w in wanted):
            break
        time.sleep(1)
    assert all(w in metrics for w in wanted), [line for line in metrics.splitlines() if "dra" in line]
    report(pytestconfig, f"DRA drivers registered with the kubelet {time.monotonic() - started:.1f}s after the check")


def test_the_device_classes_are_installed_and_nothing_is_published_in_observe_mode(installed: Installed) -> None:
    classes = installed.kubectl_json("get", "deviceclasses")["items"]
    assert sorted(c["metadata"]["name"] for c in classes) == sorted(dra.DRIVERS)
    assert installed.kubectl_json("get", "resourceslices")["items"] == []
