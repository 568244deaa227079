"""The DRA and plugin-registration protos keep the kubelet's wire names: packages, method paths, field numbers."""

from __future__ import annotations

from typing import Any

from nodeagent.deviceplugin._pb import dra_pb2, pluginregistration_pb2


def _numbers(message: Any) -> dict[str, int]:
    return {f.name: f.number for f in message.DESCRIPTOR.fields}


def test_the_dra_service_has_the_v1_method_paths() -> None:
    d = dra_pb2.DESCRIPTOR
    assert d.package == "k8s.io.kubelet.pkg.apis.dra.v1"
    assert [m.full_name for m in d.services_by_name["DRAPlugin"].methods] == [
        "k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin.NodePrepareResources",
        "k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin.NodeUnprepareResources",
    ]


def test_the_dra_messages_keep_their_field_numbers() -> None:
    assert _numbers(dra_pb2.Claim) == {"namespace": 1, "uid": 2, "name": 3}
    assert _numbers(dra_pb2.NodePrepareResourcesRequest) == {"claims": 1}
    assert _numbers(dra_pb2.NodePrepareResourcesResponse) == {"claims": 1}
    assert _numbers(dra_pb2.NodePrepareResourceResponse) == {"devices": 1, "error": 2}
    assert _numbers(dra_pb2.Device) == {"request_names": 1, "pool_name": 2, "device_name": 3, "cdi_device_ids": 4}
    assert _numbers(dra_pb2.NodeUnprepareResourcesRequest) == {"claims": 1}
    assert _numbers(dra_pb2.NodeUnprepareResourcesResponse) == {"claims": 1}
    assert _numbers(dra_pb2.NodeUnprepareResourceResponse) == {"error": 1}


def test_plugin_registration_keeps_its_package_and_fields() -> None:
    r = pluginregistration_pb2.DESCRIPTOR
    assert r.package == "pluginregistration"
    assert [m.full_name for m in r.services_by_name["Registration"].methods] == [
        "pluginregistration.Registration.GetInfo",
        "pluginregistration.Registration.NotifyRegistrationStatus",
    ]
    assert _numbers(pluginregistration_pb2.PluginInfo) == {"type": 1, "name": 2, "endpoint": 3,
                                                           "supported_versions": 4}  # fmt: skip
    assert _numbers(pluginregistration_pb2.RegistrationStatus) == {"plugin_registered": 1, "error": 2}
