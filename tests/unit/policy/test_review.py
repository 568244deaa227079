"""The review decoder and the object parsers never fail with anything but their own errors (Hypothesis), and
nothing a request carries makes the policy raise."""

from __future__ import annotations

from typing import Any

import jsonpatch  # type: ignore[import-untyped]
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policy import dispatch, names
from policy.access import Grant, StaticAccess
from policy.objects import MalformedObject, PCIDevice, PCIDeviceClaim, USBDevice, USBDeviceClaim
from policy.review import AdmissionRequest, MalformedReview, UserInfo
from policy.settings import PolicySettings
from policy.snapshot import ClusterIndex
from tests.support.objects import (
    NODE1,
    TENANT_A,
    Lab,
    agent,
    changed,
    controller,
    kubevirt,
    pci_permit,
    pciclaim,
    review,
    usbclaim,
    user,
)
from tests.support.strategies import json_values, mutated

SAMPLES = [
    review("CREATE", pciclaim(Lab.gpu)),
    review("CREATE", pciclaim(Lab.gpu, ui=True), api_version="admission.k8s.io/v1beta1"),
    review("CREATE", usbclaim(Lab.stick, ui=True)),
    review("UPDATE", pciclaim(Lab.gpu), pciclaim(Lab.gpu, finalizers=["devices.harvesterhci.io/agent"])),
    review("UPDATE", pciclaim(Lab.gpu), pciclaim(Lab.gpu), user_info=agent(NODE1), sub_resource="status"),
    review("DELETE", old=pciclaim(Lab.gpu), user_info=user("tenant-b")),
    review("DELETE", old=usbclaim(Lab.stick), user_info=controller()),
    review("CREATE", Lab.gpu, user_info=agent(NODE1)),
    review("UPDATE", Lab.stick, Lab.stick, user_info=agent(NODE1), sub_resource="status"),
    review("DELETE", old=Lab.gpu, user_info=agent(NODE1)),
    review("UPDATE", kubevirt(pci=[pci_permit(Lab.gpu)]), kubevirt(), user_info=agent(NODE1)),
]
VIEW = ClusterIndex.from_objects(Lab.cluster(pciclaim(Lab.audio), usbclaim(Lab.mouse)))
ACCESS = StaticAccess([Grant(TENANT_A, "claim"), Grant("tenant-b", "release")])
SETTINGS = PolicySettings()
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _judge_everything(body: Any) -> None:
    """Decode; if it decodes, validate and mutate; decisions are well-formed and patches apply."""
    try:
        request = AdmissionRequest.from_review(body)
    except MalformedReview as e:
        assert str(e)
        return
    for run in (dispatch.validate, dispatch.mutate):
        d = run(request, VIEW, ACCESS, SETTINGS)
        assert d.code in (200, 400, 403)
        assert d.allowed is (d.code == 200)
        assert d.allowed or (d.message and len(d.message) < 1000)
        if d.patch:
            assert request.object is not None
            jsonpatch.apply_patch(dict(request.object), list(d.patch))


@FUZZ
@given(json_values)
def test_decoder_rejects_arbitrary_json_only_with_malformed_review(body: Any) -> None:
    _judge_everything(body)


@FUZZ
@given(st.sampled_from(SAMPLES).flatmap(mutated))
def test_policy_never_raises_on_reviews_with_one_field_changed(body: Any) -> None:
    _judge_everything(body)


@FUZZ
@given(st.sampled_from(SAMPLES).flatmap(lambda s: mutated(s["request"]["object"] or s["request"]["oldObject"])))
def test_object_parsers_raise_only_malformed_object(obj: Any) -> None:
    for parser in (PCIDevice.from_dict, USBDevice.from_dict, PCIDeviceClaim.from_dict, USBDeviceClaim.from_dict):
        try:
            parser(obj)
        except MalformedObject as e:
            assert str(e)


@FUZZ
@given(json_values)
def test_object_parsers_raise_only_malformed_object_on_arbitrary_json(obj: Any) -> None:
    for parser in (PCIDevice.from_dict, USBDevice.from_dict, PCIDeviceClaim.from_dict, USBDeviceClaim.from_dict):
        try:
            parser(obj)
        except MalformedObject:
            pass


