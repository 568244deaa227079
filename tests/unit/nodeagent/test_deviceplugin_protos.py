"""The committed generated modules equal a fresh `scripts/gen-protos` run, and keep the kubelet's wire names."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from nodeagent.deviceplugin._pb import api_pb2, podresources_pb2

REPO = Path(__file__).resolve().parents[3]
PB = "nodeagent/deviceplugin/_pb"


def test_regenerating_the_protos_changes_nothing(tmp_path: Path):
    subprocess.run(
        [str(REPO / "scripts/gen-protos"), str(tmp_path)],
        check=True,
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
    )
    fresh = sorted(p.name for p in (tmp_path / PB).iterdir())
    assert fresh == [
        "api_pb2.py",
        "api_pb2.pyi",
        "api_pb2_grpc.py",
        "dra_pb2.py",
        "dra_pb2.pyi",
        "dra_pb2_grpc.py",
        "pluginregistration_pb2.py",
        "pluginregistration_pb2.pyi",
        "pluginregistration_pb2_grpc.py",
        "podresources_pb2.py",
        "podresources_pb2.pyi",
        "podresources_pb2_grpc.py",
    ]
    for name in fresh:
        assert (tmp_path / PB / name).read_text() == (REPO / PB / name).read_text(), f"{name} is stale"


def test_services_keep_the_kubelet_method_paths():
    api = api_pb2.DESCRIPTOR
    assert api.package == "v1beta1"
    assert [m.full_name for m in api.services_by_name["Registration"].methods] == ["v1beta1.Registration.Register"]
    assert [m.name for m in api.services_by_name["DevicePlugin"].methods] == [
        "GetDevicePluginOptions",
        "ListAndWatch",
        "GetPreferredAllocation",
        "Allocate",
        "PreStartContainer",
    ]
    pr = podresources_pb2.DESCRIPTOR
    assert pr.package == "v1"
    assert [m.full_name for m in pr.services_by_name["PodResourcesLister"].methods] == ["v1.PodResourcesLister.List"]


def test_messages_keep_the_kubelet_field_numbers():
    def numbers(message) -> dict[str, int]:
        return {f.name: f.number for f in message.DESCRIPTOR.fields}

    assert numbers(api_pb2.RegisterRequest) == {"version": 1, "endpoint": 2, "resource_name": 3, "options": 4}
    assert numbers(api_pb2.Device) == {"ID": 1, "health": 2, "topology": 3}
    assert numbers(api_pb2.ContainerPreferredAllocationRequest) == {
        "available_deviceIDs": 1,
        "must_include_deviceIDs": 2,
        "allocation_size": 3,
    }
    assert numbers(api_pb2.ContainerAllocateResponse) == {
        "envs": 1,
        "mounts": 2,
        "devices": 3,
        "annotations": 4,
        "cdi_devices": 5,
    }
    assert numbers(api_pb2.DeviceSpec) == {"container_path": 1, "host_path": 2, "permissions": 3}
    assert numbers(podresources_pb2.ContainerDevices) == {"resource_name": 1, "device_ids": 2}
    assert numbers(podresources_pb2.PodResources) == {"name": 1, "namespace": 2, "containers": 3}
