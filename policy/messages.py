"""Every denial and warning text, as named format constants.

Form (style.md §5): one sentence, lower-case start, no final period; the subject first with its kind and quoted
name; then the rule as what *is* allowed, the offending value, and after `; ` the remedy. Never "denied": the API
server already prefixes `admission webhook "..." denied the request: `. Values that come from the request are
passed through `shown()` so that a hostile value cannot make a message huge.
"""

from __future__ import annotations

from collections.abc import Iterable

_MAX_SHOWN = 80


def shown(value: object) -> str:
    """A request value as it appears in a message: quoted, control characters escaped, bounded in length."""
    text = value if isinstance(value, str) else repr(value)
    text = text.encode("unicode_escape").decode("ascii").replace('"', '\\"')
    if len(text) > _MAX_SHOWN:
        text = text[: _MAX_SHOWN - 3] + "..."
    return f'"{text}"'


def listed(values: Iterable[object]) -> str:
    """Several names as `"a", "b"` (sorted, so messages are stable)."""
    return ", ".join(shown(v) for v in sorted({str(v) for v in values}))


# -- requests the policy cannot judge (400) -------------------------------------------------------------------

UNKNOWN_RESOURCE = "this webhook does not handle {resource}; check the rules of the webhook configuration"
VIEW_NOT_SYNCED = (
    "this webhook process is still loading its view of the cluster's devices and claims, and judges nothing before "
    "that; retry in a few seconds (if this persists, check the webhook's logs and its access to the API server)"
)
MISSING_OBJECT = "{resource} {name} carries no {field} on {operation}; the API server always sends one"
MALFORMED_OBJECT = "{kind} {name} is not shaped as its schema says: {problem}"

# -- identities (A10) -----------------------------------------------------------------------------------------

AGENT_UNBOUND = (
    "user {user} is a node agent and can only act with a token bound to a node; its token carries no {extra} "
    "extra; run the agent with the projected service-account token of its pod"
)
AGENT_CREATES_CLAIM = (
    "{kind} {name} can only be created by users and the cluster controller; node agent {user} may not create claims"
)
AGENT_OTHER_NODE = (
    "{kind} {name} can only be written by the node agent of its own node; it belongs to node {node} "
    "but the token of {user} is bound to node {agent_node}"
)
AGENT_NODE_FIELD = (
    "{kind} {name} can only be written by the node agent of its own node; {field} is {value} "
    "but the token of {user} is bound to node {agent_node}"
)
AGENT_NAME_MISMATCH = (
    "{kind} {name} can only be written by a node agent under the name recomputed from its node and {what}; "
    "node {agent_node} and {value} give {expected}"
)
AGENT_NAME_FORM = (
    "{kind} {name} can only be written by the node agent of its own node; the name does not have the form "
    "{expected} of node {agent_node}"
)
AGENT_RESOURCE_NAME = (
    "{kind} {name} can only be offered by its agent under its own names; {user} set {field} to {value}, but it may "
    "be {allowed}; a name of another node's device is never this device's"
)
AGENT_CLAIM_CHANGE = (
    "{kind} {name} can only have the finalizer {finalizer} and its status changed by a node agent; "
    "{user} also changed {what}"
)

# -- addresses and ids (A11) ----------------------------------------------------------------------------------

BAD_ADDRESS = "{kind} {name} can only name PCI addresses of the form 0000:3b:00.0 in {field}; got {value}"
BAD_USB_FIELD = "{kind} {name} can only have {field} {form}; got {value}"

# -- claim CREATE (A1, A1u, A2, A3, A4, A5, owner) ------------------------------------------------------------

