"""Fuzzing the path every request takes, codec then policy (Hypothesis, a bounded number of examples): arbitrary JSON,
wrong types, huge strings, deep nesting, and random mutations of the real reviews the policy tables deny, of every
kind. Never a 500, never longer than a bound, and never an allow of what the well-formed request is denied.

A mutation here only breaks the request (a node of the wrong JSON type, a huge or deeply nested value where the
original had something of another type); a request broken that way must be rejected (400) or still denied.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policy import decision, dispatch
from policy.access import Grant, StaticAccess
from policy.settings import PolicySettings
from policy.snapshot import ClusterIndex
from tests.support.objects import Lab, judge
from tests.support.strategies import json_values
from tests.unit.policy import test_kubevirts as kubevirts
from tests.unit.policy import test_pcideviceclaims as pciclaims
from tests.unit.policy import test_pcidevices as pcidevices
from tests.unit.policy import test_usbdeviceclaims as usbclaims
from tests.unit.policy import test_usbdevices as usbdevices
from tests.unit.policy import test_virtualmachines as vms
from tests.unit.webhook.reviews import make_review
from webhook import codec

pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")  # reports of huge examples

LIMIT = 7 * 1024 * 1024
BOUND_S = 2.0  # one review, codec and policy together; the real figure is well under a millisecond
Judge = Callable[[dict[str, Any]], decision.Decision]


def _denied() -> list[tuple[str, dict[str, Any], Judge]]:
    """(id, review, how its table judges it) for every row the policy tables deny with 403."""
    out: list[tuple[str, dict[str, Any], Judge]] = []

    def add(param: Any, body: dict[str, Any], run: Judge, code: int | None = None) -> None:
        if (code or 403) == 403:
            out.append((str(param.id), body, run))

    for p in pciclaims.CREATE + pciclaims.UPDATE + pciclaims.DELETE:
        body, allowed, _, extra, nodes, _, code, policy_settings = p.values
        if not allowed:
            cluster = Lab.cluster(*extra, nodes=nodes)
            add(p, body, lambda b, c=cluster, s=policy_settings: judge(b, c, pciclaims.GRANTS, settings=s), code)
    for p in usbclaims.CASES:
        body, allowed, _, extra = p.values
        if not allowed:
            cluster = Lab.cluster(*extra)
            add(p, body, lambda b, c=cluster: judge(b, c, usbclaims.GRANTS))
    for p in pcidevices.CASES:
        body, allowed, _, extra, nodes, code = p.values
        if not allowed:
            cluster = Lab.cluster(*extra, nodes=nodes)
            add(p, body, lambda b, c=cluster: judge(b, c), code)
    for p in usbdevices.CASES:
        body, allowed, _, extra, nodes = p.values
        if not allowed:
            cluster = Lab.cluster(*extra, nodes=nodes)
            add(p, body, lambda b, c=cluster: judge(b, c))
    for p in kubevirts.CASES:
        body, allowed, _, extra, code = p.values
        if not allowed:
            cluster = Lab.cluster(*extra)
            add(p, body, lambda b, c=cluster: judge(b, c), code)
    for p in vms.TABLE:
        body, allowed, _, extra = p.values
        if not allowed:
            cluster = vms.cluster(*extra)
            add(p, body, lambda b, c=cluster: vms.admit(b, c, vms.GRANTS))
    return out


DENIED = _denied()
KINDS = {body["request"]["resource"]["resource"] for _, body, _ in DENIED}


def test_the_corpus_holds_denied_reviews_of_every_kind_the_webhook_judges() -> None:
    assert {"pcideviceclaims", "usbdeviceclaims", "pcidevices", "usbdevices", "kubevirts", "virtualmachines"} <= KINDS
    assert {"pods", "virtualmachineinstances"} <= KINDS
    for _, body, run in DENIED[:: max(1, len(DENIED) // 20)]:
        assert not run(body).allowed  # the rows are as their tables say


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for k, v in items:
        out.append((*prefix, k))
        out.extend(_paths(v, (*prefix, k)))
    return out


def _type(value: Any) -> str:
    return "number" if isinstance(value, int | float) and not isinstance(value, bool) else type(value).__name__


def _deep(depth: int) -> Any:
    value: Any = "x"
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


breakers = st.one_of(
    json_values,
    st.text(min_size=1, max_size=64).map(lambda s: s * (200_000 // len(s))),  # a huge string
    st.integers(min_value=50, max_value=400).map(_deep),  # deep nesting
    st.sampled_from([None, True, 0, -1, 2**64, 1.5, "", [], {}, [None], {"": None}]),
)


# The claim and device kinds, and the others (VMs and the like, pods, restores, the KubeVirt CR) in a test of their
# own; both strict: a wrong-typed field is malformed (400) or still denied, never an allow or a 500.
STRICT = {"pcideviceclaims", "usbdeviceclaims", "pcidevices", "usbdevices"}


def _kind(body: dict[str, Any]) -> str:
    return str(body["request"]["resource"]["resource"])


@st.composite
def broken(draw: st.DrawFn, strict: bool) -> tuple[str, str, dict[str, Any], Judge]:
    """A denied review with one node replaced by a value of another JSON type (huge and deeply nested ones too).

    Not removals, and not null (JSON's way of saying absent): either makes another well-formed request (a VM
    without devices), judged on its own."""
    case, body, run = draw(st.sampled_from([c for c in DENIED if (_kind(c[1]) in STRICT) is strict]))
    doc = copy.deepcopy(body)
    path = draw(st.sampled_from(_paths(doc["request"])))
    parent = doc["request"]
    for key in path[:-1]:
        parent = parent[key]
    old = parent[path[-1]]
    new = draw(breakers.filter(lambda v: v is not None and _type(v) != _type(old)))
    parent[path[-1]] = new
    return case, f"{'.'.join(map(str, path))} = {json.dumps(new)[:80]}", doc, run


def _decoded(doc: Any) -> Any:
    """The request as the webhook would judge it, or None when the codec rejects the body (with a 4xx)."""
    try:
        body = json.dumps(doc).encode()
    except (ValueError, RecursionError):
        return None
    try:
        return codec.decode(body, LIMIT)[1]
    except codec.Rejected as rejected:
        assert 400 <= rejected.code < 500
        return None


def _still_denied(sample: tuple[str, str, dict[str, Any], Judge]) -> None:
    case, how, doc, run = sample
    started = time.perf_counter()
    request = _decoded(doc)
    if request is None:
        return
    d = run(doc)
    assert time.perf_counter() - started < BOUND_S
    assert not d.allowed, f"{case!r} is allowed once broken ({how})"
    assert d.code != 500


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(broken(strict=True))
def test_a_broken_copy_of_a_denied_claim_or_device_review_is_rejected_or_still_denied(
    sample: tuple[str, str, dict[str, Any], Judge],
) -> None:
    _still_denied(sample)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(broken(strict=False))
def test_a_broken_copy_of_a_denied_workload_review_is_rejected_or_still_denied(
    sample: tuple[str, str, dict[str, Any], Judge],
) -> None:
    _still_denied(sample)


ANY_CLUSTER = ClusterIndex.from_objects(Lab.cluster())
ACCESS = StaticAccess([Grant("tenant-a", "*")])


def _judge_all(request: Any) -> None:
    for run in (dispatch.validate, dispatch.mutate):
        d = run(request, ANY_CLUSTER, ACCESS, PolicySettings())
        assert d.code != 500


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(
    st.one_of(
        json_values,
        breakers,
        json_values.map(lambda v: {**make_review(), "request": v}),
        st.sampled_from(DENIED).flatmap(
            lambda c: st.dictionaries(st.sampled_from(sorted(c[1]["request"])), breakers, min_size=1, max_size=3).map(
                lambda patch, c=c: {**c[1], "request": {**c[1]["request"], **patch}}
            )
        ),
    )
)
def test_arbitrary_json_is_decoded_or_rejected_and_never_breaks_the_policy(doc: Any) -> None:
    started = time.perf_counter()
    request = _decoded(doc)
    if request is not None:
        _judge_all(request)
    assert time.perf_counter() - started < BOUND_S


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 200_000 + b"]" * 200_000,
        b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
        b'{"apiVersion":"admission.k8s.io/v1","request":' + b"[" * 50_000 + b"]" * 50_000 + b"}",
        json.dumps({**make_review(), "pad": "x" * (LIMIT - 1000)}).encode()[: LIMIT // 2],
        b"\xff\xfe" + "{}".encode("utf-16-le"),
        b"\x00" * 1000,
    ],
    ids=["deep list", "deep object", "deep request", "truncated huge review", "utf-16", "nul bytes"],
)
def test_pathological_bodies_are_rejected_quickly(body: bytes) -> None:
    started = time.perf_counter()
    assert _decoded_bytes(body) is None
    assert time.perf_counter() - started < BOUND_S


def _decoded_bytes(body: bytes) -> Any:
    try:
        return codec.decode(body, LIMIT)[1]
    except codec.Rejected as rejected:
        assert 400 <= rejected.code < 500
        return None
