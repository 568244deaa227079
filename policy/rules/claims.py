"""Rules shared by PCI and USB claims: the owner (mutated and checked), the claim permission, immutability (A6),
the status writers, release (A7) and the mutation patch.

The modules pcideviceclaims.py and usbdeviceclaims.py keep what differs (which device, A1/A1u, A2-A5).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from policy import decision, messages, names
from policy.decision import Decision
from policy.names import ANNOTATION_ADOPTED, LEGACY_PREFIX
from policy.objects import FINALIZER_AGENT, Claim, Device, MalformedObject, Meta, OwnerReference
from policy.rules import vmlike
from policy.rules.context import Context
from policy.rules.identity import Role

OWNER_PATH = "/metadata/annotations/" + names.ANNOTATION_REQUESTED_BY.replace("~", "~0").replace("/", "~1")


@dataclass(frozen=True, slots=True)
class ClaimKind:
    kind: str  # as messages spell it: "pcideviceclaim"
    resource: str  # API plural: "pcideviceclaims"
    device_kind: str  # "pcidevice"
    device_api_kind: str  # "PCIDevice"
    device_resource: str  # "pcidevices"
    parse: Callable[[object], Claim]

    def fields(self, name: str) -> dict[str, str]:
        """The placeholders every claim message shares."""
        return {
            "kind": self.kind,
            "name": messages.shown(name),
            "device_kind": self.device_kind,
            "device_resource": self.device_resource,
            "resource": self.resource,
        }


def parse(ck: ClaimKind, obj: Mapping[str, Any], name: str) -> Claim | Decision:
    try:
        return ck.parse(obj)
    except MalformedObject as e:
        return decision.malformed(messages.MALFORMED_OBJECT.format(kind=ck.kind, name=messages.shown(name), problem=e))


# -- CREATE -----------------------------------------------------------------------------------------------------


def check_creator(ctx: Context, ck: ClaimKind, claim: Claim) -> Decision | None:
    """Agents create no claims; the owner annotation names the requester (the controller and the takeover may
    name another owner); users need the `claim` verb on the device."""
    f = ck.fields(claim.name)
    role = ctx.identity.role
    if role is Role.AGENT:
        return decision.deny("A10", messages.AGENT_CREATES_CLAIM.format(**f, user=ctx.user))
    annotation = names.ANNOTATION_REQUESTED_BY
    if not claim.owner:
        return decision.deny("owner", messages.OWNER_MISSING.format(**f, annotation=annotation))
    if role is not Role.MIGRATION and ANNOTATION_ADOPTED in _annotations(ctx.request.object or {}):
        return _adopted_denial(ctx, ck, claim.name)
    if role in (Role.CONTROLLER, Role.MIGRATION):
        return None
    if claim.owner != ctx.request.user.username:
        return decision.deny(
            "owner",
            messages.OWNER_MISMATCH.format(
                **f, annotation=annotation, owner=messages.shown(claim.owner), user=ctx.user
            ),
        )
    if ctx.settings.enforce_claim and not ctx.access.allowed(
        ctx.request.user, verb="claim", group=names.GROUP, resource=ck.device_resource, name=claim.name
    ):
        return decision.deny("claim", messages.CLAIM_PERMISSION.format(**f, user=ctx.user))
    return None


def check_device_links(ck: ClaimKind, claim: Claim, device: Device, existing: Claim | None) -> Decision | None:
    """The device is present, ownerReferences to a device name this one (with its uid), and no other owner has it."""
    f = ck.fields(claim.name)
    if device.absent:
        return decision.deny("A1", messages.DEVICE_ABSENT.format(**f))
    for ref in claim.owner_references:
        if ref.kind == ck.device_api_kind and (ref.name != device.name or (device.uid and ref.uid != device.uid)):
            return decision.deny("A1", _reference_mismatch(f, ref, device))
    if existing is not None and existing.owner != claim.owner:
        return decision.deny("A1", messages.ALREADY_CLAIMED.format(**f, other=messages.shown(existing.owner)))
    return None


def _reference_mismatch(f: Mapping[str, str], ref: OwnerReference, device: Device) -> str:
    return messages.OWNER_REFERENCE_MISMATCH.format(
        **f,
        ref_kind=ref.kind,
        ref_name=messages.shown(ref.name),
        ref_uid=messages.shown(ref.uid),
        uid=messages.shown(device.uid),
    )


# -- UPDATE -----------------------------------------------------------------------------------------------------


def validate_update(ctx: Context, ck: ClaimKind, node_of: Callable[[Claim], str]) -> Decision:
    new_obj, old_obj = ctx.new(), ctx.old()
    if isinstance(new_obj, Decision):
        return new_obj
    if isinstance(old_obj, Decision):
        return old_obj
    name = ctx.request.name
    old = parse(ck, old_obj, name)
    if isinstance(old, Decision):
        return old
    new = parse(ck, new_obj, name)
    if isinstance(new, Decision):
        return new
    node = node_of(old)
    f = ck.fields(old.name)
    if ctx.request.sub_resource == "status":
        return _validate_status(ctx, f, node)
    identity = ctx.identity
    if identity.role is Role.AGENT:
        if not identity.is_agent_of(node):
            return _other_node(ctx, f, node)
        changed = _changes(old_obj, new_obj, ignore_finalizer=True)
        if changed:
            return decision.deny(
                "A10", messages.AGENT_CLAIM_CHANGE.format(**f, finalizer=FINALIZER_AGENT, user=ctx.user, what=changed)
            )
        return decision.allow()
    if _section(old_obj, "spec") != _section(new_obj, "spec"):
        return decision.deny("A6", messages.SPEC_IMMUTABLE.format(**f))
    if old.owner != new.owner and not (identity.role is Role.MIGRATION and not old.owner):
        return decision.deny(
            "A6",
            messages.OWNER_IMMUTABLE.format(
                **f,
                annotation=names.ANNOTATION_REQUESTED_BY,
                old=messages.shown(old.owner) if old.owner else "none",
                new=messages.shown(new.owner) if new.owner else "none",
            ),
        )
    if identity.role is not Role.MIGRATION and _annotations(old_obj).get(ANNOTATION_ADOPTED) != _annotations(
        new_obj
    ).get(ANNOTATION_ADOPTED):
        return _adopted_denial(ctx, ck, old.name)
    if identity.role is not Role.GC and _meta(old_obj).get("ownerReferences") != _meta(new_obj).get("ownerReferences"):
        return decision.deny("A6", messages.OWNER_REFERENCES_IMMUTABLE.format(**f))
    shaped = [k for k in ("labels", "finalizers") if _meta(old_obj).get(k) != _meta(new_obj).get(k)]
    if shaped and not _may_shape(ctx, ck, old):
        return decision.deny(
            "A6",
            messages.CLAIM_METADATA.format(
                **f, fields=" and ".join(shaped), owner=messages.shown(old.owner or "(none)"), user=ctx.user
            ),
        )
    if FINALIZER_AGENT in old.finalizers and FINALIZER_AGENT not in new.finalizers:
        janitor = identity.role is Role.CONTROLLER and ctx.node_gone(node)
        if not janitor:
            return decision.deny(
                "A6",
                messages.FINALIZER_REMOVAL.format(
                    **f, finalizer=FINALIZER_AGENT, node=messages.shown(node), user=ctx.user
                ),
            )
    return decision.allow()


def _may_shape(ctx: Context, ck: ClaimKind, claim: Claim) -> bool:
    """Who may change a claim's labels and finalizers: its owner (for a legacy owner, holders of `claim` on the
    device), the cluster controller and the garbage collector for theirs, the takeover, and cluster-admins. Anyone
    else with update rights could keep a released device claimed with a finalizer, or relabel another owner's
    claim's node."""
    user = ctx.request.user
    if ctx.identity.role in (Role.CONTROLLER, Role.MIGRATION, Role.GC):
        return True
    if claim.owner and claim.owner == user.username:
        return True
    if claim.owner.startswith(LEGACY_PREFIX) and ctx.access.allowed(
        user, verb="claim", group=names.GROUP, resource=ck.device_resource, name=claim.name
    ):
        return True
    return ctx.is_cluster_admin()