OWNER_MISSING = (
    "{kind} {name} can only be created with the annotation {annotation} naming its owner; it has none; "
    "check that the mutating webhook is configured for {resource}"
)
OWNER_MISMATCH = (
    "{kind} {name} can only be requested for oneself; the annotation {annotation} names {owner} "
    "but the requester is {user}; remove the annotation and let the webhook set it"
)
CLAIM_PERMISSION = (
    "{kind} {name} can only be created by users allowed to claim {device_kind} {name}; user {user} lacks the verb "
    "claim on {device_resource}; ask an administrator for a role that grants it"
)
CLAIM_NAME = (
    "{kind} {name} must be named like the device it claims; spec.nodeName {node} and spec.address {address} "
    "name {device_kind} {expected}; name the claim {expected}"
)
DEVICE_MISSING = (
    "{kind} {name} can only claim an existing {device_kind}; {device_kind} {name} does not exist; "
    "list the devices with kubectl get {device_resource}"
)
DEVICE_FIELD_MISMATCH = (
    "{kind} {name} can only claim the device its name says; {field} is {value} but {device_kind} {name} has {actual}"
)
DEVICE_ABSENT = (
    "{kind} {name} can only claim a device present on its node; {device_kind} {name} is marked absent; "
    "reconnect the device or wait until the node agent finds it again"
)
OWNER_REFERENCE_MISMATCH = (
    "{kind} {name} can only carry an ownerReference to its own {device_kind}; it refers to {ref_kind} {ref_name} "
    "with uid {ref_uid} but {device_kind} {name} has uid {uid}; drop the ownerReference and let the webhook add it"
)
ALREADY_CLAIMED = (
    "{kind} {name} can only claim a free device; {device_kind} {name} is already claimed by {other}; "
    "ask {other} to release it"
)
NO_IOMMU = (
    "pcideviceclaim {name} can only claim a PCI device that has an IOMMU group; pcidevice {name} has none; "
    "turn the IOMMU on for node {node}: enable VT-d (Intel) or AMD-Vi/IOMMU (AMD) in the firmware and add "
    "intel_iommu=on (Intel) or amd_iommu=on iommu=pt (AMD) to the kernel command line, then reboot the node"
)
HOST_CRITICAL = (
    "pcideviceclaim {name} can only claim a device the host does not need; pcidevice {name} is host-critical "
    "({reasons}); choose another device"
)
GROUP_UNKNOWN_MEMBER = (
    "pcideviceclaim {name} can only claim a complete IOMMU group; group {group} on node {node} also holds {address}, "
    "which has no pcidevice object; wait until the node agent reports it or move the device to another slot"
)
GROUP_CRITICAL_MEMBER = (
    "pcideviceclaim {name} can only claim an IOMMU group without host-critical devices; group {group} also holds "
    "pcidevice {member} ({reasons}); move one of the devices to another slot or choose another device"
)
GROUP_OWNED_MEMBER = (
    "pcideviceclaim {name} can only claim an IOMMU group that goes to one owner; group {group} also holds "
    "pcidevice {member}, claimed by {other}; ask {other} to release pcideviceclaim {member}"
)
GROUP_USB_MEMBER = (
    "pcideviceclaim {name} can only claim an IOMMU group whose USB controllers have no claimed USB devices; "
    "group {group} also holds pcidevice {member} with usbdeviceclaims {claims} behind it; delete those claims first"
)
USB_BEHIND_CONTROLLER = (
    "pcideviceclaim {name} can only claim a USB controller without claimed USB devices; usbdeviceclaims {claims} "
    "use devices behind it; delete those claims first"
)
USB_CONTROLLER_CLAIMED = (
    "usbdeviceclaim {name} can only claim a USB device whose host controller stays with the host; its controller "
    "pcidevice {controller} is claimed by {other}; delete pcideviceclaim {controller} first"
)
USB_CONTROLLER_GROUP_CLAIMED = (
    "usbdeviceclaim {name} can only claim a USB device whose host controller stays with the host; its controller "
    "pcidevice {controller} shares IOMMU group {group} with pcidevice {member}, claimed by {other}; "
    "delete pcideviceclaim {member} first"
)
WARN_OBSERVE_ONLY = (
    "{kind} {name} targets node {node}, whose agent runs in observe mode: it discovers devices but never binds or "
    "releases one, so the claim stays Bound=False (reason ObserveOnly) until the node leaves observe mode (the "
    "chart value agent.observeOnly, or the node label devices.harvesterhci.io/observe-only=true)"
)
WARN_SIBLINGS = (
    "pcideviceclaim {name} shares IOMMU group {group} on node {node} with unclaimed devices {siblings}; "
    "a VM can use it only once the whole group is claimed: create pcideviceclaims {siblings} for {owner} as well"
)

# -- claim UPDATE (A6) and status -----------------------------------------------------------------------------

