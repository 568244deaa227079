"""A fake kubelet for DRA plugin tests: its plugin watcher and DRA manager, over real gRPC on unix sockets.

`register(socket)` does what the kubelet's plugin watcher does with a socket that appears in plugins_registry: dial
it, GetInfo, check the type (DRAPlugin), the name and that one of the services it lists is one the kubelet speaks
("v1.DRAPlugin" or "v1beta1.DRAPlugin"), dial the endpoint, and report with NotifyRegistrationStatus (registered, or
the error). `prepare()`/`unprepare()` then call the driver as the kubelet's DRA manager does when a pod starts and
when its last pod is gone.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import grpc

from nodeagent.deviceplugin._pb import dra_pb2, dra_pb2_grpc, pluginregistration_pb2, pluginregistration_pb2_grpc

KUBELET_SERVICES = ("v1.DRAPlugin", "v1beta1.DRAPlugin")
_OPTIONS = [("grpc.use_local_subchannel_pool", 1)]


@dataclass(frozen=True)
class Registered:
    driver: str
    endpoint: str
    service: str


class FakeDraKubelet:
    def __init__(self) -> None:
        self.plugins: dict[str, Registered] = {}

    def register(self, socket: str) -> Registered:
        """Register the plugin behind a registration socket; AssertionError (after telling it) when invalid."""
        with grpc.insecure_channel(f"unix://{socket}", options=_OPTIONS) as ch:
            stub = pluginregistration_pb2_grpc.RegistrationStub(ch)
            info = stub.GetInfo(pluginregistration_pb2.InfoRequest(), timeout=5)
            problem = ""
            chosen = next((s for s in info.supported_versions if s in KUBELET_SERVICES), "")
            if info.type != "DRAPlugin":
                problem = f"type {info.type!r} is not DRAPlugin"
            elif not chosen:
                problem = f"none of {list(info.supported_versions)} is served by this kubelet"
            elif not os.path.isabs(info.endpoint) or not os.path.exists(info.endpoint):
                problem = f"endpoint {info.endpoint!r} does not exist"
            stub.NotifyRegistrationStatus(
                pluginregistration_pb2.RegistrationStatus(plugin_registered=not problem, error=problem), timeout=5
            )
            assert not problem, problem
        reg = Registered(info.name, info.endpoint, chosen)
        self.plugins[info.name] = reg
        return reg

    def _stub(self, driver: str) -> tuple[grpc.Channel, dra_pb2_grpc.DRAPluginStub]:
        ch = grpc.insecure_channel(f"unix://{self.plugins[driver].endpoint}", options=_OPTIONS)
        return ch, dra_pb2_grpc.DRAPluginStub(ch)

    def prepare(self, driver: str, claims: Sequence[tuple[str, str, str]]) -> dra_pb2.NodePrepareResourcesResponse:
        """claims: (namespace, uid, name)."""
        ch, stub = self._stub(driver)
        with ch:
            req = dra_pb2.NodePrepareResourcesRequest(
                claims=[dra_pb2.Claim(namespace=n, uid=u, name=m) for n, u, m in claims]
            )
            return stub.NodePrepareResources(req, timeout=10)

    def unprepare(
        self, driver: str, claims: Sequence[tuple[str, str, str]]
    ) -> dra_pb2.NodeUnprepareResourcesResponse:
        ch, stub = self._stub(driver)
        with ch:
            req = dra_pb2.NodeUnprepareResourcesRequest(
                claims=[dra_pb2.Claim(namespace=n, uid=u, name=m) for n, u, m in claims]
            )
            return stub.NodeUnprepareResources(req, timeout=10)
