"""A fake kubelet for device-plugin tests: real gRPC on unix sockets in a short temporary directory.

It serves `Registration` on `<base>/device-plugins/kubelet.sock` the way the kubelet does: inside Register it dials
the plugin back and calls GetDevicePluginOptions (an error fails the registration), then consumes ListAndWatch in a
thread and keeps every list it receives (with the time it arrived). Tests call `preferred()` and `allocate()` as the
kubelet would, `restart()` to simulate a kubelet restart (every socket deleted, a new kubelet.sock), and
`set_pod_resources()` to control what the PodResources v1 `List` answers on `<base>/pod-resources/kubelet.sock`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass, field

import grpc

from nodeagent.deviceplugin._pb import api_pb2, api_pb2_grpc, podresources_pb2, podresources_pb2_grpc


@dataclass(frozen=True)
class Advertised:
    id: str
    health: str
    numa_nodes: tuple[int, ...]


@dataclass
class _Plugin:
    request: api_pb2.RegisterRequest
    channel: grpc.Channel
    lists: list[tuple[float, tuple[Advertised, ...]]] = field(default_factory=list)
    stream_ended: bool = False


@dataclass(frozen=True)
class PodDevices:
    namespace: str
    pod: str
    container: str
    resource_name: str
    device_ids: tuple[str, ...]


class FakeKubelet:
    def __init__(self, base: str | None = None) -> None:
        self._own_base = base is None
        self.base = base or tempfile.mkdtemp(prefix="fk")  # short: sun_path holds 108 bytes
        self.plugin_dir = os.path.join(self.base, "device-plugins")
        self.pod_resources_socket = os.path.join(self.base, "pod-resources", "kubelet.sock")
        os.makedirs(self.plugin_dir, exist_ok=True)
        os.makedirs(os.path.dirname(self.pod_resources_socket), exist_ok=True)
        self._cond = threading.Condition()
        self._plugins: dict[str, _Plugin] = {}
        self.registrations: list[tuple[float, api_pb2.RegisterRequest]] = []
        self._pod_devices: list[PodDevices] = []
        self._threads: list[threading.Thread] = []
        self._server: grpc.Server | None = None
        self._pr_server: grpc.Server | None = None

    # -- lifecycle ----------------------------------------------------------------------------------------------

    def start(self) -> FakeKubelet:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="fake-kubelet"))
        api_pb2_grpc.add_RegistrationServicer_to_server(_Registration(self), server)
        server.add_insecure_port(f"unix://{os.path.join(self.plugin_dir, 'kubelet.sock')}")
        server.start()
        self._server = server
        if self._pr_server is None:
            pr = grpc.server(futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="fake-podres"))
            podresources_pb2_grpc.add_PodResourcesListerServicer_to_server(_PodResources(self), pr)
            pr.add_insecure_port(f"unix://{self.pod_resources_socket}")
            pr.start()
            self._pr_server = pr
        return self

    def _stop_registration(self) -> None:
        if self._server is not None:
            self._server.stop(None).wait()
            self._server = None
        with self._cond:
            plugins, self._plugins = list(self._plugins.values()), {}
            threads, self._threads = self._threads, []
        for p in plugins:
            p.channel.close()
        for t in threads:
            t.join(5)

    def restart(self) -> None:
        """What a restarting kubelet does: stop, delete every socket in the directory, serve a new kubelet.sock."""
        self._stop_registration()
        for name in os.listdir(self.plugin_dir):
            os.unlink(os.path.join(self.plugin_dir, name))
        self.start()

    def stop(self) -> None:
        self._stop_registration()
        if self._pr_server is not None:
            self._pr_server.stop(None).wait()
            self._pr_server = None
        if self._own_base:
            shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> FakeKubelet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what the plugins told us -------------------------------------------------------------------------------

    def _register(self, request: api_pb2.RegisterRequest, context: grpc.ServicerContext) -> api_pb2.Empty:
        channel = grpc.insecure_channel(
            f"unix://{os.path.join(self.plugin_dir, request.endpoint)}",
            options=[("grpc.use_local_subchannel_pool", 1)],  # as the kubelet: a new connection per registration
        )
        try:
            options = api_pb2_grpc.DevicePluginStub(channel).GetDevicePluginOptions(api_pb2.Empty(), timeout=2)
        except grpc.RpcError as e:
            channel.close()
            context.abort(grpc.StatusCode.UNKNOWN, f"cannot dial back {request.endpoint}: {e.code()}")
        if request.version != "v1beta1":
            channel.close()
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unsupported version {request.version}")
        del options
        plugin = _Plugin(request, channel)
        with self._cond:
            old = self._plugins.get(request.resource_name)
            self._plugins[request.resource_name] = plugin
            self.registrations.append((time.monotonic(), request))
            self._cond.notify_all()
        if old is not None:
            old.channel.close()
        t = threading.Thread(target=self._watch, args=(plugin,), name="fake-kubelet-watch", daemon=True)
        t.start()
        with self._cond:
            self._threads = [x for x in self._threads if x.is_alive()] + [t]
        return api_pb2.Empty()

    def _watch(self, plugin: _Plugin) -> None:
        try:
            for resp in api_pb2_grpc.DevicePluginStub(plugin.channel).ListAndWatch(api_pb2.Empty()):
                devices = tuple(
                    Advertised(d.ID, d.health, tuple(n.ID for n in d.topology.nodes)) for d in resp.devices
                )
                with self._cond:
                    plugin.lists.append((time.monotonic(), devices))
                    self._cond.notify_all()
        except grpc.RpcError:
            pass
        except ValueError:  # channel closed under us
            pass
        finally:
            with self._cond:
                plugin.stream_ended = True
                self._cond.notify_all()

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        with self._cond:
            return self._cond.wait_for(predicate, timeout)

    def registration(self, resource: str, timeout: float = 5.0) -> api_pb2.RegisterRequest:
        if not self.wait_for(lambda: resource in self._plugins, timeout):
            raise AssertionError(f"{resource} did not register within {timeout}s; have {sorted(self._plugins)}")
        with self._cond:
            return self._plugins[resource].request

    def registered(self) -> list[str]:
        with self._cond:
            return sorted(self._plugins)

    def devices(self, resource: str) -> tuple[Advertised, ...] | None:
        """The latest list the plugin sent, or None before the first one."""
        with self._cond:
            p = self._plugins.get(resource)
            return p.lists[-1][1] if p and p.lists else None

    def lists(self, resource: str) -> list[tuple[float, tuple[Advertised, ...]]]:
        with self._cond:
            p = self._plugins.get(resource)
            return list(p.lists) if p else []

    def wait_devices(
        self, resource: str, predicate: Callable[[tuple[Advertised, ...]], bool], timeout: float = 5.0
    ) -> tuple[Advertised, ...]:
        def ok() -> bool:
            p = self._plugins.get(resource)
            return bool(p and p.lists and predicate(p.lists[-1][1]))

        if not self.wait_for(ok, timeout):
            last = self.devices(resource)
            raise AssertionError(f"{resource}: no matching device list within {timeout}s; last {last}")
        got = self.devices(resource)
        assert got is not None
        return got

    def stream_ended(self, resource: str) -> bool:
        with self._cond:
            p = self._plugins.get(resource)
            return p is None or p.stream_ended

    # -- calls the kubelet makes --------------------------------------------------------------------------------

    def _stub(self, resource: str) -> api_pb2_grpc.DevicePluginStub:
        with self._cond:
            return api_pb2_grpc.DevicePluginStub(self._plugins[resource].channel)

    def preferred(self, resource: str, available: Sequence[str], must_include: Sequence[str], size: int) -> list[str]:
        req = api_pb2.PreferredAllocationRequest()
        req.container_requests.add(
            available_deviceIDs=available, must_include_deviceIDs=must_include, allocation_size=size
        )
        resp = self._stub(resource).GetPreferredAllocation(req, timeout=5)
        return list(resp.container_responses[0].deviceIDs)

    def allocate(self, resource: str, *containers: Sequence[str]) -> api_pb2.AllocateResponse:
        req = api_pb2.AllocateRequest()
        for ids in containers:
            req.container_requests.add(devices_ids=ids)
        return self._stub(resource).Allocate(req, timeout=5)

    # -- PodResources -------------------------------------------------------------------------------------------

    def set_pod_resources(self, entries: Sequence[PodDevices]) -> None:
        with self._cond:
            self._pod_devices = list(entries)

    def _list_pod_resources(self) -> podresources_pb2.ListPodResourcesResponse:
        with self._cond:
            entries = list(self._pod_devices)
        out = podresources_pb2.ListPodResourcesResponse()
        pods: dict[tuple[str, str], podresources_pb2.PodResources] = {}
        for e in entries:
            pod = pods.get((e.namespace, e.pod))
            if pod is None:
                pod = pods[(e.namespace, e.pod)] = out.pod_resources.add(name=e.pod, namespace=e.namespace)
            container = next((c for c in pod.containers if c.name == e.container), None)
            if container is None:
                container = pod.containers.add(name=e.container)
            container.devices.add(resource_name=e.resource_name, device_ids=e.device_ids)
        return out


class _Registration(api_pb2_grpc.RegistrationServicer):
    def __init__(self, kubelet: FakeKubelet) -> None:
        self._kubelet = kubelet

    def Register(self, request: api_pb2.RegisterRequest, context: grpc.ServicerContext) -> api_pb2.Empty:
        return self._kubelet._register(request, context)


class _PodResources(podresources_pb2_grpc.PodResourcesListerServicer):
    def __init__(self, kubelet: FakeKubelet) -> None:
        self._kubelet = kubelet

    def List(
        self, request: podresources_pb2.ListPodResourcesRequest, context: grpc.ServicerContext
    ) -> podresources_pb2.ListPodResourcesResponse:
        return self._kubelet._list_pod_resources()