SPEC_IMMUTABLE = "{kind} {name} can only keep the spec it was created with; spec changed; delete and re-create it"
OWNER_IMMUTABLE = "{kind} {name} can only keep its owner; the annotation {annotation} changed from {old} to {new}"
ADOPTED_ANNOTATION = (
    "{kind} {name} can only carry the annotation {annotation} as the takeover set it when it adopted the claim from "
    "upstream (it keeps the pooled resource name); {user} added, changed or removed it"
)
CLAIM_METADATA = (
    "{kind} {name} can only have its {fields} changed by its owner {owner} (or the cluster controller, the takeover "
    "and cluster-admins); {user} is not its owner; ask {owner}"
)
OWNER_REFERENCES_IMMUTABLE = "{kind} {name} can only keep the ownerReferences it was created with; they changed"
FINALIZER_REMOVAL = (
    "{kind} {name} can only lose the finalizer {finalizer} through the node agent of node {node}, or the cluster "
    "controller once the node is gone; {user} removed it; delete the claim and let the agent release the device"
)
STATUS_WRITER = (
    "{kind} {name} can only have its status written by the node agent of node {node} or the cluster controller; "
    "{user} may not"
)

# -- claim DELETE (A7) ----------------------------------------------------------------------------------------

RELEASE_PERMISSION = (
    "{kind} {name} can only be deleted by its owner {owner} or by users allowed to release it; user {user} lacks "
    "the verb release on {device_resource} {name}; ask {owner} or an administrator to delete it"
)
JANITOR_NODE_PRESENT = (
    "{kind} {name} can only be deleted by the cluster controller once its node is gone; node {node} still exists"
)

# -- device objects (A8, A10u) --------------------------------------------------------------------------------

DEVICE_WRITER = (
    "{kind} {name} can only be {verb} by the node agent of its node, the garbage collector or cluster-admins; "
    "user {user} may not; to use the device create a {claim_kind} instead"
)
DEVICE_DELETE_CLAIMED = (
    "{kind} {name} can only be deleted while unclaimed or once node {node} is gone; {claim_kind} {name} of {owner} "
    "holds it; delete the claim first"
)

# -- KubeVirt CR (A10) ----------------------------------------------------------------------------------------

KUBEVIRT_OPERATION = "kubevirt {name} can only be updated by a node agent, never {verb}; {user} tried"
KUBEVIRT_OTHER_CHANGE = (
    "kubevirt {name} can only have spec.configuration.permittedHostDevices.pciHostDevices and .usb entries changed "
    "by a node agent; {user} also changed {what}"
)
KUBEVIRT_ADD = (
    "kubevirt {name} can only gain permittedHostDevices entries for devices claimed on node {node}; the {section} "
    "entry {resource} names {why}"
)
KUBEVIRT_SELECTOR = (
    "kubevirt {name} can only gain permittedHostDevices entries that select the claimed device; the {section} entry "
    "{resource} selects {selector} but the claimed devices on node {node} are {expected}"
)
KUBEVIRT_EXTERNAL = (
    "kubevirt {name} can only gain permittedHostDevices entries with externalResourceProvider: true, so that "
    "KubeVirt does not hand out the device itself; the {section} entry {resource} lacks it"
)
KUBEVIRT_REMOVE = (
    "kubevirt {name} can only lose permittedHostDevices entries no claim on another node needs; the {section} entry "
    "{resource} is needed by claimed devices {devices}"
)
KUBEVIRT_MALFORMED = "kubevirt {name} can only hold lists of objects in {field}; got {value}"

# -- VMs, VMIs, pools, replica sets, instancetypes (A9, A9v) and pods (A12) -----------------------------------

