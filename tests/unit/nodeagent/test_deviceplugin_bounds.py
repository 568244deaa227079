"""A device plugin's socket against a hostile local client: extra watch streams, raw connections that never speak
HTTP/2, and a flood of connections; the kubelet's Allocate keeps working (real gRPC, fake kubelet)."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator

import grpc
import pytest
from prometheus_client import CollectorRegistry

from nodeagent.deviceplugin import manager, metrics, model, registration
from nodeagent.deviceplugin._pb import api_pb2, api_pb2_grpc
from tests.support.fake_host import FakeHost
from tests.support.fake_kubelet import FakeKubelet

GPU = model.PciDevice("0000:3b:00.0", 45, 0)
PCI_RES = "nvidia.com/node1-00003b000"


@pytest.fixture
def plugin() -> Iterator[tuple[FakeKubelet, str]]:
    host = FakeHost()
    host.bind(GPU)
    with FakeKubelet() as kubelet:
        plugins = manager.PluginManager(
            plugin_dir=kubelet.plugin_dir,
            probe=host,
            counters=metrics.PluginMetrics(CollectorRegistry()),
            clock=time.monotonic,
            tick_s=0.02,
            health_interval_s=60.0,
            register_timeout_s=2.0,
        )
        stop = threading.Event()
        thread = threading.Thread(target=plugins.run, args=(stop,), name="plugin-manager")
        thread.start()
        try:
            plugins.set_desired([model.PciResource(PCI_RES, (GPU,))])
            kubelet.wait_devices(PCI_RES, lambda d: len(d) == 1)
            yield kubelet, os.path.join(kubelet.plugin_dir, registration.socket_name(PCI_RES))
        finally:
            stop.set()
            plugins.wake()
            thread.join(10)


def _allocate(kubelet: FakeKubelet) -> None:
    resp = kubelet.allocate(PCI_RES, [GPU.address])
    assert dict(resp.container_responses[0].envs)


def test_watch_streams_beyond_the_kubelets_are_refused_and_allocate_still_answers(
    plugin: tuple[FakeKubelet, str],
) -> None:
    kubelet, path = plugin
    channels = [grpc.insecure_channel(f"unix://{path}") for _ in range(4)]
    streams = [api_pb2_grpc.DevicePluginStub(c).ListAndWatch(api_pb2.Empty()) for c in channels]
    try:
        codes = []
        for stream in streams:
            try:
                next(stream)
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as e:
                codes.append(e.code())
        # the kubelet's own stream holds one of the two places
        assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) >= 3
        started = time.monotonic()
        _allocate(kubelet)
        assert time.monotonic() - started < 2
    finally:
        for stream in streams:
            stream.cancel()
        for c in channels:
            c.close()


def test_raw_connections_that_never_speak_http2_do_not_stop_allocate(plugin: tuple[FakeKubelet, str]) -> None:
    kubelet, path = plugin
    raw = []
    try:
        for _ in range(200):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(5)
            try:
                s.connect(path)
                s.send(b"PRI * HTTP/2.0\r\n")  # half a preface, then nothing
            except OSError:  # past the bound the server closes at once
                s.close()
                continue
            raw.append(s)
        started = time.monotonic()
        _allocate(kubelet)  # the kubelet's connection is already open
        assert time.monotonic() - started < 2
    finally:
        for s in raw:
            s.close()
    # a new client after the flood is served too, once the server has noticed the closed ones (a moment)
    deadline = time.monotonic() + 5
    while True:
        with grpc.insecure_channel(f"unix://{path}") as channel:
            try:
                options = api_pb2_grpc.DevicePluginStub(channel).GetDevicePluginOptions(api_pb2.Empty(), timeout=2)
                break
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
    assert options.get_preferred_allocation_available


def test_the_server_options_bound_connections_streams_handshakes_and_sizes() -> None:
    options = dict(registration.SERVER_OPTIONS)
    assert options["grpc.max_allowed_incoming_connections"] <= 256
    assert options["grpc.max_concurrent_streams"] <= 16
    assert options["grpc.server_handshake_timeout_ms"] <= 10_000
    assert options["grpc.max_receive_message_length"] <= 4 << 20
