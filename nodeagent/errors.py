"""Errors of the node agent.

    AgentError                  base of everything the agent raises on purpose
    ├── SysfsError              a host file under the root could not be read or written (carries path and errno)
    │   └── RootUnavailable     the root directory itself is missing or unreadable (the CLI exits 2)
    └── DiscoveryError          discovery could not produce a result at all (one bad device never raises this)

A failed call to the API server raises apiclient.KubeError (its own tree, shared by every process).
"""

from __future__ import annotations


class AgentError(Exception):
    """Base of the agent's own errors."""


class SysfsError(AgentError):
    """A host file (sysfs, procfs, devfs) under the root could not be read or written."""

    def __init__(self, message: str, *, path: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.errno = errno


class RootUnavailable(SysfsError):
    """The directory that stands for `/` does not exist or cannot be read."""


class DiscoveryError(AgentError):
    """Discovery as a whole failed (e.g. no sys/bus/pci under the root)."""
