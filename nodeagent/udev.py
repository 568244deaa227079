"""udev (netlink) events for PCI and USB add/remove/bind/unbind, turned into nudges of the reconcile loop.

The agent runs in the host's network namespace (hostNetwork), where the kernel's uevents are visible. An event
carries no state the agent trusts: it only makes the next pass come sooner.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

SUBSYSTEMS = ("pci", "usb")
ACTIONS = frozenset({"add", "remove", "bind", "unbind", "change"})


def wants(action: str | None, subsystem: str | None) -> bool:
    return subsystem in SUBSYSTEMS and action in ACTIONS


class UdevNudger:
    """Observes a pyudev monitor in its own thread; `monitor_factory` is injected (tests pass a fake)."""

    def __init__(self, nudge: Callable[[], None], monitor_factory: Callable[[], Any] | None = None) -> None:
        self._nudge = nudge
        self._factory = monitor_factory or _netlink_monitor
        self._observer: Any = None

    def _event(self, device: Any) -> None:
        if wants(getattr(device, "action", None), getattr(device, "subsystem", None)):
            log.debug("udev event", extra={"action": device.action, "subsystem": device.subsystem})
            self._nudge()

    def start(self) -> UdevNudger:
        import pyudev

        monitor = self._factory()
        self._observer = pyudev.MonitorObserver(monitor, callback=self._event, name="udev")
        self._observer.start()
        return self

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.send_stop()
            self._observer = None


def _netlink_monitor() -> Any:
    import pyudev

    monitor = pyudev.Monitor.from_netlink(pyudev.Context())
    for s in SUBSYSTEMS:
        monitor.filter_by(s)
    return monitor
