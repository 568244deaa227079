"""Prometheus counters of the device plugins, per resource name, on a registry the agent passes in."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter


class PluginMetrics:
    """Registrations, allocations and health changes per resource (the agent exposes the registry)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registrations = Counter(
            "pcidevices_deviceplugin_registrations",
            "Successful registrations of a device plugin with the kubelet.",
            ["resource"],
            registry=registry,
        )
        self.registration_failures = Counter(
            "pcidevices_deviceplugin_registration_failures",
            "Failed attempts to register a device plugin with the kubelet.",
            ["resource"],
            registry=registry,
        )
        self.allocations = Counter(
            "pcidevices_deviceplugin_allocated_devices",
            "Devices handed out by Allocate.",
            ["resource"],
            registry=registry,
        )
        self.allocation_failures = Counter(
            "pcidevices_deviceplugin_allocation_failures",
            "Allocate calls refused (unknown or unhealthy device).",
            ["resource"],
            registry=registry,
        )
        self.health_changes = Counter(
            "pcidevices_deviceplugin_health_changes",
            "Changes of an advertised device entry (health or presence).",
            ["resource"],
            registry=registry,
        )

    def registered(self, resource: str) -> None:
        self.registrations.labels(resource=resource).inc()

    def registration_failed(self, resource: str) -> None:
        self.registration_failures.labels(resource=resource).inc()

    def allocated(self, resource: str, devices: int) -> None:
        self.allocations.labels(resource=resource).inc(devices)

    def allocation_failed(self, resource: str) -> None:
        self.allocation_failures.labels(resource=resource).inc()

    def health_changed(self, resource: str, devices: int) -> None:
        self.health_changes.labels(resource=resource).inc(devices)
