"""ResourceClaim admission (resource.k8s.io/v1): rules D0-D6 of policy.rules.draclaims for the claim's requester,
and the admission record the node agent's last gate reads.

The requester is whoever creates the claim, except for the resource claim controller (kube-controller-manager),
which makes a pod's claims from a ResourceClaimTemplate: such a claim carries the template's record (the controller
copies the template's `spec.metadata`), and passes only when a template of its namespace carries that very record
and spec. A claim's spec is immutable; its record may not change either (the chart sends only UPDATEs that change it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from policy import decision, dra, messages, records
from policy.decision import Decision
from policy.records import Requester
from policy.rules import draclaims
from policy.rules.context import Context


def _subject(ctx: Context, obj: Mapping[str, Any]) -> dict[str, str]:
    meta = obj.get("metadata")
    generated = meta.get("generateName") if isinstance(meta, Mapping) else None
    name = ctx.request.name or (generated if isinstance(generated, str) else "")
    return {"kind": "resourceclaim", "name": messages.shown(name)}


def _from_template(ctx: Context) -> bool:
    return ctx.request.user.username in ctx.settings.resource_claim_controller_usernames


def validate(ctx: Context) -> Decision:
    r = ctx.request
    if r.sub_resource:
        return decision.allow()
    if r.operation == "UPDATE":
        new, old = draclaims.record_at(r.object), draclaims.record_at(r.old_object)
        if new != old:
            return draclaims.record_denial({"kind": "resourceclaim", "name": messages.shown(r.name)}, new, old)
        return decision.allow()
    if r.operation != "CREATE":
        return decision.allow()
    obj = ctx.new()
    if isinstance(obj, Decision):
        return obj
    subject = _subject(ctx, obj)
    record = draclaims.record_at(obj)
    if _from_template(ctx):
        ours = draclaims.reaches_ours(ctx, obj.get("spec"), subject)
        if isinstance(ours, Decision):
            return ours
        if record is None:
            return _untraced(ctx, subject, record) if ours else decision.allow()
        if not _template_of(ctx, obj, record):
            return _untraced(ctx, subject, record) if ours else draclaims.record_denial(subject, record, None)
        if not ours:
            return decision.allow()
        requester = Requester.decode(record)
        if requester is None:
            return _untraced(ctx, subject, record)
    else:
        requester = Requester.of(r.user)
    judged = draclaims.judge(
        ctx, obj.get("spec"), kind=draclaims.RESOURCE_CLAIM, name=subject["name"], namespace=r.namespace,
        requester=requester,
    )
    if isinstance(judged, Decision):
        return judged
    if not _from_template(ctx):
        expected = requester.encode() if judged.ours else None
        if record != expected:
            return draclaims.record_denial(subject, record, expected)
    if judged.ours:
        narrowed = draclaims.not_narrowed(ctx, subject, judged, requester)
        if narrowed is not None:
            return narrowed
    return decision.allow(judged.warnings)


def mutate(ctx: Context) -> Decision:
    """The requester's record stamped and broad requests narrowed to the requester's devices; claims the resource
    claim controller makes carry their template's (the validator explains any denial)."""
    r = ctx.request
    if r.sub_resource or r.operation != "CREATE" or _from_template(ctx):
        return decision.allow()
    obj = ctx.new()
    if isinstance(obj, Decision):
        return decision.allow()
    requester = Requester.of(r.user)
    subject = _subject(ctx, obj)
    judged = draclaims.judge(
        ctx, obj.get("spec"), kind=draclaims.RESOURCE_CLAIM, name=subject["name"], namespace=r.namespace,
        requester=requester,
    )
    if isinstance(judged, Decision):
        return decision.allow()
    ops = draclaims.record_ops(obj, ("metadata",), requester.encode() if judged.ours else None)
    spec = obj.get("spec")
    if judged.ours and isinstance(spec, Mapping):
        ops.extend(draclaims.narrowing_ops(spec, "/spec", judged, requester))
    return decision.patched(ops, judged.warnings) if ops else decision.allow(judged.warnings)


def _template_of(ctx: Context, obj: Mapping[str, Any], record: str | None) -> bool:
    """Whether a template of the claim's namespace carries this record and this spec."""
    digest = dra.spec_digest(obj.get("spec") or {})
    return any(t.record == record and t.digest == digest for t in ctx.view.claim_templates(ctx.request.namespace))


def _untraced(ctx: Context, subject: Mapping[str, str], record: str | None) -> Decision:
    if record is None:
        why = f"it carries no {records.ANNOTATION} record"
    else:
        why = f"no template of namespace {messages.shown(ctx.request.namespace)} carries its record and spec"
    return decision.deny(
        "D7",
        messages.DRA_UNTRACED.format(
            **subject, drivers=messages.listed(dra.DRIVERS), user=messages.shown(ctx.request.user.username), why=why
        ),
    )
