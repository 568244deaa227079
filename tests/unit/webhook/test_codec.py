"""The AdmissionReview codec and routes as the API server and hostile callers see them (Flask test client)."""

from __future__ import annotations

import base64
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policy import access, decision, messages, snapshot
from tests.unit.webhook.reviews import make_review
from webhook import app as app_mod
from webhook import codec, heartbeat, metrics
from webhook import settings as settings_mod

PATHS = ["/validate", "/mutate", "/v1/webhook/validation", "/v1/webhook/mutation"]


def _answer(resp: Any) -> dict[str, Any]:
    doc: dict[str, Any] = resp.get_json()
    assert doc["kind"] == "AdmissionReview"
    return doc


@pytest.mark.parametrize("api_version", ["admission.k8s.io/v1", "admission.k8s.io/v1beta1"])
@pytest.mark.parametrize("path", PATHS)
def test_answers_echo_the_request_api_version_and_uid(client: FlaskClient, path: str, api_version: str) -> None:
    review = make_review(api_version=api_version, uid="d1c1c0d8-7f9a-4c59-9b55-3c0f3c1b2a11")
    resp = client.post(path, json=review)
    assert resp.status_code == 200
    doc = _answer(resp)
    assert doc["apiVersion"] == api_version
    assert doc["response"]["uid"] == "d1c1c0d8-7f9a-4c59-9b55-3c0f3c1b2a11"
    assert isinstance(doc["response"]["allowed"], bool)


def test_invalid_json_is_answered_400_without_a_uid(client: FlaskClient) -> None:
    resp = client.post("/validate", data=b'{"apiVersion": "admission.k8s.io/v1", ', content_type="application/json")
    assert resp.status_code == 400
    status = _answer(resp)["response"]["status"]
    assert status["code"] == 400 and "not valid JSON" in status["message"]


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", ""])
def test_a_wrong_content_type_is_answered_415(client: FlaskClient, content_type: str) -> None:
    resp = client.post("/validate", data=json.dumps(make_review()), content_type=content_type)
    assert resp.status_code == 415
    doc = _answer(resp)
    assert doc["response"]["allowed"] is False
    assert "application/json" in doc["response"]["status"]["message"]


def test_a_content_type_with_charset_is_accepted(client: FlaskClient) -> None:
    resp = client.post("/validate", data=json.dumps(make_review()), content_type="application/json; charset=utf-8")
    assert resp.status_code == 200


def test_a_body_over_7_mib_is_answered_413_without_being_parsed(client: FlaskClient) -> None:
    review = make_review()
    review["request"]["object"]["metadata"]["annotations"] = {"big": "x" * (7 * 1024 * 1024)}
    resp = client.post("/validate", data=json.dumps(review), content_type="application/json")
    assert resp.status_code == 413
    assert _answer(resp)["response"]["status"]["code"] == 413


def test_a_body_just_under_the_limit_is_judged(client: FlaskClient) -> None:
    review = make_review(uid="under-limit")
    body = json.dumps(review)
    review["request"]["object"]["metadata"]["annotations"] = {"pad": "x" * (7 * 1024 * 1024 - len(body) - 200)}
    data = json.dumps(review)
    assert len(data) <= 7 * 1024 * 1024
    resp = client.post("/validate", data=data, content_type="application/json")
    assert resp.status_code == 200
    assert _answer(resp)["response"]["uid"] == "under-limit"


@pytest.mark.parametrize(
    "mutation, fragment",
    [
        (lambda r: r["request"].pop("uid"), "request.uid is missing"),
        (lambda r: r["request"].pop("userInfo"), "userInfo is missing"),
        (lambda r: r["request"].pop("resource"), "request.resource is missing"),
        (lambda r: r["request"].update(operation="PATCH"), "request.operation"),
        (lambda r: r.update(apiVersion="admission.k8s.io/v2"), "apiVersion"),
        (lambda r: r["request"].update(object=["not", "an", "object"]), "request.object"),
    ],
    ids=["no uid", "no userInfo", "no resource", "unknown operation", "unknown apiVersion", "object not a map"],
)
def test_a_review_missing_or_mistyping_a_field_is_answered_400_naming_it(
    client: FlaskClient, mutation: Any, fragment: str
) -> None:
    review = make_review(uid="u-echo")
    mutation(review)
    resp = client.post("/validate", json=review)
    assert resp.status_code == 200  # a JSON review: the verdict is in the review, as the API server expects
    response = _answer(resp)["response"]
    assert response["allowed"] is False
    assert response["status"]["code"] == 400
    assert fragment in response["status"]["message"]


