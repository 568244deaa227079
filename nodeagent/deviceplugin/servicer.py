"""The DevicePlugin gRPC service of one resource: protobuf in, pure answers from `allocate`, protobuf out.

`PluginState` holds the resource's latest `Snapshot`; the manager publishes into it and every open ListAndWatch
stream wakes on a change and sends the whole list again (the kubelet wants full lists, not deltas).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

import grpc

from nodeagent.deviceplugin import allocate, errors, metrics, model
from nodeagent.deviceplugin._pb import api_pb2, api_pb2_grpc

log = logging.getLogger(__name__)

HEALTHY = "Healthy"
UNHEALTHY = "Unhealthy"


class PluginState:
    """The latest snapshot of one resource plus a generation counter that ListAndWatch streams wait on."""

    def __init__(self, snapshot: model.Snapshot) -> None:
        self._cond = threading.Condition()
        self._snapshot = snapshot
        self._generation = 0
        self._closed = False

    @property
    def snapshot(self) -> model.Snapshot:
        with self._cond:
            return self._snapshot

    @property
    def closed(self) -> bool:
        with self._cond:
            return self._closed

    def publish(self, snapshot: model.Snapshot) -> tuple[str, ...]:
        """Store a new snapshot; return the ids whose advertised entry changed (streams wake only then)."""
        with self._cond:
            old = {d.id: d for d in allocate.build_device_list(self._snapshot)}
            new = allocate.build_device_list(snapshot)
            changed = tuple(d.id for d in new if old.get(d.id) != d) + tuple(
                i for i in old if i not in {d.id for d in new}
            )
            self._snapshot = snapshot
            if changed:
                self._generation += 1
                self._cond.notify_all()
            return changed

    def wait_newer(self, generation: int, timeout: float) -> tuple[int, model.Snapshot]:
        with self._cond:
            self._cond.wait_for(lambda: self._generation != generation or self._closed, timeout)
            return self._generation, self._snapshot

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def close(self) -> None:
        """End every ListAndWatch stream (the plugin is stopping)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()


def build_list_response(snapshot: model.Snapshot) -> api_pb2.ListAndWatchResponse:
    out = api_pb2.ListAndWatchResponse()
    for d in allocate.build_device_list(snapshot):
        dev = out.devices.add(ID=d.id, health=HEALTHY if d.healthy else UNHEALTHY)
        if d.numa_node is not None:
            dev.topology.nodes.add(ID=d.numa_node)
    return out


class DevicePluginServicer(api_pb2_grpc.DevicePluginServicer):
    """Answers the kubelet for one resource from its PluginState."""

    def __init__(
        self, state: PluginState, counters: metrics.PluginMetrics, *, wait_s: float = 1.0, max_watchers: int = 2
    ) -> None:
        self._state = state
        self._metrics = counters
        self._wait_s = wait_s
        self._max_watchers = max_watchers
        self._watchers = 0
        self._watchers_lock = threading.Lock()

    def GetDevicePluginOptions(
        self, request: api_pb2.Empty, context: grpc.ServicerContext
    ) -> api_pb2.DevicePluginOptions:
        return api_pb2.DevicePluginOptions(pre_start_required=False, get_preferred_allocation_available=True)

    def ListAndWatch(
        self, request: api_pb2.Empty, context: grpc.ServicerContext
    ) -> Iterator[api_pb2.ListAndWatchResponse]:
        # The kubelet keeps one stream (two while a restarted kubelet's replaces the old); more would each hold a
        # server thread for good.
        with self._watchers_lock:
            full = self._watchers >= self._max_watchers
            if not full:
                self._watchers += 1
        if full:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many ListAndWatch streams on this plugin")
        try:
            state = self._state
            context.add_callback(state.wake)  # a cancelled stream stops waiting at once
            last = -1
            while context.is_active() and not state.closed:
                generation, snapshot = state.wait_newer(last, self._wait_s)
                if generation != last and context.is_active() and not state.closed:
                    last = generation
                    yield build_list_response(snapshot)
        finally:
            with self._watchers_lock:
                self._watchers -= 1

    def GetPreferredAllocation(
        self, request: api_pb2.PreferredAllocationRequest, context: grpc.ServicerContext
    ) -> api_pb2.PreferredAllocationResponse:
        snapshot = self._state.snapshot
        out = api_pb2.PreferredAllocationResponse()
        for req in request.container_requests:
            ids = allocate.plan_preferred(
                snapshot, list(req.available_deviceIDs), list(req.must_include_deviceIDs), req.allocation_size
            )
            out.container_responses.add(deviceIDs=ids)
        return out

    def Allocate(self, request: api_pb2.AllocateRequest, context: grpc.ServicerContext) -> api_pb2.AllocateResponse:
        snapshot = self._state.snapshot
        out = api_pb2.AllocateResponse()
        try:
            answers = [allocate.build_allocation(snapshot, list(r.devices_ids)) for r in request.container_requests]
        except errors.AllocationError as e:
            code = grpc.StatusCode.NOT_FOUND if isinstance(e, errors.UnknownDevice) else grpc.StatusCode.UNAVAILABLE
            log.warning("allocate refused", extra={"resource": snapshot.resource_name, "error": str(e)})
            self._metrics.allocation_failed(snapshot.resource_name)
            context.abort(code, str(e))
        for a in answers:
            resp = out.container_responses.add()
            resp.envs.update(a.envs)
            for d in a.devices:
                resp.devices.add(container_path=d.container_path, host_path=d.host_path, permissions=d.permissions)
        self._metrics.allocated(snapshot.resource_name, sum(len(r.devices_ids) for r in request.container_requests))
        log.info("allocated devices", extra={"resource": snapshot.resource_name, "containers": len(answers)})
        return out

    def PreStartContainer(
        self, request: api_pb2.PreStartContainerRequest, context: grpc.ServicerContext
    ) -> api_pb2.PreStartContainerResponse:
        return api_pb2.PreStartContainerResponse()
