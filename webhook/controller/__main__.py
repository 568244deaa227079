"""`pcidevices-controller`: the leader-elected cluster controller (the only place here that reads env and argv).

Settings come from PCIDEVICES_CONTROLLER_* (LEASE_NAME, COMPLETE_GROUPS auto|warn, GRACE_S, RESYNC_S,
LEASE_DURATION_S, KUBECONFIG, LOG_LEVEL), POD_NAMESPACE (Lease and Events) and POD_NAME (the holder identity).
"""

from __future__ import annotations

import argparse
import datetime
import logging
import logging.config
import os
import signal
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

import apiclient.client
from webhook import logging as webhook_logging
from webhook.controller import apply, lease, plan, store

log = logging.getLogger("webhook.controller")
PREFIX = "PCIDEVICES_CONTROLLER_"


@dataclass(frozen=True, slots=True)
class ControllerSettings:
    namespace: str = "harvester-system"
    identity: str = ""
    lease_name: str = "pcidevices-controller"
    events_namespace: str = "default"  # Events of cluster-scoped objects must live in "default"
    complete_groups: str = plan.AUTO
    grace_s: float = 10.0
    resync_s: float = 2.0
    lease_duration_s: int = 15
    kubeconfig: str = ""
    log_level: str = "INFO"
    log_json: bool = True

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ControllerSettings:
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = env.get(PREFIX + f.name.upper())
            if raw is None:
                continue
            default = getattr(cls(), f.name)
            try:
                if isinstance(default, bool):
                    values[f.name] = raw.strip().lower() in ("1", "true", "yes", "on")
                elif isinstance(default, int):
                    values[f.name] = int(raw)
                elif isinstance(default, float):
                    values[f.name] = float(raw)
                else:
                    values[f.name] = raw
            except ValueError as e:
                raise ValueError(f"{PREFIX}{f.name.upper()} has a malformed value {raw!r}") from e
        values.setdefault("namespace", env.get("POD_NAMESPACE") or "harvester-system")
        values.setdefault("identity", env.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}")
        settings = cls(**values)  # type: ignore[arg-type]
        if settings.complete_groups not in (plan.AUTO, plan.WARN):
            raise ValueError(f"{PREFIX}COMPLETE_GROUPS must be auto or warn; got {settings.complete_groups!r}")
        return settings


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def run(settings: ControllerSettings, stop: threading.Event) -> int:
    api = apiclient.client.Client.connect(Path(settings.kubeconfig) if settings.kubeconfig else None)
    elector = lease.Elector(
        api, settings.namespace, settings.lease_name, settings.identity, settings.lease_duration_s, _now
    )
    facts = store.Store()
    watches = store.Watches(lambda: api, facts)
    watches.start()

    def view() -> apply.Observed:
        return apply.Observed(*facts.snapshot())

    controller = apply.Controller(
        api,
        settings.events_namespace,
        settings.complete_groups,
        datetime.timedelta(seconds=settings.grace_s),
        _now,
        view=view,
    )
    renew_every = max(1.0, settings.lease_duration_s / 3)
    leading_until = 0.0
    clock = time.monotonic
    while not stop.is_set():
        try:
            if elector.try_acquire_or_renew():
                leading_until = clock() + settings.lease_duration_s
            else:
                leading_until = 0.0
        except apiclient.KubeError:
            log.warning("lease round failed", exc_info=True)
        if clock() < leading_until and watches.synced():
            try:
                controller.reconcile()
            except apiclient.KubeError:
                log.warning("reconcile pass failed", exc_info=True)
            stop.wait(min(settings.resync_s, renew_every))
        else:
            stop.wait(renew_every)
    watches.stop()
    if leading_until:
        elector.release()
    return 0


def main(argv: list[str] | None = None) -> int:
    # No options: everything comes from the environment; --help says so (the image's smoke test runs it).
    argparse.ArgumentParser(
        prog="pcidevices-controller",
        description="The leader-elected cluster controller: IOMMU-group completion and the janitor for claims of "
        "vanished nodes.",
        epilog=f"Settings come from the environment: {PREFIX}* (LEASE_NAME, COMPLETE_GROUPS auto|warn, GRACE_S, "
        "RESYNC_S, LEASE_DURATION_S, KUBECONFIG, LOG_LEVEL), POD_NAMESPACE and POD_NAME.",
    ).parse_args(argv)
    settings = ControllerSettings.from_env(os.environ)
    logging.config.dictConfig(webhook_logging.config_dict(settings.log_level, settings.log_json))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    log.info("starting", extra={"identity": settings.identity, "lease": settings.lease_name})
    return run(settings, stop)


if __name__ == "__main__":
    raise SystemExit(main())
