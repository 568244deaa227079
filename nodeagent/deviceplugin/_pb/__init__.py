"""Generated gRPC modules for api.proto (kubelet device plugins, v1beta1) and podresources.proto (PodResources v1).

Regenerate with `scripts/gen-protos`; tests/unit/nodeagent/test_deviceplugin_protos.py fails when they are stale.
"""
