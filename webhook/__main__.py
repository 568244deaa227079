"""`pcidevices-webhook`: the only place that reads the environment and argv.

pcidevices-webhook [serve]          certificates ready, then gunicorn (TLS) with a certificate keeper beside it
pcidevices-webhook certs [--once] [--rotate-ca]
                                    create/rotate the Secret, patch caBundle, write the files; loop unless --once
"""

from __future__ import annotations

import argparse
import datetime
import logging
import logging.config
import signal
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from gunicorn.app.base import BaseApplication

import apiclient.client
from webhook import app as app_mod
from webhook import gunicorn_conf, heartbeat
from webhook import logging as webhook_logging
from webhook import settings as settings_mod

if TYPE_CHECKING:
    from webhook import certs

log = logging.getLogger("webhook")


class WebhookApplication(BaseApplication):  # type: ignore[misc]
    def __init__(self, settings: settings_mod.WebhookSettings) -> None:
        self._settings = settings
        super().__init__()

    def load_config(self) -> None:
        for key, value in gunicorn_conf.build(self._settings).items():
            if key in self.cfg.settings:  # e.g. control_socket_disable exists only in newer gunicorn
                self.cfg.set(key, value)

    def load(self) -> Any:
        return app_mod.create_app(self._settings)


def cert_manager(settings: settings_mod.WebhookSettings) -> certs.CertManager:
    from webhook import certs  # only the keeper process loads `cryptography` (see serve)

    return certs.CertManager(
        apiclient.client.Client.connect(settings.kubeconfig),
        namespace=settings.namespace,
        secret_name=settings.secret_name,
        configurations=(
            ("validatingwebhookconfigurations", settings.validating_configuration),
            ("mutatingwebhookconfigurations", settings.mutating_configuration),
        ),
        policy=certs.CertPolicy(
            dns_names=settings.dns_names,
            ip_addresses=settings.extra_ip_addresses,
            ca_validity=datetime.timedelta(seconds=settings.ca_validity_s),
            cert_validity=datetime.timedelta(seconds=settings.cert_validity_s),
            rotate_fraction=settings.rotate_fraction,
            overlap=datetime.timedelta(seconds=settings.overlap_s),
        ),
    )


def run_certs(settings: settings_mod.WebhookSettings, *, once: bool, rotate_ca: bool) -> int:
    from webhook import certs

    manager = cert_manager(settings)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    force = rotate_ca
    beat = heartbeat.Heartbeat(settings.cert_dir)
    while True:
        beat.beat()  # alive, even when this round fails (serving goes on with the files it has)
        try:
            bundle = manager.ensure(force_ca=force)
            force = False
            if certs.write_files(bundle, settings.cert_dir):
                log.info("certificate files written", extra={"cert_dir": str(settings.cert_dir)})
        except Exception:
            if once:
                raise
            log.warning("certificate check failed; retrying", exc_info=True)
        if once or stop.wait(settings.cert_check_interval_s):
            return 0


def serve(settings: settings_mod.WebhookSettings) -> int:
    keeper: subprocess.Popen[bytes] | None = None
    if settings.metrics_dir is not None:  # counts of a previous run must not be summed into this one
        settings.metrics_dir.mkdir(parents=True, exist_ok=True)
        for stale in settings.metrics_dir.glob("*.db"):
            stale.unlink()
    if settings.manage_certificates:
        # The first round in a process of its own too: `cryptography` loaded here would be in every forked worker.
        deadline = time.monotonic() + 120
        while subprocess.run([sys.executable, "-m", "webhook", "certs", "--once"]).returncode != 0:
            if time.monotonic() > deadline:
                raise RuntimeError("the webhook's certificates could not be made; see the log above")
            log.warning("certificates not ready; retrying")
            time.sleep(2)
        # A separate process: gunicorn's master forks workers, and forking next to a busy thread is unsafe.
        keeper = subprocess.Popen([sys.executable, "-m", "webhook", "certs"])
    try:
        WebhookApplication(settings).run()
    finally:
        if keeper is not None:
            keeper.terminate()
            keeper.wait(10)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pcidevices-webhook")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("serve", help="run the webhook (default)")
    certs_cmd = sub.add_parser("certs", help="maintain the serving certificate")
    certs_cmd.add_argument("--once", action="store_true")
    certs_cmd.add_argument("--rotate-ca", action="store_true", help="start a CA rotation now")
    args = parser.parse_args(argv)
    settings = settings_mod.WebhookSettings.from_env()
    logging.config.dictConfig(webhook_logging.config_dict(settings.log_level, settings.log_json))
    if args.command == "certs":
        return run_certs(settings, once=args.once, rotate_ca=args.rotate_ca)
    return serve(settings)


if __name__ == "__main__":
    raise SystemExit(main())
