"""Serving certificates: a private CA and a serving certificate kept in a Secret, rotated with an overlap.

`plan` is pure (bundle and time in, new bundle or None out); `CertManager` applies it against the API with
optimistic concurrency, so replicas starting together converge on whichever Secret was written first.

Rotation: when the signing CA has less than `rotate_fraction` of its life left, a new CA is added to the trusted
bundle (old and new both trusted) and published in the webhook configurations' caBundle; only after `overlap_s`
does the serving certificate switch to the new CA, and only after another `overlap_s` is the old CA dropped, so the
API server never sees a certificate it does not trust. A serving certificate near its end is re-issued the same way.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import logging
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import apiclient

log = logging.getLogger(__name__)

BACKDATE = datetime.timedelta(minutes=5)  # tolerate clock skew between us and the API server
CA_COMMON_NAME = "pcidevices-webhook-ca"
KEYS = ("ca.crt", "ca-signing.crt", "ca-signing.key", "tls.crt", "tls.key")


@dataclass(frozen=True, slots=True)
class CertPolicy:
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...] = ()
    ca_validity: datetime.timedelta = datetime.timedelta(days=3650)
    cert_validity: datetime.timedelta = datetime.timedelta(days=365)
    rotate_fraction: float = 1 / 3
    overlap: datetime.timedelta = datetime.timedelta(minutes=10)


@dataclass(frozen=True, slots=True)
class Bundle:
    """What the Secret holds (PEM): the trusted CAs (newest first), the signing CA and its key, the serving pair."""

    ca_bundle: bytes
    signing_cert: bytes
    signing_key: bytes
    tls_cert: bytes
    tls_key: bytes

    def to_secret_data(self) -> dict[str, str]:
        values = (self.ca_bundle, self.signing_cert, self.signing_key, self.tls_cert, self.tls_key)
        return {k: base64.b64encode(v).decode() for k, v in zip(KEYS, values, strict=True)}

    @classmethod
    def from_secret_data(cls, data: Mapping[str, Any] | None) -> Bundle | None:
        """The bundle in a Secret's data, or None when a key is missing or not PEM we can read."""
        if not data or any(not isinstance(data.get(k), str) for k in KEYS):
            return None
        try:
            values = [base64.b64decode(data[k], validate=True) for k in KEYS]
            bundle = cls(*values)
            bundle.trusted()
            x509.load_pem_x509_certificate(bundle.signing_cert)
            x509.load_pem_x509_certificate(bundle.tls_cert)
            serialization.load_pem_private_key(bundle.signing_key, None)
            serialization.load_pem_private_key(bundle.tls_key, None)
        except ValueError:
            return None
        return bundle

    def trusted(self) -> list[x509.Certificate]:
        return x509.load_pem_x509_certificates(self.ca_bundle)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def generate_ca(now: datetime.datetime, validity: datetime.timedelta) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    # A unique subject per CA generation keeps old and new CA apart in the bundle (issuer matching by name).
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, CA_COMMON_NAME),
            x509.NameAttribute(NameOID.SERIAL_NUMBER, format(x509.random_serial_number(), "x")),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _pem(cert), _key_pem(key)


