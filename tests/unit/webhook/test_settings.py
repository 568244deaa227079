"""Settings from the environment, the gunicorn configuration derived from them, and JSON log lines."""

from __future__ import annotations

import datetime
import json
import logging
from pathlib import Path

import pytest

from webhook import certs, gunicorn_conf
from webhook import logging as webhook_logging
from webhook import settings as settings_mod


def test_settings_come_from_prefixed_variables_and_unknown_ones_are_ignored() -> None:
    s = settings_mod.WebhookSettings.from_env(
        {
            "PCIDEVICES_WEBHOOK_BIND": "127.0.0.1:9443",
            "PCIDEVICES_WEBHOOK_WORKERS": "3",
            "PCIDEVICES_WEBHOOK_SAR_TTL_S": "2.5",
            "PCIDEVICES_WEBHOOK_SAR_BROAD_FIRST": "false",
            "PCIDEVICES_WEBHOOK_MANAGE_CERTIFICATES": "false",
            "PCIDEVICES_WEBHOOK_EXTRA_IP_ADDRESSES": "127.0.0.1, ::1",
            "PCIDEVICES_WEBHOOK_KUBECONFIG": "/tmp/kc",
            "PCIDEVICES_POLICY_AGENT_USERNAMES": "system:serviceaccount:x:agent",
            "PCIDEVICES_POLICY_ENFORCE_RELEASE": "false",
            "PROMETHEUS_MULTIPROC_DIR": "/tmp/prom",
            "HOME": "/root",
        }
    )
    assert (s.bind, s.workers, s.sar_ttl_s, s.manage_certificates) == ("127.0.0.1:9443", 3, 2.5, False)
    assert s.extra_ip_addresses == ("127.0.0.1", "::1")
    assert s.sar_broad_first is False and settings_mod.WebhookSettings().sar_broad_first is True
    assert s.kubeconfig == Path("/tmp/kc")
    assert s.metrics_dir == Path("/tmp/prom")
    assert s.policy.agent_usernames == frozenset({"system:serviceaccount:x:agent"})
    assert s.policy.enforce_release is False and s.policy.enforce_claim is True


@pytest.mark.parametrize(
    "var, value", [("PCIDEVICES_WEBHOOK_WORKERS", "two"), ("PCIDEVICES_WEBHOOK_LOG_JSON", "maybe")]
)
def test_a_malformed_setting_names_its_variable(var: str, value: str) -> None:
    with pytest.raises(ValueError, match=var):
        settings_mod.WebhookSettings.from_env({var: value})


def test_the_service_names_cover_every_form_the_api_server_may_use() -> None:
    s = settings_mod.WebhookSettings(namespace="ns", service_name="svc", extra_dns_names=("localhost",))
    assert s.dns_names == ("svc", "svc.ns", "svc.ns.svc", "svc.ns.svc.cluster.local", "localhost")


def test_gunicorn_runs_front_workers_with_keepalive_beyond_the_api_servers_idle_timeout() -> None:
    settings = settings_mod.WebhookSettings()
    conf = gunicorn_conf.build(settings)
    assert conf["worker_class"] == "webhook.worker.FrontWorker"
    assert conf["keepalive"] > 90 and settings.keepalive_s > 90
    assert gunicorn_conf.build(settings_mod.WebhookSettings(worker_class="gthread"))["worker_class"] == "gthread"
    with pytest.raises(ValueError, match="worker_class"):
        gunicorn_conf.build(settings_mod.WebhookSettings(worker_class="sync"))
    assert conf["preload_app"] is True
    assert conf["certfile"].endswith("tls.crt") and conf["keyfile"].endswith("tls.key")


def test_the_tls_context_refuses_anything_below_tls_1_2_and_keeps_the_old_pair_on_a_broken_file(
    tmp_path: Path,
) -> None:
    bundle = certs.fresh(certs.CertPolicy(dns_names=("localhost",)), datetime.datetime.now(datetime.UTC))
    certs.write_files(bundle, tmp_path)
    reloading = gunicorn_conf.ReloadingContext(tmp_path / "tls.crt", tmp_path / "tls.key")
    first = reloading.get()
    assert first.minimum_version.name == "TLSv1_2"
    assert reloading.get() is first  # unchanged files: the same context
    (tmp_path / "tls.crt").write_text("not a certificate")
    assert reloading.get() is first
    certs.write_files(
        certs.fresh(certs.CertPolicy(dns_names=("localhost",)), datetime.datetime.now(datetime.UTC)), tmp_path
    )
    assert reloading.get() is not first
    assert reloading.loads == 2


def test_json_log_lines_carry_the_request_fields(capsys: pytest.CaptureFixture[str]) -> None:
    logger = logging.getLogger("test.webhook.json")
    handler = logging.StreamHandler()
    handler.setFormatter(webhook_logging.JSONFormatter())
    logger.addHandler(handler)
    logger.propagate = False
    try:
        adapter = webhook_logging.RequestLogger(logger, {"uid": "u1", "user": "alice"})
        adapter.warning("denied", extra={"rule": "A7"})
    finally:
        logger.removeHandler(handler)
    line = json.loads(capsys.readouterr().err.strip())
    assert line["msg"] == "denied"
    assert (line["uid"], line["user"], line["rule"], line["level"]) == ("u1", "alice", "A7", "WARNING")
