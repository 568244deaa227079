"""Generated gRPC modules for api.proto (kubelet device plugins, v1beta1), podresources.proto (PodResources v1),
dra.proto (the kubelet's DRA plugin API, v1) and pluginregistration.proto (kubelet plugin registration, v1).

Regenerate with `scripts/gen-protos`; tests/unit/nodeagent/test_deviceplugin_protos.py fails when they are stale.
"""
