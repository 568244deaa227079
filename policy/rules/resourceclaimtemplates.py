"""ResourceClaimTemplate admission (resource.k8s.io/v1): rules D0-D6 of policy.rules.draclaims for the template's
creator, whose admission record the template carries twice: on itself, and in `spec.metadata`, which the resource
claim controller copies onto every claim it makes from the template (policy.rules.resourceclaims checks those
claims against the template). The mutating webhook narrows broad requests of `spec.spec` to the creator's devices.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from policy import decision, messages
from policy.decision import Decision
from policy.records import Requester
from policy.rules import draclaims
from policy.rules.context import Context

_INNER = ("spec", "metadata")


def _requester(ctx: Context) -> Requester:
    r = ctx.request
    return Requester.of(r.user, via=f"resourceclaimtemplate {r.namespace}/{r.name}")


def _inner_spec(obj: Mapping[str, Any]) -> object:
    spec = obj.get("spec")
    return spec.get("spec") if isinstance(spec, Mapping) else None


def validate(ctx: Context) -> Decision:
    r = ctx.request
    subject = {"kind": "resourceclaimtemplate", "name": messages.shown(r.name)}
    if r.sub_resource:
        return decision.allow()
    if r.operation == "UPDATE":
        for path in (("metadata",), _INNER):
            new, old = draclaims.record_at(r.object, path), draclaims.record_at(r.old_object, path)
            if new != old:
                return draclaims.record_denial(subject, new, old)
        return decision.allow()
    if r.operation != "CREATE":
        return decision.allow()
    obj = ctx.new()
    if isinstance(obj, Decision):
        return obj
    requester = _requester(ctx)
    judged = draclaims.judge(
        ctx, _inner_spec(obj), kind=draclaims.RESOURCE_CLAIM_TEMPLATE, name=subject["name"], namespace=r.namespace,
        requester=requester,
    )
    if isinstance(judged, Decision):
        return judged
    expected = requester.encode() if judged.ours else None
    for path in (("metadata",), _INNER):
        if draclaims.record_at(obj, path) != expected:
            return draclaims.record_denial(subject, draclaims.record_at(obj, path), expected)
    if judged.ours:
        narrowed = draclaims.not_narrowed(ctx, subject, judged, requester)
        if narrowed is not None:
            return narrowed
    return decision.allow(judged.warnings)


def mutate(ctx: Context) -> Decision:
    r = ctx.request
    if r.sub_resource or r.operation != "CREATE":
        return decision.allow()
    obj = ctx.new()
    if isinstance(obj, Decision):
        return decision.allow()
    requester = _requester(ctx)
    judged = draclaims.judge(
        ctx, _inner_spec(obj), kind=draclaims.RESOURCE_CLAIM_TEMPLATE, name=messages.shown(r.name),
        namespace=r.namespace, requester=requester,
    )
    if isinstance(judged, Decision):
        return decision.allow()
    expected = requester.encode() if judged.ours else None
    ops = draclaims.record_ops(obj, ("metadata",), expected)
    ops.extend(draclaims.record_ops(obj, _INNER, expected))
    inner = _inner_spec(obj)
    if judged.ours and isinstance(inner, Mapping):
        ops.extend(draclaims.narrowing_ops(inner, "/spec/spec", judged, requester))
    return decision.patched(ops, judged.warnings) if ops else decision.allow(judged.warnings)
