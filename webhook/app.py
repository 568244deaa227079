"""The app factory: wires settings, the cluster view, access checks and metrics into a Flask app.

Nothing happens at import. gunicorn builds the app once in the master (preload) and each worker calls
`runtime(app).start()` after fork, so every worker owns its watch threads and API connections.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from flask import Flask

import apiclient.client
from policy import access as policy_access
from policy import decision, dispatch, review, snapshot
from policy import settings as policy_settings
from webhook import access as webhook_access
from webhook import cache, heartbeat, holds, routes, workloads
from webhook import metrics as metrics_mod
from webhook import settings as settings_mod

log = logging.getLogger(__name__)

Judge = Callable[
    [review.AdmissionRequest, snapshot.ClusterView, policy_access.Access, policy_settings.PolicySettings],
    decision.Decision,
]
EXTENSION = "pcidevices"


class ViewSource(Protocol):
    def start(self) -> None: ...
    def ready(self) -> bool: ...
    def stop(self) -> None: ...


class _StaticSource:
    """A view handed in whole (tests): always ready."""

    def start(self) -> None:
        pass

    def ready(self) -> bool:
        return True

    def stop(self) -> None:
        pass


class _LazyKube:
    """One API connection per process, made on first use (after fork), shared by the SAR checks and the watches."""

    def __init__(self, kubeconfig: Path | None) -> None:
        self._kubeconfig = kubeconfig
        self._lock = threading.Lock()
        self._kube: apiclient.client.Client | None = None

    def get(self) -> apiclient.client.Client:
        with self._lock:
            if self._kube is None:
                self._kube = apiclient.client.Client.connect(self._kubeconfig)
            return self._kube

    def review_access(self, body: Any) -> bool:
        return self.get().review_access(body)


def _allow_all(*_: object) -> decision.Decision:
    return decision.allow()


@dataclass
class Runtime:
    settings: settings_mod.WebhookSettings
    view: snapshot.ClusterView
    access: policy_access.Access
    metrics: metrics_mod.Metrics
    source: ViewSource
    validate: Judge
    mutate: Judge
    keeper_heartbeat: heartbeat.Heartbeat
    holds: holds.Holds | None = None  # device holds taken before an answer (None: views handed in whole, tests)
    freeze_view: bool = True  # False for views handed in whole (tests): they belong to the caller
    started: bool = False
    settled: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        """Start this process's view (watches or file); call once per worker, after fork."""
        if not self.started:
            self.started = True
            self.source.start()
            threading.Thread(target=self._settle, name="settle-view", daemon=True).start()

    def _settle(self) -> None:
        """Once the view is complete, move it out of the garbage collector's sight.

        A view of 100,000 devices is millions of objects; without this every full collection walks them all and
        admissions stall for hundreds of milliseconds. Objects from later watch events are collected as usual.
        """
        while not self.source.ready():
            time.sleep(0.1)
        if self.freeze_view:
            gc.collect()
            gc.freeze()
            log.info("cluster view settled", extra={"frozen_objects": gc.get_freeze_count()})
        self.settled.set()
        self.metrics.view_synced.set(1)

    def ready(self) -> bool:
        return self.started and self.source.ready() and self.settled.is_set()

    def wait_synced(self, timeout_s: float) -> bool:
        """True once this process's view is complete, waiting up to timeout_s. A runtime that was never started
        (an app embedded with a view handed in whole) judges with what it was given."""
        return not self.started or self.settled.is_set() or self.settled.wait(timeout_s)


def create_app(
    settings: settings_mod.WebhookSettings | None = None,
    *,
    view: snapshot.ClusterView | None = None,
    access: policy_access.Access | None = None,
    metrics: metrics_mod.Metrics | None = None,
    source: ViewSource | None = None,
    device_holds: holds.Holds | None = None,
) -> Flask:
    """Build the app; `view`/`access` replace the watch-fed view and SubjectAccessReview (tests, benchmarks)."""
    settings = settings or settings_mod.WebhookSettings()
    metrics = metrics or metrics_mod.Metrics(multiprocess_dir=settings.metrics_dir)
    connection = _LazyKube(settings.kubeconfig)
    freeze_view = view is None
    if view is not None:
        source = source or _StaticSource()
    else:
        index = snapshot.ClusterIndex()
        view = index
        if device_holds is None and settings.hold_devices:
            device_holds = holds.Holds(connection.get, settings.namespace, index, grace_s=settings.hold_grace_s)
        if source is None:
            if settings.view_source.startswith("file:"):
                source = cache.FileSource(Path(settings.view_source[len("file:") :]), index)
            elif settings.view_source == "watch":
                source = workloads.Sources(
                    cache.WatchSource(
                        connection.get,
                        index,
                        metrics=metrics,
                        watch_timeout_s=settings.watch_timeout_s,
                        backoff_s=settings.resync_backoff_s,
                    ),
                    # part 2: VMs, VMIs, pools, replica sets and instancetypes (A7, A9, A9v, A12)
                    workloads.WorkloadSource(
                        connection.get,
                        index,
                        metrics=metrics,
                        watch_timeout_s=settings.watch_timeout_s,
                        backoff_s=settings.resync_backoff_s,
                    ),
                )
            else:
                raise ValueError(f"view_source must be 'watch' or 'file:<path>'; got {settings.view_source!r}")
    if access is None:
        access = webhook_access.CachedAccess(
            connection,
            ttl_s=settings.sar_ttl_s,
            max_entries=settings.sar_cache_size,
            metrics=metrics,
            broad_first=settings.sar_broad_first,
        )
    validate: Judge = dispatch.validate
    mutate: Judge = dispatch.mutate
    if settings.bench_floor:
        log.warning("bench_floor is set: every review is allowed without any check")
        validate = mutate = _allow_all
    app = Flask(__name__)
    # One byte over the limit, so a streamed (chunked) body that is too large shows as too long instead of being
    # silently cut at the limit (webhook.codec.decode rejects anything longer than max_body_bytes).
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes + 1
    app.extensions[EXTENSION] = Runtime(
        settings=settings,
        view=view,
        access=access,
        metrics=metrics,
        source=source,
        validate=validate,
        mutate=mutate,
        freeze_view=freeze_view,
        keeper_heartbeat=heartbeat.Heartbeat(settings.cert_dir),
        holds=device_holds,
    )
    app.register_blueprint(routes.bp)
    return app


def runtime(app: Flask) -> Runtime:
    rt: Runtime = app.extensions[EXTENSION]
    return rt