VM_DEVICE_NAME = (
    "{kind} {name} can only name {device_kind} {device} by its resource name {expected}; its {field} entry {entry} "
    "asks for {device_name}; set deviceName to {expected}"
)
VM_UNCLAIMED = (
    "{kind} {name} can only use claimed devices; {device_kind} {device} (resource {resource}) has no claim; "
    "create {claim_kind} {device} first"
)
VM_NODES = "{kind} {name} can only use devices of one node; it names devices on nodes {nodes}"
VM_USE = (
    "{kind} {name} can only use devices its requester may use in namespace {namespace}; user {user} lacks the verb "
    "use on {device_resource} {device}; ask an administrator for a RoleBinding in {namespace} that grants it"
)
VM_TAKEN = (
    "{kind} {name} can only use devices no other requester's VM names; {device_kind} {device} is named by {other} "
    "(requested by {other_user}); remove it from {other} first"
)
HOLD_TAKEN = (
    "{kind} {name} can only use devices no other requester's VM names; {device_kind} {device} is held for "
    "{holder} by {workload}; remove it there first, or retry in a few seconds if that request did not go through"
)
NAME_BEFORE_CLAIM = (
    "{kind} {name} can only ask for devices by a name they are offered under; its {field} entry asks for "
    "{device_name}, the name {device_kind} {device} gets once claimed; create {claim_kind} {device} first, then use "
    "its status.resourceName"
)
NAME_NOT_OFFERED = (
    "{kind} {name} can only ask for devices by a name they are offered under; its {field} entry asks for "
    "{device_name}, but {device_kind} {device} is offered as {offered}; ask for {offered}"
)
NAME_DRA = (
    "{kind} {name} can only ask for devices by a name they are offered under; its {field} entry asks for "
    "{device_name}, but {device_kind} {device} is offered through Dynamic Resource Allocation (its claim sets "
    "spec.offer: DRA) and under no resource name; ask for it with a ResourceClaim for driver {driver}"
)
NAME_POOLED_UNUSED = (
    "{kind} {name} can only ask for devices by a name they are offered under; its {field} entry asks for "
    "{device_name}, the pooled name of models {models}, under which no device is offered now; ask for the "
    "status.resourceName of a claimed device"
)
NAME_NO_DEVICE = (
    "{kind} {name} can only ask for devices by a name they are offered under; its {field} entry asks for "
    "{device_name}, shaped like the name of a device on node {node}, which has no such device; ask for the "
    "status.resourceName of a claimed device"
)
VM_GROUP_UNKNOWN = (
    "{kind} {name} can only use complete IOMMU groups; pcidevice {device} shares group {group} on node {node} with "
    "{address}, which has no pcidevice object; wait until the node agent reports it"
)
VM_GROUP_UNCLAIMED = (
    "{kind} {name} can only use complete IOMMU groups; pcidevice {device} shares group {group} on node {node} with "
    "unclaimed pcidevice {member}; create pcideviceclaim {member} for {owner}"
)
VM_GROUP_OWNER = (
    "{kind} {name} can only use complete IOMMU groups of one owner; pcidevice {device} shares group {group} with "
    "pcidevice {member}, claimed by {other}; ask {other} to release pcideviceclaim {member}"
)
VM_GROUP_MISSING = (
    "{kind} {name} can only use complete IOMMU groups; pcidevice {device} shares group {group} with pcidevice "
    "{member}, which it does not name; add a hostDevices entry with deviceName {resource}"
)
VM_POOL_NODE = (
    "{kind} {name} can only ask for pooled resources one node holds claimed; no node has {count} claimed devices of "
    "{resource} that {user} may use{pinned}"
)
VMI_OWNER_UNKNOWN = (
    "{kind} {name} can only name devices when {user} creates it for a known owner; {why}; retry once the owner "
    "is visible"
)
NO_RECORD = (
    "{kind} {name} can only get devices whose requester the webhook recorded; {owner_kind} {owner} carries no "
    "{annotation} record (it was written before this check, or the record was removed); re-apply {owner_kind} "
    "{owner} (kubectl apply, or edit and save it) as a user who may use its devices, then try again"
)
CONTROLLER_UNTRACED = (
    "{kind} {name} can only name devices when {user} writes it for a pool or a restore whose requester the webhook "
    "recorded; {why}; create the VM yourself, or restore or clone it through a VirtualMachineRestore or "
    "VirtualMachineClone"
)
RECORD_MISMATCH = (
    "{kind} {name} can only carry the annotation {annotation} as the webhook writes it (the requester it judged); "
    "it holds {value} where the webhook wrote {expected}; drop the annotation from your manifest"
)
POD_DEVICE = (
    "pod {name} can only request device resources when virt-controller creates it for an admitted "
    "virtualmachineinstance; {user} requested {resources}{why}; create a VirtualMachine instead"
)
POOL_PIN = (
    "{kind} {name} can only run on the node whose pool it was judged for; its pooled devices are on node {node} "
    "but every required node-affinity term must hold metadata.name In [{node}] and it is pinned to {pinned}; keep "
    "the term the webhook adds (or pin it to a node where you have claimed devices of that model)"
)
POOL_OWNER = (
    "pcideviceclaim {name} can only join a resource pool of one owner; node {node} pools devices {model} and "
    "pcideviceclaim {other_claim} belongs to {other}; set spec.disableResourcePooling: true or ask {other}"
)