def _validate_status(ctx: Context, f: Mapping[str, str], node: str) -> Decision:
    identity = ctx.identity
    if identity.role is Role.CONTROLLER or identity.is_agent_of(node):
        return decision.allow()
    if identity.role is Role.AGENT:
        return _other_node(ctx, f, node)
    return decision.deny("status", messages.STATUS_WRITER.format(**f, node=messages.shown(node), user=ctx.user))


def _other_node(ctx: Context, f: Mapping[str, str], node: str) -> Decision:
    return decision.deny(
        "A10",
        messages.AGENT_OTHER_NODE.format(
            **f, node=messages.shown(node), user=ctx.user, agent_node=messages.shown(ctx.identity.node)
        ),
    )


def _changes(old: Mapping[str, Any], new: Mapping[str, Any], *, ignore_finalizer: bool) -> str:
    """What changed in spec, labels, annotations, ownerReferences and finalizers (other than ours), as a phrase."""
    out = []
    if _section(old, "spec") != _section(new, "spec"):
        out.append("spec")
    om, nm = _meta(old), _meta(new)
    for key in ("labels", "annotations", "ownerReferences"):
        if (om.get(key) or None) != (nm.get(key) or None):
            out.append(f"metadata.{key}")
    of, nf = _finalizers(om), _finalizers(nm)
    if ignore_finalizer:
        of.discard(FINALIZER_AGENT)
        nf.discard(FINALIZER_AGENT)
    if of != nf:
        out.append("metadata.finalizers")
    return ", ".join(out)


