"""Webhook settings: one frozen value built once from the environment in __main__, then passed everywhere."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from policy import settings as policy_settings

PREFIX = "PCIDEVICES_WEBHOOK_"
POLICY_PREFIX = "PCIDEVICES_POLICY_"
MAX_BODY_BYTES = 7 * 1024 * 1024  # the API server's own request limit is 3 MiB; objects plus oldObject fit in 7


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    # serving
    bind: str = "0.0.0.0:8443"
    workers: int = 2
    threads: int = 8
    # The API server keeps idle connections to webhooks for 90 s; a shorter keep-alive makes it reuse connections
    # we already closed (spurious "connection reset" admissions failures).
    keepalive_s: int = 120
    # How connections are served: "front" (asyncio + TLS + httptools in front of the app, webhook/front.py: deadlines
    # and bounds below) or "gthread" (gunicorn's threads read requests themselves: no deadlines; kept for comparison).
    worker_class: str = "front"
    # Deadlines (front): a client is cut when its TLS handshake, its request head or its body takes longer.
    handshake_timeout_s: float = 5.0
    header_timeout_s: float = 5.0
    body_timeout_s: float = 10.0
    # Bounds per worker process (front): open connections (handshakes included), bytes of one request head, bytes
    # of request bodies held by all connections together (a request that would go past it is answered 503).
    max_connections: int = 2048
    max_header_bytes: int = 64 * 1024
    body_budget_bytes: int = 64 * 1024 * 1024
    timeout_s: int = 30
    graceful_timeout_s: int = 30
    max_body_bytes: int = MAX_BODY_BYTES
    cert_dir: Path = Path("/tmp/pcidevices-webhook-certs")
    # certificates (names of the objects the webhook maintains)
    namespace: str = "harvester-system"
    service_name: str = "pcidevices-webhook"
    secret_name: str = "pcidevices-webhook-certs"
    validating_configuration: str = "pcidevices-validating"
    mutating_configuration: str = "pcidevices-mutating"
    extra_dns_names: tuple[str, ...] = ()
    extra_ip_addresses: tuple[str, ...] = ()
    ca_validity_s: int = 10 * 365 * 86400
    cert_validity_s: int = 365 * 86400
    rotate_fraction: float = 1 / 3  # rotate when less than this part of the validity is left
    overlap_s: int = 600  # new CA published this long before the serving certificate switches to it
    cert_check_interval_s: float = 60.0
    keeper_stale_s: float = 300.0  # /healthz fails when the keeper has not been alive for this long
    manage_certificates: bool = True
    # cluster access
    kubeconfig: Path | None = None  # None: in-cluster service account
    view_source: str = "watch"  # "watch", or "file:<path>" (a JSON list of objects; benchmarks and offline tests)
    resync_backoff_s: float = 2.0
    watch_timeout_s: int = 300
    sar_ttl_s: float = 10.0
    sar_cache_size: int = 8192
    # Ask first whether the user may do the verb on every object of the resource (one cached answer per user covers
    # all devices, as RBAC rules without resourceNames grant); only a "no" leads to the question about the one object.
    sar_broad_first: bool = True
    # A worker that is asked before its own view is complete waits this long for it, then refuses (503): a partial
    # view could allow a claim on a device whose existing claim it has not seen yet.
    unsynced_wait_s: float = 5.0
    # Devices named exactly by an admitted VM are held for its requester by a Lease in `namespace` (webhook.holds),
    # so parallel requests of two requesters cannot both be admitted; a hold whose requester no longer names the
    # device is taken over once it is older than hold_grace_s.
    hold_devices: bool = True
    hold_grace_s: float = 30.0
    # prometheus_client's multiprocess directory (its own variable PROMETHEUS_MULTIPROC_DIR): all workers in /metrics
    metrics_dir: Path | None = None
    # logging
    log_level: str = "INFO"
    log_json: bool = True
    # benchmarks only: answer every review with "allowed" (the framework floor); never set in production
    bench_floor: bool = False
    policy: policy_settings.PolicySettings = field(default_factory=policy_settings.PolicySettings)

    @property
    def dns_names(self) -> tuple[str, ...]:
        svc, ns = self.service_name, self.namespace
        return (svc, f"{svc}.{ns}", f"{svc}.{ns}.svc", f"{svc}.{ns}.svc.cluster.local", *self.extra_dns_names)

    @property
    def certfile(self) -> Path:
        return self.cert_dir / "tls.crt"

    @property
    def keyfile(self) -> Path:
        return self.cert_dir / "tls.key"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> WebhookSettings:
        """Build from PCIDEVICES_WEBHOOK_<FIELD> variables (and PCIDEVICES_POLICY_<FIELD> for the policy).

        Unknown variables are ignored; a malformed value raises ValueError naming the variable.
        """
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        defaults = cls()
        for name in cls.__dataclass_fields__:
            if name in ("policy", "metrics_dir"):
                continue
            raw = env.get(PREFIX + name.upper())
            if raw is None:
                continue
            values[name] = _parse(PREFIX + name.upper(), raw, getattr(defaults, name))
        if env.get("PROMETHEUS_MULTIPROC_DIR"):
            values["metrics_dir"] = Path(env["PROMETHEUS_MULTIPROC_DIR"])
        policy_env = {k[len(POLICY_PREFIX) :]: v for k, v in env.items() if k.startswith(POLICY_PREFIX)}
        values["policy"] = policy_settings.PolicySettings.from_mapping(policy_env)
        return cls(**values)  # type: ignore[arg-type]


def _parse(var: str, raw: str, default: object) -> object:
    try:
        if isinstance(default, bool):
            lowered = raw.strip().lower()
            if lowered not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                raise ValueError(raw)
            return lowered in ("1", "true", "yes", "on")
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        if isinstance(default, tuple):
            return tuple(p.strip() for p in raw.split(",") if p.strip())
        if isinstance(default, Path) or var.endswith("KUBECONFIG"):
            return Path(raw) if raw else None
        return raw
    except ValueError as e:
        raise ValueError(f"{var} has a malformed value {raw!r}") from e
