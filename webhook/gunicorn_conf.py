"""gunicorn settings and hooks, all derived from WebhookSettings (no config file, no environment reads here).

- webhook.worker.FrontWorker by default (connections served by webhook.front: deadlines for the handshake, the
  head and the body, bounded connections and memory); `worker_class = "gthread"` keeps gunicorn's own threads.
  Either way keep-alive is longer than the API server's 90 s idle timeout for webhook connections.
- TLS 1.2 or newer only; the serving certificate is re-read when its file changes (checked per new connection), so
  rotation needs no restart and connections already open finish on the old certificate.
- preload the app in the master (no threads, no connections there); `post_fork` starts each worker's own cluster
  view (watch threads do not survive fork).
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client import multiprocess

from webhook import app as app_mod
from webhook import logging as webhook_logging
from webhook import settings as settings_mod

log = logging.getLogger(__name__)


def build_ssl_context(certfile: Path, keyfile: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(certfile=str(certfile), keyfile=str(keyfile))
    return ctx


class ReloadingContext:
    """One SSLContext per process, rebuilt when the certificate or key file is replaced."""

    def __init__(self, certfile: Path, keyfile: Path) -> None:
        self._certfile = certfile
        self._keyfile = keyfile
        self._lock = threading.Lock()
        self._ctx: ssl.SSLContext | None = None
        self._stamp: tuple[int, ...] = ()
        self.loads = 0

    def _stamp_now(self) -> tuple[int, ...]:
        c, k = os.stat(self._certfile), os.stat(self._keyfile)
        return (c.st_ino, c.st_mtime_ns, c.st_size, k.st_ino, k.st_mtime_ns, k.st_size)

    def get(self) -> ssl.SSLContext:
        try:
            stamp = self._stamp_now()
        except OSError:
            if self._ctx is None:
                raise
            return self._ctx
        if stamp == self._stamp and self._ctx is not None:
            return self._ctx
        with self._lock:
            if stamp != self._stamp or self._ctx is None:
                try:
                    self._ctx = build_ssl_context(self._certfile, self._keyfile)
                    self._stamp = stamp
                    self.loads += 1
                    log.info("serving certificate loaded", extra={"certfile": str(self._certfile)})
                except (OSError, ssl.SSLError):
                    # e.g. caught between the key and the certificate being replaced: keep serving the old pair
                    if self._ctx is None:
                        raise
                    log.warning("serving certificate not reloaded; keeping the previous one", exc_info=True)
            return self._ctx


def _post_fork(server: Any, worker: Any) -> None:
    app_mod.runtime(worker.app.wsgi()).start()


def _worker_exit(server: Any, worker: Any) -> None:
    app_mod.runtime(worker.app.wsgi()).source.stop()


def build(settings: settings_mod.WebhookSettings) -> dict[str, Any]:
    """gunicorn settings (names as gunicorn's config knows them)."""
    if settings.worker_class not in ("front", "gthread"):
        raise ValueError(f"worker_class must be 'front' or 'gthread'; got {settings.worker_class!r}")
    reloading = ReloadingContext(settings.certfile, settings.keyfile)
    metrics_dir = settings.metrics_dir

    def child_exit(server: Any, worker: Any) -> None:
        if metrics_dir is not None:
            multiprocess.mark_process_dead(worker.pid, str(metrics_dir))  # type: ignore[no-untyped-call]

    def ssl_context(conf: Any, default_factory: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
        return reloading.get()

    return {
        "bind": [settings.bind],
        "workers": settings.workers,
        "worker_class": "webhook.worker.FrontWorker" if settings.worker_class == "front" else "gthread",
        "threads": settings.threads,
        "keepalive": settings.keepalive_s,
        "timeout": settings.timeout_s,
        "graceful_timeout": settings.graceful_timeout_s,
        "certfile": str(settings.certfile),
        "keyfile": str(settings.keyfile),
        "ssl_context": ssl_context,
        "preload_app": True,
        "post_fork": _post_fork,
        "worker_exit": _worker_exit,
        "child_exit": child_exit,
        "logconfig_dict": webhook_logging.config_dict(settings.log_level, settings.log_json),
        "accesslog": None,
        "proc_name": "pcidevices-webhook",
        "control_socket_disable": True,
    }
