"""Errors of the device plugins.

    AgentError (nodeagent.errors)
    └── DevicePluginError           base of everything this package raises on purpose
        ├── AllocationError         the kubelet asked for devices we cannot hand out (answered as a gRPC error)
        │   ├── UnknownDevice       an id this plugin does not advertise
        │   └── UnhealthyDevice     an advertised id that is not usable right now
        ├── ServeError              the plugin's gRPC server could not listen on its socket (the manager retries)
        ├── RegistrationError       the kubelet refused or did not answer Register (retried; never fatal)
        └── PodResourcesError       the kubelet's PodResources API could not be read
"""

from __future__ import annotations

from nodeagent.errors import AgentError


class DevicePluginError(AgentError):
    """Base of the device plugins' own errors."""


class AllocationError(DevicePluginError):
    """The kubelet asked for devices this plugin cannot hand out."""


class UnknownDevice(AllocationError):
    """A device id this plugin does not advertise."""


class UnhealthyDevice(AllocationError):
    """An advertised device that is not usable right now (e.g. no longer bound to vfio-pci)."""


class ServeError(DevicePluginError):
    """The plugin's gRPC server could not listen on its socket."""


class RegistrationError(DevicePluginError):
    """The kubelet refused the registration or could not be reached."""


class PodResourcesError(DevicePluginError):
    """The kubelet's PodResources API could not be read."""