def test_a_review_of_an_unknown_resource_is_answered_400(client: FlaskClient) -> None:
    review = make_review(group="", resource="configmaps", kind="ConfigMap", uid="cm")
    response = _answer(client.post("/validate", json=review))["response"]
    assert response["uid"] == "cm"
    assert response["allowed"] is False
    assert response["status"]["code"] == 400
    assert "configmaps" in response["status"]["message"]


def test_a_denial_is_a_403_forbidden_with_the_rules_message(client: FlaskClient, webhook_app: Any) -> None:
    rt = app_mod.runtime(webhook_app)
    rt.validate = lambda *_: decision.deny("A2", 'pcideviceclaim "x" can only claim a device with an IOMMU group')
    response = _answer(client.post("/validate", json=make_review()))["response"]
    assert response["allowed"] is False
    assert response["status"] == {
        "code": 403,
        "reason": "Forbidden",
        "message": 'pcideviceclaim "x" can only claim a device with an IOMMU group',
    }


def test_warnings_and_patches_are_encoded_as_the_api_server_expects(client: FlaskClient, webhook_app: Any) -> None:
    ops = ({"op": "add", "path": "/metadata/annotations", "value": {"a": "b"}},)
    app_mod.runtime(webhook_app).mutate = lambda *_: decision.patched(ops, warnings=["sibling unclaimed"])
    response = _answer(client.post("/mutate", json=make_review()))["response"]
    assert response["allowed"] is True
    assert response["warnings"] == ["sibling unclaimed"]
    assert response["patchType"] == "JSONPatch"
    assert json.loads(base64.b64decode(response["patch"])) == list(ops)


def test_an_exception_in_the_policy_is_a_generic_500_and_the_trace_is_logged(
    client: FlaskClient, webhook_app: Any, caplog: pytest.LogCaptureFixture
) -> None:
    def explode(*_: object) -> decision.Decision:
        raise RuntimeError("secret internal detail")

    app_mod.runtime(webhook_app).validate = explode
    response = _answer(client.post("/validate", json=make_review(uid="boom")))["response"]
    assert response["uid"] == "boom"
    assert response["allowed"] is False
    assert response["status"]["code"] == 500
    assert "secret internal detail" not in json.dumps(response)
    assert response["status"]["message"] == codec.INTERNAL_ERROR_MESSAGE
    assert any(r.exc_info and "secret internal detail" in str(r.exc_info[1]) for r in caplog.records)


def test_admissions_are_counted_by_resource_operation_rule_and_result(client: FlaskClient, webhook_app: Any) -> None:
    app_mod.runtime(webhook_app).validate = lambda *_: decision.deny("A7", "no")
    client.post("/validate", json=make_review(operation="DELETE", name="x"))
    text = client.get("/metrics").get_data(as_text=True)
    assert (
        'pcidevices_webhook_admissions_total{operation="DELETE",resource="pcideviceclaims",'
        'result="denied",rule="A7",webhook="validate"} 1.0'
    ) in text
    assert 'pcidevices_webhook_admission_seconds_count{webhook="validate"} 1.0' in text


# -- fuzzing: nothing a caller sends escapes the codec as anything but Rejected --------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)


def _review_like() -> st.SearchStrategy[Any]:
    base = make_review(uid="fuzz")
    keys = ["uid", "kind", "resource", "name", "operation", "userInfo", "object", "oldObject", "dryRun"]
    return st.dictionaries(st.sampled_from(keys), _json, max_size=6).map(
        lambda patch: {**base, "request": {**base["request"], **patch}}
    )


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.binary(max_size=300)
    | _json.map(lambda v: json.dumps(v).encode())
    | _review_like().map(lambda v: json.dumps(v).encode())
)
def test_the_decoder_either_decodes_or_rejects_with_a_4xx(body: bytes) -> None:
    try:
        envelope, request = codec.decode(body, 7 * 1024 * 1024)
    except codec.Rejected as rejected:
        assert 400 <= rejected.code < 500
        assert rejected.message
    else:
        assert envelope.uid == request.uid


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(_review_like())
def test_the_routes_answer_every_review_shaped_body_with_a_review(client: FlaskClient, review: Any) -> None:
    resp = client.post("/validate", json=review)
    assert resp.status_code == 200
    doc = _answer(resp)
    assert doc["response"]["uid"] == (
        review["request"].get("uid") if isinstance(review["request"].get("uid"), str) else ""
    )
    assert doc["response"]["status"]["code"] != 500


