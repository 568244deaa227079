"""The kubelet-facing side of our DRA drivers: the DRAPlugin service (v1) and plugin registration, over gRPC.

Per driver, one gRPC server listens on two unix sockets: the driver's endpoint
`<kubelet>/plugins/<driver>/dra.sock` (DRAPlugin) and the registration socket
`<kubelet>/plugins_registry/<driver>-reg.sock` (pluginregistration.Registration). The kubelet's plugin watcher
notices the registration socket, asks GetInfo (type DRAPlugin, the driver's name, the endpoint, and the services
served there: "v1.DRAPlugin"), and reports with NotifyRegistrationStatus. Unlike device plugins, a restarting
kubelet leaves these sockets alone and registers them again when it finds them; `supervise()` serves again only
when one of our socket files vanished or was replaced. Stopping removes the registration socket first, so the kubelet
deregisters the driver before its endpoint goes.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from concurrent import futures

import grpc

from nodeagent.deviceplugin import errors
from nodeagent.deviceplugin._pb import dra_pb2, dra_pb2_grpc, pluginregistration_pb2, pluginregistration_pb2_grpc
from nodeagent.deviceplugin.manager import backoff
from nodeagent.deviceplugin.registration import MAX_SOCKET_PATH, SERVER_OPTIONS, FileId, file_id
from nodeagent.dra.driver import ClaimRef, DraDriver

log = logging.getLogger(__name__)

PLUGIN_TYPE = "DRAPlugin"
SERVICES = ("v1.DRAPlugin",)  # what the kubelet may call on our endpoint ("<proto package leaf>.<service>")
DRA_SOCKET = "dra.sock"


def registration_socket(registry_dir: str, driver: str) -> str:
    return os.path.join(registry_dir, f"{driver}-reg.sock")


class DRAPluginServicer(dra_pb2_grpc.DRAPluginServicer):
    """NodePrepareResources/NodeUnprepareResources of one driver, answered claim by claim by its DraDriver."""

    def __init__(self, driver: DraDriver) -> None:
        self._driver = driver

    def NodePrepareResources(
        self, request: dra_pb2.NodePrepareResourcesRequest, context: grpc.ServicerContext
    ) -> dra_pb2.NodePrepareResourcesResponse:
        refs = [ClaimRef(c.namespace, c.uid, c.name) for c in request.claims]
        out = dra_pb2.NodePrepareResourcesResponse()
        for uid, result in self._driver.prepare(refs).items():
            entry = out.claims[uid]
            if result.error:
                entry.error = result.error
                continue
            for d in result.devices:
                entry.devices.add(
                    request_names=d.request_names, pool_name=d.pool, device_name=d.device, cdi_device_ids=d.cdi_ids
                )
        return out

    def NodeUnprepareResources(
        self, request: dra_pb2.NodeUnprepareResourcesRequest, context: grpc.ServicerContext
    ) -> dra_pb2.NodeUnprepareResourcesResponse:
        refs = [ClaimRef(c.namespace, c.uid, c.name) for c in request.claims]
        out = dra_pb2.NodeUnprepareResourcesResponse()
        for uid, error in self._driver.unprepare(refs).items():
            out.claims[uid].error = error
        return out


class RegistrationServicer(pluginregistration_pb2_grpc.RegistrationServicer):
    def __init__(self, driver: str, endpoint: str, on_status: Callable[[bool, str], None]) -> None:
        self._driver = driver
        self._endpoint = endpoint
        self._on_status = on_status

    def GetInfo(
        self, request: pluginregistration_pb2.InfoRequest, context: grpc.ServicerContext
    ) -> pluginregistration_pb2.PluginInfo:
        return pluginregistration_pb2.PluginInfo(
            type=PLUGIN_TYPE, name=self._driver, endpoint=self._endpoint, supported_versions=SERVICES
        )

    def NotifyRegistrationStatus(
        self, request: pluginregistration_pb2.RegistrationStatus, context: grpc.ServicerContext
    ) -> pluginregistration_pb2.RegistrationStatusResponse:
        self._on_status(request.plugin_registered, request.error)
        return pluginregistration_pb2.RegistrationStatusResponse()


class DraPluginServer:
    """The gRPC server of one driver on its two sockets (not thread-safe: one supervising caller)."""

    def __init__(self, driver: DraDriver, *, plugin_dir: str, registry_dir: str, max_workers: int = 4) -> None:
        self.driver = driver
        self.endpoint = os.path.join(plugin_dir, DRA_SOCKET)
        self.registration = registration_socket(registry_dir, driver.driver)
        self._max_workers = max_workers
        self._server: grpc.Server | None = None
        self._served: dict[str, FileId | None] = {}
        self._status_lock = threading.Lock()
        self.registered = False
        self.registration_error = ""

    def _status(self, registered: bool, error: str) -> None:
        with self._status_lock:
            self.registered, self.registration_error = registered, error
        if registered:
            log.info("DRA driver registered with the kubelet", extra={"driver": self.driver.driver})
        else:
            log.warning("the kubelet refused the DRA driver", extra={"driver": self.driver.driver, "error": error})

    @property
    def serving(self) -> bool:
        return self._server is not None

    def serve(self) -> None:
        """(Re)start serving: stale sockets removed, then both sockets served by one server."""
        for path in (self.endpoint, self.registration):
            if len(path.encode()) > MAX_SOCKET_PATH:
                raise errors.ServeError(f"socket path {path} is longer than {MAX_SOCKET_PATH} bytes")
        self._stop_server()
        for path in (self.registration, self.endpoint):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as e:
                raise errors.ServeError(f"cannot remove stale socket {path}: {e.strerror}") from e
        os.makedirs(os.path.dirname(self.endpoint), exist_ok=True)
        os.makedirs(os.path.dirname(self.registration), exist_ok=True)
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=self._max_workers, thread_name_prefix="draplugin"),
            options=SERVER_OPTIONS,
            maximum_concurrent_rpcs=self._max_workers * 2,
        )
        dra_pb2_grpc.add_DRAPluginServicer_to_server(DRAPluginServicer(self.driver), server)
        pluginregistration_pb2_grpc.add_RegistrationServicer_to_server(
            RegistrationServicer(self.driver.driver, self.endpoint, self._status), server
        )
        try:
            server.add_insecure_port(f"unix://{self.endpoint}")
            server.add_insecure_port(f"unix://{self.registration}")
        except RuntimeError as e:
            server.stop(None).wait()
            raise errors.ServeError(f"cannot listen on {self.endpoint} and {self.registration}: {e}") from e
        server.start()  # both sockets answer from here on: the kubelet's GetInfo, then its calls on the endpoint
        self._server = server
        self._served = {p: file_id(p) for p in (self.endpoint, self.registration)}
        with self._status_lock:
            self.registered, self.registration_error = False, ""
        log.info("DRA driver serving", extra={"driver": self.driver.driver, "endpoint": self.endpoint})

    def needs_serve(self) -> bool:
        """Not serving, or one of our socket files vanished or was replaced."""
        return self._server is None or any(file_id(p) != fid for p, fid in self._served.items())

    def stop(self) -> None:
        for path in (self.registration, self.endpoint):
            if path in self._served and file_id(path) == self._served[path]:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
        self._stop_server()
        self._served = {}

    def _stop_server(self) -> None:
        if self._server is not None:
            self._server.stop(None).wait()
            self._server = None


class DraPlugins:
    """Keeps every driver's server up: `run()` checks the sockets each tick and serves again on the device plugins'
    retry ladder (`manager.backoff`)."""

    def __init__(
        self, servers: list[DraPluginServer], *, clock: Callable[[], float], tick_s: float = 1.0
    ) -> None:
        self.servers = servers
        self._clock = clock
        self._tick_s = tick_s
        self._failures = {id(s): 0 for s in servers}
        self._next = {id(s): 0.0 for s in servers}
        self._wake = threading.Event()

    def step(self) -> None:
        now = self._clock()
        for s in self.servers:
            if now < self._next[id(s)] or not s.needs_serve():
                continue
            try:
                s.serve()
                self._failures[id(s)] = 0
            except errors.DevicePluginError as e:
                n = self._failures[id(s)] = self._failures[id(s)] + 1
                self._next[id(s)] = now + backoff(n)
                log.warning("DRA driver not serving; retrying", extra={"driver": s.driver.driver, "error": str(e)})

    def run(self, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                try:
                    self.step()
                except Exception:
                    log.exception("DRA supervisor pass failed; continuing")
                self._wake.wait(self._tick_s)
                self._wake.clear()
        finally:
            for s in self.servers:
                s.stop()

    def wake(self) -> None:
        self._wake.set()
