"""Certificate generation, rotation with overlap, and the Secret/caBundle handling against a fake API."""

from __future__ import annotations

import base64
import copy
import datetime
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

import apiclient
from webhook import certs

T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
DAY = datetime.timedelta(days=1)
POLICY = certs.CertPolicy(
    dns_names=("pcidevices-webhook.harvester-system.svc", "pcidevices-webhook"),
    ip_addresses=("127.0.0.1",),
    ca_validity=30 * DAY,
    cert_validity=9 * DAY,
    rotate_fraction=1 / 3,
    overlap=datetime.timedelta(hours=1),
)


def _cert(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def _issuer_of(bundle: certs.Bundle) -> x509.Certificate:
    serving = _cert(bundle.tls_cert)
    (issuer,) = [ca for ca in bundle.trusted() if serving.issuer == ca.subject]
    serving.verify_directly_issued_by(issuer)
    return issuer


def test_a_fresh_bundle_has_a_serving_certificate_for_the_service_names_signed_by_the_trusted_ca() -> None:
    bundle = certs.fresh(POLICY, T0)
    serving = _cert(bundle.tls_cert)
    sans = serving.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.DNSName)) == set(POLICY.dns_names)
    assert [str(a) for a in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert _issuer_of(bundle) == _cert(bundle.signing_cert)
    assert serving.not_valid_before_utc < T0  # back-dated for clock skew
    assert serving.not_valid_after_utc == T0 + 9 * DAY


def test_a_valid_bundle_is_kept() -> None:
    bundle = certs.fresh(POLICY, T0)
    assert certs.plan(bundle, POLICY, T0 + DAY) is None


def test_a_serving_certificate_near_its_end_is_reissued_by_the_same_ca() -> None:
    bundle = certs.fresh(POLICY, T0)
    new = certs.plan(bundle, POLICY, T0 + 7 * DAY)
    assert new is not None
    assert new.tls_cert != bundle.tls_cert
    assert new.ca_bundle == bundle.ca_bundle
    assert _issuer_of(new) == _cert(bundle.signing_cert)


def test_a_ca_rotation_first_trusts_both_then_switches_the_serving_certificate_then_drops_the_old_ca() -> None:
    start = certs.plan(certs.fresh(POLICY, T0), POLICY, T0 + 20 * DAY)  # serving certificate renewed on day 20
    assert start is not None
    old_ca = _cert(start.signing_cert)
    # 1. CA near its end: the new CA is trusted beside the old one; the serving certificate stays.
    t1 = T0 + 21 * DAY
    step1 = certs.plan(start, POLICY, t1)
    assert step1 is not None
    assert len(step1.trusted()) == 2 and old_ca in step1.trusted()
    new_ca = _cert(step1.signing_cert)
    assert new_ca != old_ca and step1.trusted()[0] == new_ca
    assert step1.tls_cert == start.tls_cert
    # Within the overlap nothing else changes: the API server may not have the new caBundle yet.
    assert certs.plan(step1, POLICY, t1 + datetime.timedelta(minutes=30)) is None
    # 2. After the overlap the serving certificate moves to the new CA; both CAs stay trusted.
    t2 = t1 + datetime.timedelta(hours=1, minutes=1)
    step2 = certs.plan(step1, POLICY, t2)
    assert step2 is not None
    assert _issuer_of(step2) == new_ca
    assert set(step2.trusted()) == {old_ca, new_ca}
    # 3. Another overlap later (every replica has re-read the Secret), the old CA goes.
    t3 = t2 + datetime.timedelta(hours=1, minutes=1)
    step3 = certs.plan(step2, POLICY, t3)
    assert step3 is not None
    assert step3.trusted() == [new_ca]
    assert step3.tls_cert == step2.tls_cert
    assert certs.plan(step3, POLICY, t3 + DAY) is None


def test_a_forced_ca_rotation_starts_the_same_overlap() -> None:
    start = certs.fresh(POLICY, T0)
    step = certs.plan(start, POLICY, T0 + DAY, force_ca=True)
    assert step is not None and len(step.trusted()) == 2 and step.tls_cert == start.tls_cert


def test_changed_service_names_reissue_the_serving_certificate_at_once() -> None:
    bundle = certs.fresh(POLICY, T0)
    policy = certs.CertPolicy(
        dns_names=("other.ns.svc",),
        ip_addresses=POLICY.ip_addresses,
        ca_validity=POLICY.ca_validity,
        cert_validity=POLICY.cert_validity,
        overlap=POLICY.overlap,
    )
    new = certs.plan(bundle, policy, T0 + datetime.timedelta(minutes=1))
    assert new is not None
    sans = _cert(new.tls_cert).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["other.ns.svc"]


def test_an_expired_ca_means_a_fresh_start() -> None:
    bundle = certs.fresh(POLICY, T0)
    new = certs.plan(bundle, POLICY, T0 + 31 * DAY)
    assert new is not None
    assert bundle.signing_cert not in new.ca_bundle
    assert _issuer_of(new) == _cert(new.signing_cert)


@pytest.mark.parametrize(
    "data",
    [None, {}, {"ca.crt": "bm9wZQ=="}, {k: "bm90IHBlbQ==" for k in certs.KEYS}, {k: "%%%" for k in certs.KEYS}],
    ids=["none", "empty", "partial", "not pem", "not base64"],
)
def test_an_unreadable_secret_is_treated_as_absent(data: Mapping[str, Any] | None) -> None:
    assert certs.Bundle.from_secret_data(data) is None


def test_a_bundle_survives_the_secret_round_trip() -> None:
    bundle = certs.fresh(POLICY, T0)
    assert certs.Bundle.from_secret_data(bundle.to_secret_data()) == bundle


def test_files_are_written_atomically_and_only_when_changed(tmp_path: Path) -> None:
    bundle = certs.fresh(POLICY, T0)
    assert certs.write_files(bundle, tmp_path)
    assert (tmp_path / "tls.crt").read_bytes() == bundle.tls_cert
    assert (tmp_path / "tls.key").stat().st_mode & 0o077 == 0
    assert not certs.write_files(bundle, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ca.crt", "tls.crt", "tls.key"]


# -- CertManager against a fake API --------------------------------------------------------------------------------


class FakeApi:
    """A tiny object store with resourceVersions, Conflict on stale writes, and scripted interference."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.rv = 0
        self.before_write: list[Any] = []  # callables run before the next create/replace (a racing replica)
        self.patches: list[tuple[str, list[Mapping[str, Any]]]] = []

    def _bump(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        self.rv += 1
        obj = copy.deepcopy(dict(body))
        obj.setdefault("metadata", {})["resourceVersion"] = str(self.rv)
        self.objects[path] = obj
        return copy.deepcopy(obj)

    def get(self, res: apiclient.Resource, name: str, *, namespace: str | None = None) -> dict[str, Any]:
        path = res.path(name, namespace)
        if path not in self.objects:
            raise apiclient.NotFound("not found", status=404)
        return copy.deepcopy(self.objects[path])

    def create(
        self, res: apiclient.Resource, body: Mapping[str, Any], *, namespace: str | None = None
    ) -> dict[str, Any]:
        path = res.path(None, namespace)
        while self.before_write:
            self.before_write.pop(0)()
        full = f"{path}/{body['metadata']['name']}"
        if full in self.objects:
            raise apiclient.Conflict("already exists", status=409)
        return self._bump(full, body)

    def replace(
        self, res: apiclient.Resource, name: str, body: Mapping[str, Any], *, namespace: str | None = None
    ) -> dict[str, Any]:
        path = res.path(name, namespace)
        while self.before_write:
            self.before_write.pop(0)()
        if self.objects[path]["metadata"]["resourceVersion"] != body["metadata"]["resourceVersion"]:
            raise apiclient.Conflict("the object has been modified", status=409)
        return self._bump(path, body)

    def json_patch(
        self, res: apiclient.Resource, name: str, ops: Sequence[Mapping[str, Any]], *, namespace: str | None = None
    ) -> dict[str, Any]:
        path = res.path(name, namespace)
        self.patches.append((path, list(ops)))
        obj = self.objects[path]
        for op in ops:
            if op["op"] == "test":
                assert obj["metadata"]["resourceVersion"] == op["value"]
            else:
                _, _, i, _, _ = op["path"].split("/")
                obj["webhooks"][int(i)]["clientConfig"]["caBundle"] = op["value"]
        return self._bump(path, obj)


SECRET = "/api/v1/namespaces/harvester-system/secrets/pcidevices-webhook-certs"
VWC = "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/pcidevices-validating"


def _manager(api: FakeApi, now: datetime.datetime = T0) -> certs.CertManager:
    return certs.CertManager(
        api,  # type: ignore[arg-type]
        namespace="harvester-system",
        secret_name="pcidevices-webhook-certs",
        configurations=[
            ("validatingwebhookconfigurations", "pcidevices-validating"),
            ("mutatingwebhookconfigurations", "pcidevices-mutating"),
        ],
        policy=POLICY,
        clock=lambda: now,
    )


def _config_with_two_webhooks(api: FakeApi) -> None:
    api._bump(
        VWC,
        {
            "metadata": {"name": "pcidevices-validating"},
            "webhooks": [{"name": "a", "clientConfig": {"url": "https://x"}}, {"name": "b", "clientConfig": {}}],
        },
    )


def test_the_first_replica_creates_the_secret_and_patches_every_webhooks_ca_bundle() -> None:
    api = FakeApi()
    _config_with_two_webhooks(api)
    bundle = _manager(api).ensure()
    assert certs.Bundle.from_secret_data(api.objects[SECRET]["data"]) == bundle
    expected = base64.b64encode(bundle.ca_bundle).decode()
    assert [w["clientConfig"]["caBundle"] for w in api.objects[VWC]["webhooks"]] == [expected, expected]
    assert api.patches[0][1][0]["op"] == "test"  # conditional on the configuration's resourceVersion
    # a second run finds nothing to do
    patches = len(api.patches)
    assert _manager(api).ensure() == bundle
    assert len(api.patches) == patches


def test_two_replicas_starting_together_converge_on_the_secret_written_first() -> None:
    api = FakeApi()
    winner = _manager(api)
    loser = _manager(api)
    won: list[certs.Bundle] = []
    api.before_write.append(lambda: won.append(winner.ensure()))  # the other replica writes in between
    got = loser.ensure()
    assert got == won[0]
    assert certs.Bundle.from_secret_data(api.objects[SECRET]["data"]) == got


def test_a_rotation_racing_another_replica_uses_the_other_replicas_result() -> None:
    api = FakeApi()
    _manager(api).ensure()
    later = T0 + 21 * DAY
    other: list[certs.Bundle] = []
    api.before_write.append(lambda: other.append(_manager(api, later).ensure()))
    got = _manager(api, later).ensure()
    assert got == other[0]
    assert len(got.trusted()) == 2


def test_ensure_logs_without_clashing_with_log_record_attributes(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    api = FakeApi()
    _manager(api).ensure()  # a LogRecord attribute in extra= (e.g. "created") raises KeyError
    assert any(r.getMessage() == "certificate secret written" for r in caplog.records)
