"""What an extended-resource name stands for: which of our devices it is (or will be) offered under.

A name is ours as soon as anyone could compute it, not only once a device is offered under it (issue 21): the agent
names a claimed PCI device `<vendor part>/<PCIDevice name>` and a USB device `kubevirt.io/<USBDevice name>`, both
computable from a node's name and an address; a model's pooled name comes from pci.ids. Naming such a name before
the device is claimed (or before it exists) would let a pod or VM wait for the device and get it the moment it is
offered, so every rule resolves names here and treats all four kinds of match as ours.
"""

from __future__ import annotations

from dataclasses import dataclass

from policy import names
from policy.objects import Device
from policy.snapshot import ClusterView


@dataclass(frozen=True, slots=True)
class Offer:
    name: str
    offered: tuple[Device, ...]  # devices whose status.resourceName is the name (claimed or not)
    later: tuple[Device, ...]  # devices the name is the per-device name of, not offered under it now
    pooled_models: tuple[str, ...]  # `vendor:device` models whose pooled name it is
    node: str  # the known node whose per-device shape the name has ("" when none)

    @property
    def ours(self) -> bool:
        return bool(self.offered or self.later or self.pooled_models or self.node)


def resolve(view: ClusterView, resource_name: str) -> Offer:
    offered = tuple(view.devices_with_resource(resource_name))
    part = names.name_part(resource_name)
    later: tuple[Device, ...] = ()
    node = ""
    if part:
        later = tuple(d for d in view.devices_for_part(part) if d.resource_name != resource_name)
        if not offered and not later:
            node = view.node_for_part(part)
    return Offer(resource_name, offered, later, tuple(view.pooled_models(resource_name)), node)


def is_ours(view: ClusterView, resource_name: str) -> bool:
    return resolve(view, resource_name).ours