# -- claim DELETE while in use (A7) ---------------------------------------------------------------------------

CLAIM_NAMED_BY_VM = (
    "{kind} {name} can only be deleted while no VM or VMI names {device_kind} {name}; {holders} name it; "
    "remove the device from them or delete them first"
)
CLAIM_ALLOCATED = (
    "{kind} {name} can only be deleted while the kubelet has not handed the device out; pods {pods} hold it; "
    "stop them first"
)

# -- Dynamic Resource Allocation: ResourceClaims and ResourceClaimTemplates (policy.dra) -------------------------

DRA_ADMIN_ACCESS = (
    "{kind} {name} can only ask for passthrough devices without adminAccess; request {request} sets adminAccess: "
    "true and may get devices of {drivers}, which are never shared; drop adminAccess or pin another driver"
)
DRA_NO_DEVICE = (
    "{kind} {name} can only pin devices that exist; request {request} pins {pin}, which no {device_kind} matches; "
    "list the devices with kubectl get {device_resource}"
)
DRA_UNCLAIMED = (
    "{kind} {name} can only get claimed devices; request {request} pins {device_kind} {device}, which has no claim; "
    "create {claim_kind} {device} with spec.offer: DRA first"
)
DRA_ONE_PATH = (
    "{kind} {name} can only get devices offered through DRA; {claim_kind} {device} offers {device_kind} {device} "
    "through the device plugin, and a device is offered through one path at a time; re-create the claim with "
    "spec.offer: DRA, or ask for its resource name in a VM"
)
DRA_USE = (
    "{kind} {name} can only get devices its requester may use in namespace {namespace}; user {user} lacks the verb "
    "use on {device_resource} {device}, which request {request} may get; ask an administrator for a RoleBinding in "
    "{namespace} that grants it, or pin devices {user} may use"
)
DRA_GROUP_MEMBER = (
    "{kind} {name} can only get whole IOMMU groups; pcidevice {device} shares group {group} on node {node} with "
    "pcidevice {member}, which no request pins; add a request with the selector {selector}"
)
DRA_GROUP_UNKNOWN = (
    "{kind} {name} can only get whole IOMMU groups; pcidevice {device} shares group {group} on node {node} with "
    "{address}, which has no pcidevice object; wait until the node agent reports it"
)
DRA_NOT_NARROWED = (
    "{kind} {name} can only select devices of {drivers} by their owner when no selector pins one; request {request} "
    "lacks the selector {selector}; let the mutating webhook add it (check that it is configured for {resource}) or "
    "pin devices, e.g. {example}"
)
DRA_UNTRACED = (
    "{kind} {name} can only get devices of {drivers} when {user} makes it from a ResourceClaimTemplate whose "
    "requester the webhook recorded; {why}; re-create the template (kubectl apply) as a user who may use the devices"
)
WARN_DRA_NONE_OWNED = (
    "{kind} {name} selects devices of {drivers} owned by {user}, and none is offered through DRA now; it stays "
    "pending until a claim of {user} with spec.offer: DRA is bound"
)
WARN_DRA_PARTIAL_GROUPS = (
    "{kind} {name} selects among devices of {user} that share IOMMU groups with other functions ({devices}); the node "
    "agent prepares only whole groups: ask for every member (allocationMode: All with a selector on iommuGroup, or "
    "one pinned request per member)"
)
SLICE_WRITER = (
    "resourceslice {name} of driver {driver} can only be written by the node agent of node {node}, and deleted by "
    "that node's kubelet, the garbage collector or cluster-admins; {user} may not"
)
SLICE_AGENT_NODE = (
    "resourceslice {name} can only be written by the node agent of its own node, for drivers {drivers}, in a pool "
    "named like the node; it has driver {driver}, spec.nodeName {node} and pool {pool} but the token of {user} is "
    "bound to node {agent_node}"
)
