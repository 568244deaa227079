"""Kubelet device plugins (API v1beta1 over gRPC) that hand claimed PCI and USB devices to KubeVirt.

The agent tells the `manager.PluginManager` which resources it wants served (`model.PciResource`,
`model.UsbResource`); the manager starts one plugin per resource, keeps each registered with the kubelet across
kubelet restarts and publishes device health read through a `health.HostProbe`. `allocate` holds the pure answers
to the kubelet's questions; `podresources` reads back what the kubelet allocated.
"""
