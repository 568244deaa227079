"""certificates.mode=secret in a real API server: the webhook serves the certificate of a TLS Secret the user made
(mounted by the chart; here its files), manages no certificate itself, and the API server trusts it through the
caBundle given as a value. Own control plane: the chart owns cluster-wide objects."""

from __future__ import annotations

import base64
import json
import shutil
import tempfile
from pathlib import Path

from devcluster.stack import Stack
from tests.support.controlplane import Binaries, CertificateAuthority, ControlPlane


def test_secret_mode_serves_the_given_certificate_and_patches_nothing(binaries: Binaries) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="chartsecret"))
    cp = ControlPlane(binaries, workdir / "cp")
    stack = Stack(cp, workdir / "stack")
    try:
        cp.start()
        ca = CertificateAuthority("user-provided-ca")
        pair = ca.issue("pcidevices-webhook", dns_names=("pcidevices-webhook.harvester-system.svc",),
                        ip_addresses=("127.0.0.1",))  # fmt: skip
        cp.kubectl("create", "namespace", stack.namespace)
        files = workdir / "tls"
        files.mkdir()
        (files / "tls.crt").write_bytes(pair.cert_pem)
        (files / "tls.key").write_bytes(pair.key_pem)
        cp.kubectl("create", "secret", "tls", "my-webhook-tls", "-n", stack.namespace,
                   f"--cert={files / 'tls.crt'}", f"--key={files / 'tls.key'}")  # fmt: skip
        ca_b64 = base64.b64encode(ca.cert_pem).decode()
        stack.install(
            "certificates.mode=secret", "certificates.secret.name=my-webhook-tls", f"webhook.caBundle={ca_b64}"
        )

        manifest = stack.manifest()
        deploy = next(d for d in manifest if (d["kind"], d["metadata"]["name"]) == ("Deployment", "pcidevices-webhook"))
        volumes = deploy["spec"]["template"]["spec"]["volumes"]
        assert {"name": "tls", "secret": {"secretName": "my-webhook-tls"}} in volumes
        assert not [d for d in manifest if d["kind"] == "Secret"]  # the release makes no certificate Secret

        webhook = stack.start_webhook(cert_dir=files)  # the files of the mounted Secret
        stack.wait_admitting(webhook)
        for kind in ("validatingwebhookconfiguration", "mutatingwebhookconfiguration"):
            name = "pcidevices-validating" if kind.startswith("validating") else "pcidevices-mutating"
            conf = json.loads(cp.kubectl("get", kind, name, "-o", "json").stdout)
            assert {h["clientConfig"]["caBundle"] for h in conf["webhooks"]} == {ca_b64}  # untouched by the webhook
        assert cp.kubectl("get", "secret", "pcidevices-webhook-certs", "-n", stack.namespace, check=False).returncode
        assert (files / "tls.crt").read_bytes() == pair.cert_pem  # not replaced by a certificate of its own
    finally:
        stack.stop()
        cp.stop()
        shutil.rmtree(workdir, ignore_errors=True)
