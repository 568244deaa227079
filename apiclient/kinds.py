"""The kinds this project reads or writes, as `Resource`s (one place for their groups, versions and plurals)."""

from __future__ import annotations

from apiclient.api import Resource

_DEVICES = "devices.harvesterhci.io"

PCIDEVICES = Resource(_DEVICES, "v1beta1", "pcidevices", "PCIDevice")
PCIDEVICECLAIMS = Resource(_DEVICES, "v1beta1", "pcideviceclaims", "PCIDeviceClaim")
USBDEVICES = Resource(_DEVICES, "v1beta1", "usbdevices", "USBDevice")
USBDEVICECLAIMS = Resource(_DEVICES, "v1beta1", "usbdeviceclaims", "USBDeviceClaim")

NAMESPACES = Resource("", "v1", "namespaces", "Namespace")
NODES = Resource("", "v1", "nodes", "Node")
EVENTS = Resource("", "v1", "events", "Event", namespaced=True)
PODS = Resource("", "v1", "pods", "Pod", namespaced=True)
SECRETS = Resource("", "v1", "secrets", "Secret", namespaced=True)
LEASES = Resource("coordination.k8s.io", "v1", "leases", "Lease", namespaced=True)
SUBJECTACCESSREVIEWS = Resource("authorization.k8s.io", "v1", "subjectaccessreviews", "SubjectAccessReview")
# Dynamic Resource Allocation (resource.k8s.io/v1): the agent writes its node's slices and reads the claims it prepares
RESOURCESLICES = Resource("resource.k8s.io", "v1", "resourceslices", "ResourceSlice")
RESOURCECLAIMS = Resource("resource.k8s.io", "v1", "resourceclaims", "ResourceClaim", namespaced=True)
CUSTOMRESOURCEDEFINITIONS = Resource(
    "apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition"
)
VALIDATINGWEBHOOKCONFIGURATIONS = Resource(
    "admissionregistration.k8s.io", "v1", "validatingwebhookconfigurations", "ValidatingWebhookConfiguration"
)
MUTATINGWEBHOOKCONFIGURATIONS = Resource(
    "admissionregistration.k8s.io", "v1", "mutatingwebhookconfigurations", "MutatingWebhookConfiguration"
)

KUBEVIRTS = Resource("kubevirt.io", "v1", "kubevirts", "KubeVirt", namespaced=True)
# KubeVirt's kinds that name devices: read (never written) by the agent's offering gate and allocation audit, and
# watched by the webhook
VIRTUALMACHINES = Resource("kubevirt.io", "v1", "virtualmachines", "VirtualMachine", namespaced=True)
VIRTUALMACHINEINSTANCES = Resource(
    "kubevirt.io", "v1", "virtualmachineinstances", "VirtualMachineInstance", namespaced=True
)
VIRTUALMACHINEINSTANCEREPLICASETS = Resource(
    "kubevirt.io", "v1", "virtualmachineinstancereplicasets", "VirtualMachineInstanceReplicaSet", namespaced=True
)
VIRTUALMACHINEPOOLS = Resource(
    "pool.kubevirt.io", "v1alpha1", "virtualmachinepools", "VirtualMachinePool", namespaced=True
)
VIRTUALMACHINEINSTANCETYPES = Resource(
    "instancetype.kubevirt.io", "v1beta1", "virtualmachineinstancetypes", "VirtualMachineInstancetype", namespaced=True
)
VIRTUALMACHINECLUSTERINSTANCETYPES = Resource(
    "instancetype.kubevirt.io", "v1beta1", "virtualmachineclusterinstancetypes", "VirtualMachineClusterInstancetype"
)
VIRTUALMACHINESNAPSHOTCONTENTS = Resource(
    "snapshot.kubevirt.io",
    "v1beta1",
    "virtualmachinesnapshotcontents",
    "VirtualMachineSnapshotContent",
    namespaced=True,
)
VIRTUALMACHINESNAPSHOTS = Resource(
    "snapshot.kubevirt.io", "v1beta1", "virtualmachinesnapshots", "VirtualMachineSnapshot", namespaced=True
)
VIRTUALMACHINERESTORES = Resource(
    "snapshot.kubevirt.io", "v1beta1", "virtualmachinerestores", "VirtualMachineRestore", namespaced=True
)
VIRTUALMACHINECLONES = Resource(
    "clone.kubevirt.io", "v1beta1", "virtualmachineclones", "VirtualMachineClone", namespaced=True
)