def _finalizers(meta: Mapping[str, Any]) -> set[str]:
    raw = meta.get("finalizers")
    return {f for f in raw if isinstance(f, str)} if isinstance(raw, list) else set()


def _annotations(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    raw = _meta(obj).get("annotations")
    return raw if isinstance(raw, Mapping) else {}


def _adopted_denial(ctx: Context, ck: ClaimKind, name: str) -> Decision:
    """Only the takeover marks a claim adopted: the mark keeps a pooled resource name under perDevice."""
    return decision.deny(
        "A6", messages.ADOPTED_ANNOTATION.format(**ck.fields(name), annotation=ANNOTATION_ADOPTED, user=ctx.user)
    )


def _section(obj: Mapping[str, Any], key: str) -> Any:
    value = obj.get(key)
    return value if value else None


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


# -- DELETE -----------------------------------------------------------------------------------------------------


def validate_delete(
    ctx: Context, ck: ClaimKind, lookup: Callable[[str], Claim | None], node_of: Callable[[Claim], str]
) -> Decision:
    """Only the owner or a `release` holder (A7); trusted identities as configured; then the in-use hook."""
    name = ctx.request.name
    claim: Claim | None
    if ctx.request.old_object is not None:
        parsed = parse(ck, ctx.request.old_object, name)
        if isinstance(parsed, Decision):
            return parsed
        claim = parsed
    else:
        claim = lookup(name)
    if claim is None:
        return decision.allow()  # nothing we know of; the API server answers NotFound
    node = node_of(claim)
    f = ck.fields(claim.name)
    role = ctx.identity.role
    if role in (Role.GC, Role.MIGRATION):
        return decision.allow()
    if role is Role.CONTROLLER:
        if ctx.node_gone(node):
            return decision.allow()
        return decision.deny("A7", messages.JANITOR_NODE_PRESENT.format(**f, node=messages.shown(node)))
    user = ctx.request.user
    permitted = (
        (claim.owner and claim.owner == user.username)
        or not ctx.settings.enforce_release
        or ctx.access.allowed(user, verb="release", group=names.GROUP, resource=ck.device_resource, name=claim.name)
        or (
            claim.owner.startswith(LEGACY_PREFIX)
            and ctx.access.allowed(user, verb="claim", group=names.GROUP, resource=ck.device_resource, name=claim.name)
        )
    )
    if not permitted:
        owner = messages.shown(claim.owner) if claim.owner else "(none)"
        return decision.deny("A7", messages.RELEASE_PERMISSION.format(**f, owner=owner, user=ctx.user))
    if ctx.node_gone(node):
        return decision.allow()
    in_use = check_in_use(ctx, ck, claim, node)
    return in_use if in_use is not None else decision.allow()


def check_in_use(ctx: Context, ck: ClaimKind, claim: Claim, node: str) -> Decision | None:
    """A7's in-use check: the kubelet has the device allocated (status.allocatedTo), or a VM or VMI names it.

    With a pooled resource name only VMs and VMIs on (or pinned to) the claim's node count: another node's pool
    does not hold this device.
    """
    f = ck.fields(claim.name)
    if claim.allocated_to:
        return decision.deny("A7", messages.CLAIM_ALLOCATED.format(**f, pods=messages.listed(claim.allocated_to)))
    view = ctx.view
    device: Device | None = (
        view.pcidevice(claim.name) if ck.device_api_kind == "PCIDevice" else view.usbdevice(claim.name)
    )
    if device is None or not device.resource_name:
        return None
    holders = vmlike.holders(ctx, device)
    if len(view.devices_with_resource(device.resource_name)) > 1:
        holders = [w for w in holders if w.node == node]
    if not holders:
        return None
    shown = ", ".join(f"{w.kind.lower()} {messages.shown(w.key)}" for w in holders[:5])
    if len(holders) > 5:
        shown += f" and {len(holders) - 5} more"
    return decision.deny("A7", messages.CLAIM_NAMED_BY_VM.format(**f, holders=shown))


# -- mutation ---------------------------------------------------------------------------------------------------


def mutate_create(ctx: Context, ck: ClaimKind, device: Device | None, node: str) -> Decision:
    """Owner annotation, default spec.userName, ownerReference to the device and the nodename label, as a patch.

    Never denies: whatever is malformed is left for the validator to explain.
    """
    obj = ctx.request.object
    if ctx.request.operation != "CREATE" or ctx.request.sub_resource or obj is None:
        return decision.allow()
    meta = obj.get("metadata")
    if not isinstance(meta, Mapping):
        return decision.allow()
    username = ctx.request.user.username
    privileged = ctx.identity.role in (Role.CONTROLLER, Role.MIGRATION)
    ops: list[dict[str, Any]] = []

    annotations = meta.get("annotations")
    key = names.ANNOTATION_REQUESTED_BY
    owner = username
    if not isinstance(annotations, Mapping):
        ops.append({"op": "add", "path": "/metadata/annotations", "value": {key: username}})
    elif key not in annotations:
        ops.append({"op": "add", "path": OWNER_PATH, "value": username})
    elif privileged and isinstance(annotations[key], str) and annotations[key]:
        owner = annotations[key]
    elif annotations[key] != username:
        ops.append({"op": "replace", "path": OWNER_PATH, "value": username})

    spec = obj.get("spec")
    default_user = owner if privileged else username
    if spec is None:
        ops.append({"op": "add", "path": "/spec", "value": {"userName": default_user}})
    elif isinstance(spec, Mapping) and not spec.get("userName"):
        ops.append({"op": "add", "path": "/spec/userName", "value": default_user})

    if device is not None and device.uid:
        ref = {"apiVersion": names.API_VERSION, "kind": ck.device_api_kind, "name": device.name, "uid": device.uid}
        refs = meta.get("ownerReferences")
        if not isinstance(refs, list) or not refs:
            ops.append({"op": "add", "path": "/metadata/ownerReferences", "value": [ref]})
        elif not any(isinstance(r, Mapping) and r.get("kind") == ck.device_api_kind for r in refs):
            ops.append({"op": "add", "path": "/metadata/ownerReferences/-", "value": ref})

    if node:
        labels = meta.get("labels")
        if not isinstance(labels, Mapping):
            ops.append({"op": "add", "path": "/metadata/labels", "value": {names.LABEL_NODENAME: node}})
        elif names.LABEL_NODENAME not in labels:
            ops.append({"op": "add", "path": "/metadata/labels/" + names.LABEL_NODENAME, "value": node})
    return decision.patched(ops)


def meta_name(obj: Mapping[str, Any] | None, fallback: str) -> str:
    """The object's name for a lookup before it is parsed (mutation must not fail on malformed input)."""
    if obj is None:
        return fallback
    try:
        return Meta.from_dict(obj).name
    except MalformedObject:
        return fallback