@FUZZ
@given(st.text(max_size=24) | st.from_regex(r"[0-9a-fA-F:./]{6,16}", fullmatch=True))
def test_claims_are_allowed_only_for_addresses_of_the_exact_form(address: str) -> None:
    body = review("CREATE", pciclaim(Lab.gpu, address=address))
    d = dispatch.validate(AdmissionRequest.from_review(body), VIEW, ACCESS, SETTINGS)
    if not names.is_pci_address(address):
        assert not d.allowed and ("spec.address" in d.message)


@pytest.mark.parametrize("api_version", ["admission.k8s.io/v1", "admission.k8s.io/v1beta1"])
def test_decoder_reads_every_field_the_api_server_sends(api_version: str) -> None:
    body = review(
        "UPDATE",
        pciclaim(Lab.gpu),
        pciclaim(Lab.gpu),
        user_info=agent(NODE1),
        sub_resource="status",
        api_version=api_version,
        dry_run=True,
    )
    r = AdmissionRequest.from_review(body)
    assert (r.api_version, r.operation, r.sub_resource, r.dry_run) == (api_version, "UPDATE", "status", True)
    assert (r.resource.group, r.resource.version, r.resource.resource) == (names.GROUP, "v1beta1", "pcideviceclaims")
    assert r.kind.kind == "PCIDeviceClaim" and r.name == Lab.gpu["metadata"]["name"]
    assert r.user.node_name == NODE1 and r.user.username.endswith("pcidevices-agent")
    assert r.object is not None and r.old_object is not None and r.uid == body["request"]["uid"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        pytest.param([], "not an AdmissionReview object", id="a list"),
        pytest.param(changed(SAMPLES[0], "apiVersion", "admission.k8s.io/v2"), "apiVersion must be one of", id="v2"),
        pytest.param(changed(SAMPLES[0], "kind", "Review"), "kind must be AdmissionReview", id="kind"),
        pytest.param(changed(SAMPLES[0], "request", None), "request is missing", id="no request"),
        pytest.param(changed(SAMPLES[0], "request.uid", ""), "request.uid is empty", id="empty uid"),
        pytest.param(changed(SAMPLES[0], "request.operation", "PATCH"), "request.operation must be one of", id="op"),
        pytest.param(changed(SAMPLES[0], "request.resource", None), "request.resource is missing", id="resource"),
        pytest.param(changed(SAMPLES[0], "request.userInfo", None), "request.userInfo is missing", id="no user"),
        pytest.param(changed(SAMPLES[0], "request.userInfo.groups", "x"), "groups must be a list", id="groups"),
        pytest.param(changed(SAMPLES[0], "request.object", [1]), "request.object must be an object", id="object"),
        pytest.param(changed(SAMPLES[0], "request.dryRun", "yes"), "dryRun must be a boolean", id="dry run"),
    ],
)
def test_decoder_says_what_is_malformed(body: Any, message: str) -> None:
    with pytest.raises(MalformedReview, match=message):
        AdmissionRequest.from_review(body)


def test_unknown_resources_are_answered_400() -> None:
    body = changed(SAMPLES[0], "request.resource.resource", "pods")
    d = dispatch.validate(AdmissionRequest.from_review(body), VIEW, ACCESS, SETTINGS)
    assert (d.allowed, d.code) == (False, 400) and "does not handle pods.devices.harvesterhci.io" in d.message


def test_user_node_name_needs_exactly_one_value() -> None:
    extra = "authentication.kubernetes.io/node-name"
    assert UserInfo("a", extra={extra: ("n1",)}).node_name == "n1"
    assert UserInfo("a", extra={extra: ("n1", "n2")}).node_name is None
    assert UserInfo("a", extra={extra: ("",)}).node_name is None
    assert UserInfo("a").node_name is None


def test_users_with_equal_fields_hash_equal_for_caches() -> None:
    a = UserInfo("a", "u", ("g",), {"k": ("v",)})
    b = UserInfo("a", "u", ("g",), {"k": ("v",)})
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