class GatedSource:
    """A view source that is synced once the test says so."""

    def __init__(self) -> None:
        self.synced = threading.Event()

    def start(self) -> None:
        pass

    def ready(self) -> bool:
        return self.synced.is_set()

    def stop(self) -> None:
        pass


def test_readyz_answers_503_until_the_view_has_synced_and_then_200(tmp_path: Path) -> None:
    source = GatedSource()
    synced = source.synced
    app = app_mod.create_app(
        settings_mod.WebhookSettings(cert_dir=tmp_path),
        view=snapshot.ClusterIndex(),
        access=access.StaticAccess(),
        source=source,
    )
    client = app.test_client()
    assert client.get("/readyz").status_code == 503  # not started
    app_mod.runtime(app).start()
    assert client.get("/readyz").status_code == 503  # started, not synced
    synced.set()
    deadline = time.monotonic() + 5
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert client.get("/healthz").status_code == 200


def test_a_worker_asked_before_its_view_is_complete_waits_then_refuses_and_judges_once_synced() -> None:
    """A partial view could allow a claim whose device is already claimed (the other claim not listed yet)."""
    source = GatedSource()
    synced = source.synced
    m = metrics.Metrics()
    app = app_mod.create_app(
        settings_mod.WebhookSettings(unsynced_wait_s=0.3),
        view=snapshot.ClusterIndex(),
        access=access.StaticAccess(),
        metrics=m,
        source=source,
    )
    app_mod.runtime(app).start()
    client = app.test_client()
    started = time.monotonic()
    answer = client.post("/validate", json=make_review()).get_json()["response"]
    assert time.monotonic() - started >= 0.3
    assert answer["allowed"] is False
    assert answer["status"]["code"] == 503 and answer["status"]["message"] == messages.VIEW_NOT_SYNCED
    assert m.view_synced._value.get() == 0

    synced.set()  # the settle thread notices within 0.1 s; this review waits for it
    answer = client.post("/validate", json=make_review()).get_json()["response"]
    assert answer["status"]["message"] != messages.VIEW_NOT_SYNCED  # judged by the policy (the device is unknown)
    assert answer["status"]["code"] == 403
    assert m.view_synced._value.get() == 1


def test_healthz_fails_once_the_certificate_keeper_has_stopped_beating(tmp_path: Path) -> None:
    """Nobody restarts the keeper process; a failing liveness probe makes the kubelet restart the pod."""
    app = app_mod.create_app(
        settings_mod.WebhookSettings(cert_dir=tmp_path, keeper_stale_s=300),
        view=snapshot.ClusterIndex(),
        access=access.StaticAccess(),
    )
    client = app.test_client()
    assert client.get("/healthz").status_code == 200  # no keeper has run here: nothing to judge
    beat = heartbeat.Heartbeat(tmp_path)
    beat.beat()
    assert client.get("/healthz").status_code == 200
    old = time.time() - 301
    os.utime(beat.path, (old, old))
    resp = client.get("/healthz")
    assert (resp.status_code, resp.get_data(as_text=True)) == (503, "certificate keeper stopped")
    unmanaged = app_mod.create_app(
        settings_mod.WebhookSettings(cert_dir=tmp_path, manage_certificates=False),
        view=snapshot.ClusterIndex(),
        access=access.StaticAccess(),
    )
    assert unmanaged.test_client().get("/healthz").status_code == 200  # cert-manager's certificates: no keeper


def test_heartbeat_is_stale_only_after_it_has_beaten_and_then_gone_quiet(tmp_path: Path) -> None:
    now = [1_000_000.0]
    beat = heartbeat.Heartbeat(tmp_path / "certs", clock=lambda: now[0])
    assert not beat.stale(60)
    beat.beat()
    now[0] += 60
    assert not beat.stale(60)
    now[0] += 1
    assert beat.stale(60)
    beat.beat()
    assert not beat.stale(60)
