"""Errors of the binder.

    AgentError (nodeagent.errors)
    └── BindError               a binding step could not be carried out (carries the device address)
        ├── NotOurs             the device is bound to vfio-pci by someone else; the agent never touches it
        └── ModuleLoadError     modprobe of vfio-pci / vfio_iommu_type1 failed
"""

from __future__ import annotations

from nodeagent.errors import AgentError


class BindError(AgentError):
    """A binding or release step failed; the device is left in a state a later attempt converges from."""

    def __init__(self, message: str, *, address: str) -> None:
        super().__init__(message)
        self.address = address


class NotOurs(BindError):
    """The device already uses vfio-pci and this agent holds no record of binding it."""


class ModuleLoadError(BindError):
    """A kernel module the binding needs could not be loaded."""
