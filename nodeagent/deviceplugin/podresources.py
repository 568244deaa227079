"""Client of the kubelet's PodResources API (v1 List): which pod and container hold which device.

The agent uses it to fill a claim's `status.allocatedTo` and to refuse releasing a device the kubelet has handed
to a pod. `list_allocations` is the I/O edge; `index_allocations` is the pure view the agent reads.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import NotRequired, TypedDict

import grpc

from nodeagent.deviceplugin import errors
from nodeagent.deviceplugin._pb import podresources_pb2, podresources_pb2_grpc

POD_RESOURCES_SOCKET = "/var/lib/kubelet/pod-resources/kubelet.sock"


@dataclass(frozen=True)
class DeviceAllocation:
    """One device id of one resource held by one container."""

    namespace: str
    pod: str
    container: str
    resource_name: str
    device_id: str


@dataclass(frozen=True)
class Holder:
    namespace: str
    pod: str
    container: str


class AllocatedTo(TypedDict):
    """One entry of a claim's `status.allocatedTo` (the CRD's shape); the agent adds `vmi` from the pod's owner."""

    pod: str
    container: str
    vmi: NotRequired[str]


def list_allocations(socket_path: str, *, timeout_s: float = 5.0) -> tuple[DeviceAllocation, ...]:
    """Ask the kubelet for every device allocation on this node; raise PodResourcesError."""
    try:
        with grpc.insecure_channel(f"unix://{socket_path}") as channel:
            response = podresources_pb2_grpc.PodResourcesListerStub(channel).List(
                podresources_pb2.ListPodResourcesRequest(), timeout=timeout_s
            )
    except grpc.RpcError as e:
        raise errors.PodResourcesError(f"cannot list pod resources from {socket_path}: {e}") from e
    return build_allocations(response)


def build_allocations(response: podresources_pb2.ListPodResourcesResponse) -> tuple[DeviceAllocation, ...]:
    return tuple(
        DeviceAllocation(pod.namespace, pod.name, container.name, devices.resource_name, device_id)
        for pod in response.pod_resources
        for container in pod.containers
        for devices in container.devices
        for device_id in devices.device_ids
    )


def index_allocations(
    allocations: Iterable[DeviceAllocation], resource_names: Iterable[str] | None = None
) -> Mapping[tuple[str, str], tuple[Holder, ...]]:
    """(resource name, device id) -> holders, optionally only for our resource names; holders sorted."""
    wanted = None if resource_names is None else set(resource_names)
    out: dict[tuple[str, str], set[Holder]] = {}
    for a in allocations:
        if wanted is None or a.resource_name in wanted:
            out.setdefault((a.resource_name, a.device_id), set()).add(Holder(a.namespace, a.pod, a.container))
    return {k: tuple(sorted(v, key=lambda h: (h.namespace, h.pod, h.container))) for k, v in sorted(out.items())}


def build_allocated_to(
    index: Mapping[tuple[str, str], tuple[Holder, ...]], resource_name: str, device_id: str
) -> list[AllocatedTo]:
    """A claim's `status.allocatedTo` for one device: `[{"pod": "<ns>/<name>", "container": ...}]`, sorted."""
    return [
        AllocatedTo(pod=f"{h.namespace}/{h.pod}", container=h.container)
        for h in index.get((resource_name, device_id), ())
    ]
