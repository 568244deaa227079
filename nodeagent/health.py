"""/healthz, /readyz and /metrics on a small HTTP port.

Live while the reconcile loop keeps finishing passes (or keeps trying); ready once a pass succeeded and the root
filesystem was traced to a device (otherwise the agent cannot know which disk controller the host needs, and says
so in the body). /metrics serves the agent's Prometheus registry (device plugins and API writes included).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str


class HealthState:
    """Updated by the runner after each pass; read by the HTTP handler."""

    def __init__(self, clock: Callable[[], float], *, stale_after_s: float) -> None:
        self._clock = clock
        self._stale_after_s = stale_after_s
        self._lock = threading.Lock()
        self._last_pass: float | None = None
        self._last_ok: float | None = None
        self._root_traced = False
        self._started = clock()

    def passed(self, ok: bool, *, root_traced: bool | None = None) -> None:
        with self._lock:
            now = self._clock()
            self._last_pass = now
            if ok:
                self._last_ok = now
            if root_traced is not None:
                self._root_traced = root_traced

    def live(self) -> Verdict:
        with self._lock:
            last = self._last_pass if self._last_pass is not None else self._started
            if self._clock() - last > self._stale_after_s:
                return Verdict(False, f"no reconcile pass for {self._clock() - last:.0f}s")
            return Verdict(True, "ok")

    def ready(self) -> Verdict:
        with self._lock:
            if self._last_ok is None:
                return Verdict(False, "no successful reconcile pass yet")
            if not self._root_traced:
                return Verdict(False, "the root filesystem could not be traced to a device")
            if self._clock() - self._last_ok > self._stale_after_s:
                return Verdict(False, f"last successful reconcile pass {self._clock() - self._last_ok:.0f}s ago")
            return Verdict(True, "ok")


class HealthServer:
    def __init__(self, state: HealthState, registry: CollectorRegistry, *, host: str, port: int) -> None:
        handler = _handler(state, registry)
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="health", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> HealthServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def _handler(state: HealthState, registry: CollectorRegistry) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            if self.path == "/metrics":
                self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
                return
            check = {"/healthz": state.live, "/readyz": state.ready}.get(self.path)
            if check is None:
                self._send(404, b"not found\n", "text/plain")
                return
            v = check()
            self._send(200 if v.ok else 503, (v.reason + "\n").encode(), "text/plain")

        def _send(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's signature
            return

    return Handler
