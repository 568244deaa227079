"""Starting and stopping plugins many times leaves no threads, file descriptors or socket files behind."""

from __future__ import annotations

import os
import threading
import time

from prometheus_client import CollectorRegistry

from nodeagent.deviceplugin import manager, metrics, model
from tests.support.fake_host import FakeHost
from tests.support.fake_kubelet import FakeKubelet

RES = "nvidia.com/node1-00003b000"
GPU = model.PciDevice("0000:3b:00.0", 45, 0)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def settle(kubelet: FakeKubelet, expect_threads: int | None = None) -> None:
    """Let streams that are being cancelled finish (the kubelet side ends its watch thread asynchronously)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if kubelet.stream_ended(RES) and (expect_threads is None or threading.active_count() <= expect_threads):
            return
        time.sleep(0.01)


def test_one_hundred_plugin_start_stop_cycles_leak_no_threads_fds_or_sockets():
    host = FakeHost()
    host.bind(GPU)
    now = [0.0]
    with FakeKubelet() as kubelet:
        m = manager.PluginManager(
            plugin_dir=kubelet.plugin_dir,
            probe=host,
            counters=metrics.PluginMetrics(CollectorRegistry()),
            clock=lambda: now[0],
            sleep=lambda s: None,
        )

        def cycle() -> None:
            m.set_desired([model.PciResource(RES, (GPU,))])
            m.step()
            assert m.status()[RES].registered
            kubelet.wait_devices(RES, lambda d: len(d) == 1)
            m.set_desired([])
            m.step()
            assert m.status() == {}
            now[0] += 1

        for _ in range(5):  # warm up grpc's process-wide threads and pollers
            cycle()
        settle(kubelet)
        threads, fds = threading.active_count(), open_fds()
        for _ in range(100):
            cycle()
        settle(kubelet, threads)
        assert threading.active_count() <= threads, [t.name for t in threading.enumerate()]
        assert open_fds() <= fds + 2  # allow for a poller waking up; a leak would be ~100+
        assert os.listdir(kubelet.plugin_dir) == ["kubelet.sock"]
        m.close()
