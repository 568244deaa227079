"""Prometheus metrics of one webhook process, on a registry the app owns (nothing registered at import)."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

# Admissions take well under 5 ms when healthy; the API server gives up at the configured timeoutSeconds.
_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """One process's metrics. With `multiprocess_dir` (prometheus_client's PROMETHEUS_MULTIPROC_DIR, which must be
    set in the environment before the process starts) /metrics sums every gunicorn worker, not just the one that
    happens to answer the scrape."""

    def __init__(self, registry: CollectorRegistry | None = None, multiprocess_dir: Path | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._multiprocess_dir = multiprocess_dir
        self.admissions = Counter(
            "pcidevices_webhook_admissions",
            "Admission reviews answered, by webhook kind, resource, operation, rule and result.",
            ["webhook", "resource", "operation", "rule", "result"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "pcidevices_webhook_admission_seconds",
            "Time from reading a review to the encoded answer, by webhook kind.",
            ["webhook"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.sar_cache = Counter(
            "pcidevices_webhook_sar_cache",
            "SubjectAccessReview cache lookups, by result (hit or miss).",
            ["result"],
            registry=self.registry,
        )
        self.sar_errors = Counter(
            "pcidevices_webhook_sar_errors",
            "SubjectAccessReviews that failed (the admission then fails closed).",
            registry=self.registry,
        )
        self.watch_restarts = Counter(
            "pcidevices_webhook_watch_relists",
            "Full re-lists of a watched kind (start, expired resourceVersion, errors).",
            ["kind"],
            registry=self.registry,
        )
        self.connections = Gauge(
            "pcidevices_webhook_connections",
            "Open client connections (TLS handshakes under way included), all workers.",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.connections_closed = Counter(
            "pcidevices_webhook_connections_closed",
            "Connections the server closed, by reason: a deadline (handshake, header, body, idle), a limit "
            "(limit: too many open, budget: request bodies), or a request it would not serve (tls, malformed, "
            "too_large, pipeline).",
            ["reason"],
            registry=self.registry,
        )

        self.view_synced = Gauge(
            "pcidevices_webhook_view_synced_workers",
            "Worker processes whose cluster view is complete (each counts 1 once it judges reviews).",
            registry=self.registry,
            multiprocess_mode="livesum",
        )

    def render(self) -> bytes:
        if self._multiprocess_dir is not None:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=str(self._multiprocess_dir))  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        return generate_latest(self.registry)