def issue_serving(
    ca_cert_pem: bytes,
    ca_key_pem: bytes,
    dns_names: Sequence[str],
    ip_addresses: Sequence[str],
    now: datetime.datetime,
    validity: datetime.timedelta,
) -> tuple[bytes, bytes]:
    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
    ca_key = serialization.load_pem_private_key(ca_key_pem, None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError("the signing CA key is not an EC key")
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
    not_after = min(now + validity, ca_cert.not_valid_after_utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_names[0] if dns_names else "webhook")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return _pem(cert), _key_pem(key)


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _age(cert: x509.Certificate, now: datetime.datetime) -> datetime.timedelta:
    return now - (cert.not_valid_before_utc + BACKDATE)


def _nearly_expired(cert: x509.Certificate, now: datetime.datetime, fraction: float) -> bool:
    lifetime = cert.not_valid_after_utc - (cert.not_valid_before_utc + BACKDATE)
    return cert.not_valid_after_utc - now < lifetime * fraction


def _sans(cert: x509.Certificate) -> tuple[set[str], set[str]]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set(), set()
    return set(ext.get_values_for_type(x509.DNSName)), {str(a) for a in ext.get_values_for_type(x509.IPAddress)}


def fresh(policy: CertPolicy, now: datetime.datetime) -> Bundle:
    ca_cert, ca_key = generate_ca(now, policy.ca_validity)
    tls_cert, tls_key = issue_serving(ca_cert, ca_key, policy.dns_names, policy.ip_addresses, now, policy.cert_validity)
    return Bundle(ca_bundle=ca_cert, signing_cert=ca_cert, signing_key=ca_key, tls_cert=tls_cert, tls_key=tls_key)


def plan(
    current: Bundle | None, policy: CertPolicy, now: datetime.datetime, *, force_ca: bool = False
) -> Bundle | None:
    """The next bundle, or None when `current` is fine as it is. Pure apart from key generation."""
    if current is None:
        return fresh(policy, now)
    trusted = [c for c in current.trusted() if c.not_valid_after_utc > now]
    signing_cert, signing_key = current.signing_cert, current.signing_key
    signing = x509.load_pem_x509_certificate(signing_cert)
    serving = x509.load_pem_x509_certificate(current.tls_cert)
    tls_cert, tls_key = current.tls_cert, current.tls_key

    if signing.not_valid_after_utc <= now or not any(c == signing for c in trusted):
        return fresh(policy, now)  # nothing left to overlap with
    if force_ca or _nearly_expired(signing, now, policy.rotate_fraction):
        signing_cert, signing_key = generate_ca(now, policy.ca_validity)
        signing = x509.load_pem_x509_certificate(signing_cert)
        trusted.insert(0, signing)

    serving_trusted = any(_issued_by(serving, c) for c in trusted) and serving.not_valid_after_utc > now
    names_changed = _sans(serving) != (set(policy.dns_names), set(policy.ip_addresses))
    reissue = not serving_trusted or names_changed
    if not reissue and _age(signing, now) >= policy.overlap:
        reissue = not _issued_by(serving, signing) or _nearly_expired(serving, now, policy.rotate_fraction)
    if reissue:
        tls_cert, tls_key = issue_serving(
            signing_cert, signing_key, policy.dns_names, policy.ip_addresses, now, policy.cert_validity
        )
        serving = x509.load_pem_x509_certificate(tls_cert)

    # Keep a CA while it signs, while it issued the serving certificate, and for `overlap` after the serving
    # certificate moved away from it (other replicas may still serve their copy until they re-read the Secret).
    settled = _age(serving, now) >= policy.overlap
    kept = [c for c in trusted if c == signing or _issued_by(serving, c) or not settled]
    bundle = Bundle(
        ca_bundle=b"".join(_pem(c) for c in kept),
        signing_cert=signing_cert,
        signing_key=signing_key,
        tls_cert=tls_cert,
        tls_key=tls_key,
    )
    return None if bundle == current else bundle


def write_files(bundle: Bundle, cert_dir: Path) -> bool:
    """Write tls.key, tls.crt and ca.crt atomically (rename); return True when anything changed."""
    cert_dir.mkdir(parents=True, exist_ok=True)
    changed = False
    for name, content in (("tls.key", bundle.tls_key), ("ca.crt", bundle.ca_bundle), ("tls.crt", bundle.tls_cert)):
        path = cert_dir / name
        if path.exists() and path.read_bytes() == content:
            continue
        fd, tmp = tempfile.mkstemp(dir=cert_dir, prefix=f".{name}.")
        with os.fdopen(fd, "wb") as f:
            f.write(content)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
        changed = True
    return changed


class CertApi(apiclient.Gets, apiclient.Creates, apiclient.Replaces, apiclient.JsonPatches, Protocol):
    """The calls the keeper makes (apiclient.client.Client; an in-memory fake in unit tests)."""


class CertManager:
    """Keeps the Secret, the webhook configurations' caBundle and the local files in step."""

    def __init__(
        self,
        api: CertApi,
        *,
        namespace: str,
        secret_name: str,
        configurations: Sequence[tuple[str, str]],  # (kind plural, name): validating/mutating configurations
        policy: CertPolicy,
        clock: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.UTC),
    ) -> None:
        self._api = api
        self._namespace = namespace
        self._secret_name = secret_name
        self._configurations = tuple(configurations)
        self._policy = policy
        self._clock = clock

    def ensure(self, *, force_ca: bool = False, attempts: int = 8) -> Bundle:
        """Bring the Secret up to date (creating or rotating it) and publish its CA bundle; return the bundle."""
        for _ in range(attempts):
            try:
                secret: dict[str, Any] | None = self._api.get(
                    apiclient.SECRETS, self._secret_name, namespace=self._namespace
                )
            except apiclient.NotFound:
                secret = None
            current = Bundle.from_secret_data((secret or {}).get("data"))
            new = plan(current, self._policy, self._clock(), force_ca=force_ca)
            if new is None:
                assert current is not None
                self.publish(current.ca_bundle)
                return current
            try:
                self._write_secret(secret, new)
            except apiclient.Conflict:
                log.info("certificate secret changed concurrently; re-reading", extra={"secret": self._secret_name})
                force_ca = False  # whoever won has rotated already
                continue
            log.info("certificate secret written", extra={"secret": self._secret_name, "new_secret": secret is None})
            self.publish(new.ca_bundle)
            return new
        raise apiclient.KubeError("the certificate secret kept changing concurrently", status=409)

    def _write_secret(self, secret: dict[str, Any] | None, bundle: Bundle) -> None:
        if secret is None:
            body = {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": self._secret_name, "namespace": self._namespace},
                "type": "Opaque",
                "data": bundle.to_secret_data(),
            }
            self._api.create(apiclient.SECRETS, body, namespace=self._namespace)
        else:
            # resourceVersion stays in metadata: the PUT fails with Conflict if someone wrote in between.
            data = {**secret, "data": bundle.to_secret_data()}
            self._api.replace(apiclient.SECRETS, self._secret_name, data, namespace=self._namespace)

    def publish(self, ca_bundle: bytes) -> None:
        """Set caBundle on every webhook of our configurations (missing configurations are skipped)."""
        encoded = base64.b64encode(ca_bundle).decode()
        for plural, name in self._configurations:
            res = apiclient.Resource("admissionregistration.k8s.io", "v1", plural, "")
            try:
                config = self._api.get(res, name)
            except apiclient.NotFound:
                log.info("webhook configuration not found; not patched", extra={"configuration": name})
                continue
            ops: list[dict[str, Any]] = []
            for i, hook in enumerate(config.get("webhooks") or []):
                if (hook.get("clientConfig") or {}).get("caBundle") != encoded:
                    ops.append({"op": "add", "path": f"/webhooks/{i}/clientConfig/caBundle", "value": encoded})
            if ops:
                rv = config["metadata"]["resourceVersion"]
                ops.insert(0, {"op": "test", "path": "/metadata/resourceVersion", "value": rv})
                self._api.json_patch(res, name, ops)
                log.info("caBundle patched", extra={"configuration": name, "webhooks": len(ops) - 1})
