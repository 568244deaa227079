"""gunicorn worker class that serves through webhook.front (settings `worker_class = "front"`).

gunicorn stays the process manager: the master preloads the app, forks the workers, runs `post_fork` (each worker
starts its own cluster view), restarts a worker that dies or stops sending heartbeats, and `child_exit` keeps the
multiprocess metrics right. Only the connection handling inside a worker is replaced.
"""

from __future__ import annotations

import json
import logging
import os
import ssl
from concurrent import futures
from typing import Any

from gunicorn.workers.base import Worker

from webhook import app as app_mod
from webhook import codec, front, routes
from webhook import metrics as metrics_mod

log = logging.getLogger(__name__)


class MetricsObserver(front.Observer):
    def __init__(self, metrics: metrics_mod.Metrics) -> None:
        self._metrics = metrics
        self._open = -1

    def closed(self, reason: str) -> None:
        self._metrics.connections_closed.labels(reason).inc()

    def open_connections(self, count: int) -> None:
        if count != self._open:  # a multiprocess gauge write is a file write: only on change
            self._open = count
            self._metrics.connections.set(count)


def limits(settings: Any) -> front.Limits:
    return front.Limits(
        handshake_timeout_s=settings.handshake_timeout_s,
        header_timeout_s=settings.header_timeout_s,
        body_timeout_s=settings.body_timeout_s,
        keepalive_s=float(settings.keepalive_s),
        max_connections=settings.max_connections,
        max_header_bytes=settings.max_header_bytes,
        max_body_bytes=settings.max_body_bytes,
        body_budget_bytes=settings.body_budget_bytes,
    )


def too_large_answer(max_body_bytes: int) -> bytes:
    """413 for a body over the limit, as an AdmissionReview (what the app itself answers to one it has read)."""
    body = json.dumps(codec.encode_rejected(codec.Rejected(413, f"the body is over {max_body_bytes} bytes"))).encode()
    head = (
        "HTTP/1.1 413 Content Too Large\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


def inline_admissions(rt: app_mod.Runtime) -> front.Inline:
    """Admission reviews answered on the event loop when nothing needs a wait (routes.admit with wait=False)."""

    def inline(req: front.Request) -> tuple[int, bytes, bytes] | None:
        if req.method != b"POST":
            return None
        webhook = routes.ADMISSION_PATHS.get(req.url.split(b"?", 1)[0].decode("latin-1"))
        if webhook is None:
            return None
        content_type = next((v.decode("latin-1") for k, v in req.headers if k.lower() == b"content-type"), None)
        body = b"".join(req.body)
        try:
            answer, status = routes.admit(rt, webhook, content_type, len(body), lambda: body, wait=False)
        except routes.WouldWait:
            return None
        return status, b"application/json", answer

    return inline


class FrontWorker(Worker):  # type: ignore[misc]
    alive: bool  # set by gunicorn's signal handlers

    def run(self) -> None:
        rt = app_mod.runtime(self.wsgi)
        settings = rt.settings
        context = None
        if self.cfg.is_ssl:
            cfg = self.cfg

            def context() -> ssl.SSLContext:
                ctx: ssl.SSLContext = cfg.ssl_context(cfg, None)
                return ctx

        port = 0
        if self.sockets:
            name = self.sockets[0].sock.getsockname()
            port = name[1] if isinstance(name, tuple) else 0
        executor = futures.ThreadPoolExecutor(max_workers=self.cfg.threads, thread_name_prefix="app")
        server = front.Front(
            self.wsgi,
            context,
            limits(settings),
            executor,
            observer=MetricsObserver(rt.metrics),
            too_large=too_large_answer(settings.max_body_bytes),
            server_port=port,
            inline=inline_admissions(rt),
        )
        ppid = self.ppid

        def alive() -> bool:
            if self.alive and os.getppid() != ppid:
                log.info("gunicorn master is gone; stopping")
                self.alive = False
            return bool(self.alive)

        try:
            front.run(
                server,
                [s.sock for s in self.sockets],
                alive=alive,
                heartbeat=self.notify,
                graceful_timeout_s=float(self.cfg.graceful_timeout),
            )
        finally:
            executor.shutdown(wait=False, cancel_futures=True)
