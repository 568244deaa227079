"""The connection front of a webhook worker: asyncio, TLS through the ssl module's memory BIOs, HTTP/1.1 parsed by
httptools, and the Flask (WSGI) app called in a small thread pool once a request is complete.

Why not gunicorn's gthread alone: it does the TLS handshake and reads headers and body inside its pool threads, with no
deadline, so a few clients that send half a request hold every thread (and /readyz and every admission wait). Here
a connection costs a pool thread only for the time the app takes; until then it is a few kilobytes in the event
loop, and every phase has a deadline (Go's net/http ReadHeaderTimeout/ReadTimeout/IdleTimeout):

    accepted --handshake_timeout_s--> TLS up --header_timeout_s--> headers --body_timeout_s--> request complete
        --(app in the pool)--> answer written --keepalive_s (idle)--> first byte of the next request --> headers ...

Connections that have not been answered yet (TLS handshake, first request) are served a few steps per turn of the
loop, after the reads of connections answered before: new or hostile connections cannot hold up the API server's
keep-alive connections.

Requests that `inline` can answer without waiting (for the webhook: admissions whose SubjectAccessReviews are
cached) are answered on the event loop, which saves two thread switches per request; everything else goes to the
pool, so a slow API server or a slow app never stops the loop.

A periodic sweep (every `sweep_s`) finds connections past their deadline, so a request pays for no timer of its own;
they are cut a few per turn of the loop, like the newcomers' steps.
Bounds per worker process: `max_connections` open (handshakes included; one more is closed at once),
`max_header_bytes` per request head, `max_body_bytes` per body, and `body_budget_bytes` for the bodies of all
connections together (actual bytes held, so a client that announces a large body and sends nothing holds nothing).
Memory while connections are open is then at most about max_connections x (TLS state + 64 KiB waiting for its turn +
one read) + the body budget.

TLS is done here rather than by asyncio's SSL transport so that a handshake in progress is an ordinary counted
connection with a deadline, and so that nothing allocates a large read buffer per connection. The SSLContext is
asked for per new connection (`context()`), which is how a replaced certificate reaches new connections while open
ones finish on the old one.
"""

from __future__ import annotations

import asyncio
import collections
import io
import logging
import socket
import ssl
import sys
import time
from collections.abc import Callable, Iterable
from concurrent import futures
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_to_bytes

import httptools

log = logging.getLogger(__name__)

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
# Answers a complete request on the event loop itself, as (status, content type, body), or returns None to have the
# WSGI app answer it in a thread. It must never block: it runs between every other connection's reads.
Inline = Callable[["Request"], "tuple[int, bytes, bytes] | None"]

# Connection phases (ints: compared on every chunk of data).
HANDSHAKE, HEAD, BODY, BUSY, IDLE, LINGER, CLOSED = range(7)
PHASE_NAMES = {
    HANDSHAKE: "handshake",
    HEAD: "header",
    BODY: "body",
    BUSY: "busy",
    IDLE: "idle",
    LINGER: "linger",
    CLOSED: "closed",
}
_READ = 65536
# After an error answer the rest of what the client is sending is read and dropped for a moment: closing with unread
# data makes the kernel send a reset, and the client may then lose the answer before it reads it (lingering close).
_LINGER_S = 2.0
_LINGER_BYTES = 8 * 1024 * 1024
STEPS_PER_TURN = 2
_QUEUED_BYTES = 64 * 1024  # a connection waiting for its turn stops reading once it holds this much
_MAX_PIPELINED = 4  # complete requests queued behind the one in the app; more is not a client we need to serve
DRAIN_IDLE_S = 5.0  # a stopping worker keeps idle keep-alive connections this long, answering with Connection: close


@dataclass(frozen=True, slots=True)
class Limits:
    handshake_timeout_s: float = 5.0
    header_timeout_s: float = 5.0
    body_timeout_s: float = 10.0
    keepalive_s: float = 120.0
    max_connections: int = 2048
    max_header_bytes: int = 64 * 1024
    max_body_bytes: int = 7 * 1024 * 1024
    body_budget_bytes: int = 64 * 1024 * 1024
    sweep_s: float = 0.25


class Observer:
    """What the front reports (metrics); the default reports nothing."""

    def closed(self, reason: str) -> None:
        """A connection was closed by the server for `reason` (a deadline, a limit, a malformed request)."""

    def open_connections(self, count: int) -> None:
        """Open connections of this worker, reported once per sweep."""


_STATUS = {
    100: b"Continue",
    200: b"OK",
    400: b"Bad Request",
    408: b"Request Timeout",
    411: b"Length Required",
    413: b"Content Too Large",
    415: b"Unsupported Media Type",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    503: b"Service Unavailable",
}


def _response(status: int, content_type: bytes, body: bytes, *, keep: bool) -> bytes:
    return b"".join(
        (
            b"HTTP/1.1 %d %s\r\nContent-Type: " % (status, _STATUS.get(status, b"Error")),
            content_type,
            b"\r\nContent-Length: %d\r\n%s\r\n" % (len(body), b"" if keep else b"Connection: close\r\n"),
            body,
        )
    )


def _simple(status: int, body: bytes, content_type: bytes = b"text/plain; charset=utf-8") -> bytes:
    return b"".join(
        (
            b"HTTP/1.1 %d %s\r\n" % (status, _STATUS.get(status, b"Error")),
            b"Content-Type: " + content_type + b"\r\n",
            b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body),
            body,
        )
    )


class Request:
    __slots__ = ("url", "headers", "body", "size", "keep_alive", "method", "version")

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.size = 0  # head bytes, then body bytes
        self.keep_alive = True
        self.method = b""
        self.version = "1.1"


class Front:
    """One worker's connections: accept, deadlines, limits; complete requests go to `app` in `executor`."""

    def __init__(
        self,
        app: WSGIApp,
        context: Callable[[], ssl.SSLContext] | None,
        limits: Limits,
        executor: futures.Executor,
        *,
        observer: Observer | None = None,
        too_large: bytes | None = None,
        server_port: int = 0,
        inline: Inline | None = None,
    ) -> None:
        self.app = app
        self.inline = inline
        self.context = context
        self.limits = limits
        self.executor = executor
        self.observer = observer or Observer()
        self.too_large = too_large or _simple(413, b"request body too large\n")
        self.server_port = str(server_port)
        self.connections: set[Connection] = set()
        self.body_bytes = 0  # bytes of request bodies held by all connections
        self.loop: asyncio.AbstractEventLoop | None = None
        self.servers: list[asyncio.Server] = []
        self.draining = False
        self._sweeper: asyncio.TimerHandle | None = None
        # Connections not answered yet (TLS handshake, first request) wait here and are taken a few per turn of the
        # loop: a burst of them, hostile or not, cannot hold up the connections that have been answered before (the
        # API server's keep-alive connections), whose reads are handled as they come.
        self._newcomers: collections.deque[Connection] = collections.deque()
        self._expired: collections.deque[Connection] = collections.deque()
        self._turn_due = False

    async def start(self, sockets: Iterable[socket.socket]) -> None:
        self.loop = asyncio.get_running_loop()
        for sock in sockets:
            server = await self.loop.create_server(lambda: Connection(self), sock=sock, backlog=2048)
            self.servers.append(server)
        self._sweep()

    def _sweep(self) -> None:
        """Connections past their deadline join the expired queue; they are cut a few per turn of the loop (a
        sweep finds tens of slow clients at once, and cutting them all in one go held up everyone else)."""
        assert self.loop is not None
        self._sweeper = self.loop.call_later(self.limits.sweep_s, self._sweep)
        now = self.loop.time()
        expired = [c for c in self.connections if c.deadline < now and not c.expiring]
        for conn in expired:
            conn.expiring = True
        self._expired.extend(expired)
        if expired:
            self._turn_soon()
        self.observer.open_connections(len(self.connections))

    def queue_newcomer(self, conn: Connection) -> None:
        self._newcomers.append(conn)
        self._turn_soon()

    def _turn_soon(self) -> None:
        if not self._turn_due:
            self._turn_due = True
            assert self.loop is not None
            self.loop.call_soon(self._turn)

    def _turn(self) -> None:
        """Up to STEPS_PER_TURN steps of connections that have not been answered yet and as many cuts of expired
        ones; then the loop polls for I/O (and serves the connections already answered once) before the next."""
        for _ in range(min(STEPS_PER_TURN, len(self._newcomers))):
            conn = self._newcomers.popleft()
            try:
                conn.newcomer_turn()
            except Exception:
                log.error("a step of a new connection failed", exc_info=True)
                conn.abort()
        assert self.loop is not None
        now = self.loop.time()
        for _ in range(min(STEPS_PER_TURN, len(self._expired))):
            conn = self._expired.popleft()
            conn.expiring = False
            if conn.deadline >= now:  # answered, closed or active again since the sweep
                continue
            try:
                conn.expire()
            except Exception:  # one connection must never stop the deadlines of all the others
                log.error("closing a connection past its deadline failed", exc_info=True)
                conn.abort()
        if self._newcomers or self._expired:
            self.loop.call_soon(self._turn)
        else:
            self._turn_due = False

    def close_listeners(self) -> None:
        """Stop accepting; requests under way finish, and every answer from now on says `Connection: close`.

        Idle keep-alive connections stay open for a moment (run's DRAIN_IDLE_S): closed at once, the API server may
        already be writing its next request into one and gets a broken pipe, which it does not retry for a POST
        (seen once in a rolling helm upgrade)."""
        self.draining = True
        for server in self.servers:
            server.close()

    def abort_all(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for conn in list(self.connections):
            conn.abort()

    def busy(self) -> int:
        return sum(1 for c in self.connections if c.phase == BUSY)

    def environ(self, req: Request, peer: tuple[Any, ...] | None) -> dict[str, Any]:
        """The WSGI environ (PEP 3333) of a complete request."""
        url = httptools.parse_url(req.url)
        body = b"".join(req.body)
        env: dict[str, Any] = {
            "REQUEST_METHOD": req.method.decode("latin-1"),
            "SCRIPT_NAME": "",
            "PATH_INFO": unquote_to_bytes(url.path or b"/").decode("latin-1"),
            "QUERY_STRING": (url.query or b"").decode("latin-1"),
            "SERVER_NAME": "pcidevices-webhook",
            "SERVER_PORT": self.server_port,
            "SERVER_PROTOCOL": "HTTP/" + req.version,
            "REMOTE_ADDR": str(peer[0]) if peer else "",
            "REMOTE_PORT": str(peer[1]) if peer else "",
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "https" if self.context is not None else "http",
            "wsgi.input": io.BytesIO(body),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": True,
            "wsgi.run_once": False,
            "CONTENT_LENGTH": str(len(body)),
        }
        for name, value in req.headers:
            key = name.decode("latin-1").upper().replace("-", "_")
            if key == "CONTENT_TYPE":
                env["CONTENT_TYPE"] = value.decode("latin-1")
            elif key in ("CONTENT_LENGTH", "TRANSFER_ENCODING"):
                continue  # the body is complete and de-chunked: its length is the one above
            else:
                key = "HTTP_" + key
                text = value.decode("latin-1")
                env[key] = env[key] + "," + text if key in env else text
        return env

    def call_app(self, req: Request, peer: tuple[Any, ...] | None) -> tuple[bytes, bool]:
        """Run in a pool thread: the app's whole answer as bytes, and whether the connection may stay open."""
        try:
            env = self.environ(req, peer)
            started: list[Any] = []

            def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
                started[:] = [status, headers]
                return None

            result = self.app(env, start_response)
            try:
                body = b"".join(result)
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
            status, headers = started
            head = ["HTTP/1.1 ", status, "\r\n"]
            for name, value in headers:
                if name.lower() not in ("content-length", "connection", "transfer-encoding"):
                    head += [name, ": ", value, "\r\n"]
            keep = req.keep_alive and not self.draining
            head.append(f"Content-Length: {len(body)}\r\n" + ("\r\n" if keep else "Connection: close\r\n\r\n"))
            return "".join(head).encode("latin-1") + body, keep
        except Exception:
            log.error("request failed in the app", exc_info=True)
            return _simple(500, b"internal error\n"), False


class Connection(asyncio.Protocol):
    """One client connection: TLS over memory BIOs, the HTTP parser, a phase and its deadline."""

    def __init__(self, front: Front) -> None:
        self.front = front
        self.limits = front.limits
        self.transport: asyncio.Transport | None = None
        self.tls: ssl.SSLObject | None = None
        self.incoming = self.outgoing = None  # type: ssl.MemoryBIO | None
        self.parser: httptools.HttpRequestParser | None = httptools.HttpRequestParser(self)
        self.phase = HANDSHAKE
        self.deadline = 0.0
        self.request: Request | None = None
        self.queue: collections.deque[Request] = collections.deque()
        self.held = 0  # body bytes of this connection counted in front.body_bytes
        self.peer: tuple[Any, ...] | None = None
        self.paused_writing = False
        self.eof = False
        self.refusal: _Refuse | None = None
        self.lingered = 0
        self.queued = False  # waiting in the front's newcomers' queue
        self.answered = False  # a request of this connection has been answered: its reads are handled at once
        self.expiring = False  # waiting in the front's expired queue

    # -- asyncio.Protocol ---------------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        front = self.front
        self.transport = transport
        if len(front.connections) >= self.limits.max_connections or front.draining:
            front.observer.closed("limit")
            transport.abort()
            self.phase = CLOSED
            return
        front.connections.add(self)
        self.peer = transport.get_extra_info("peername")
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        assert front.loop is not None
        now = front.loop.time()
        if front.context is None:
            self.phase, self.deadline = HEAD, now + self.limits.header_timeout_s
            return
        try:
            self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
            self.tls = front.context().wrap_bio(self.incoming, self.outgoing, server_side=True)
        except (OSError, ssl.SSLError):
            log.error("no TLS context for a new connection", exc_info=True)
            self.abort()
            return
        self.deadline = now + self.limits.handshake_timeout_s

    def connection_lost(self, exc: Exception | None) -> None:
        self._forget()
        # The parser holds this protocol for its callbacks: a cycle that only the garbage collector would free, and
        # its full collections are pauses. Dropped here, a closed connection is freed by reference counting.
        self.parser = None

    def data_received(self, data: bytes) -> None:
        if self.phase >= LINGER:
            self.lingered += len(data)
            if self.phase == LINGER and self.lingered > _LINGER_BYTES:
                self.abort()
            return
        tls = self.tls
        if tls is None:
            self._feed(data)
            return
        assert self.incoming is not None
        self.incoming.write(data)
        if not self.answered:
            if self.incoming.pending > _QUEUED_BYTES and self.transport is not None:
                self.transport.pause_reading()  # what waits in the queue is bounded (slow clients send bytes, and
                # pausing each of them costs two system calls)
            if not self.queued:
                self.queued = True
                self.front.queue_newcomer(self)
            return
        self._pump()

    def newcomer_turn(self) -> None:
        """Its turn in the newcomers' queue (Front.queue_newcomer): handshake and read what the client sent."""
        self.queued = False
        if self.phase < LINGER:
            if self.transport is not None and self.phase != BUSY and not self.paused_writing:
                self.transport.resume_reading()
            self._pump()

    def _pump(self) -> None:
        tls = self.tls
        assert tls is not None and self.incoming is not None
        if self.phase == HANDSHAKE:
            try:
                tls.do_handshake()
            except ssl.SSLWantReadError:
                self._flush()
                return
            except (ssl.SSLError, OSError):
                self._flush()
                self.front.observer.closed("tls")
                self.abort()
                return
            self._flush()
            assert self.front.loop is not None
            self.phase, self.deadline = HEAD, self.front.loop.time() + self.limits.header_timeout_s
        incoming = self.incoming
        while self.phase < LINGER:
            try:
                chunk = tls.read(_READ)
            except ssl.SSLWantReadError:
                break
            except (ssl.SSLError, OSError):
                self.front.observer.closed("tls")
                self.abort()
                return
            if not chunk:  # close_notify
                self.close()
                return
            self._feed(chunk)
            if not incoming.pending and not tls.pending():
                break  # all read: spares the exception of one more read
        if self.outgoing is not None and self.outgoing.pending:
            self._flush()

    def eof_received(self) -> bool | None:
        if self.phase == BUSY:
            self.eof = True
            return True  # half-closed: answer what is under way, then close
        self.close()
        return None

    def pause_writing(self) -> None:
        """The client does not read its answers: read nothing more from it until it does (or its deadline)."""
        self.paused_writing = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.paused_writing = False
        if self.transport is not None and self.phase != BUSY:
            self.transport.resume_reading()

    # -- httptools callbacks ------------------------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.request = Request()
        if self.phase == IDLE:
            assert self.front.loop is not None
            self.phase, self.deadline = HEAD, self.front.loop.time() + self.limits.header_timeout_s

    def on_url(self, url: bytes) -> None:
        req = self.request
        assert req is not None
        req.url += url
        req.size += len(url)
        if req.size > self.limits.max_header_bytes:
            raise self._refuse(431, "header")

    def on_header(self, name: bytes, value: bytes) -> None:
        req = self.request
        assert req is not None
        req.headers.append((name, value))
        req.size += len(name) + len(value) + 4
        if req.size > self.limits.max_header_bytes:
            raise self._refuse(431, "header")

    def on_headers_complete(self) -> None:
        req = self.request
        assert req is not None and self.front.loop is not None
        parser = self.parser
        assert parser is not None  # only None once the connection is lost, and then nothing is parsed
        req.method = parser.get_method()
        req.version = parser.get_http_version()
        req.keep_alive = parser.should_keep_alive()
        req.size = 0
        length = -1
        expect = False
        for name, value in req.headers:
            lname = name.lower()
            if lname == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    raise self._refuse(400, "malformed") from None
            elif lname == b"expect" and value.lower() == b"100-continue":
                expect = True
        if length > self.limits.max_body_bytes:
            raise self._refuse(413, "too_large")
        if self.phase != BUSY:
            self.phase, self.deadline = BODY, self.front.loop.time() + self.limits.body_timeout_s
        if expect and length > 0:
            self._send(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        req = self.request
        assert req is not None
        front = self.front
        req.size += len(body)
        if req.size > self.limits.max_body_bytes:
            raise self._refuse(413, "too_large")
        if front.body_bytes + len(body) > self.limits.body_budget_bytes:
            raise self._refuse(503, "budget")
        front.body_bytes += len(body)
        self.held += len(body)
        req.body.append(body)

    def on_message_complete(self) -> None:
        req = self.request
        assert req is not None
        self.request = None
        if self.phase == BUSY:
            if len(self.queue) >= _MAX_PIPELINED:
                raise self._refuse(400, "pipeline")
            self.queue.append(req)
            return
        self._dispatch(req)

    # -- internals ----------------------------------------------------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        try:
            if self.parser is not None:
                self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade, _Refuse) as e:
            # httptools re-raises a callback's exception as HttpParserCallbackError; the refusal is kept aside
            refusal, self.refusal = self.refusal, None
            if refusal is None and isinstance(e, _Refuse):
                refusal = e
            status, reason = (refusal.status, refusal.reason) if refusal is not None else (400, "malformed")
            self.front.observer.closed(reason)
            self._answer_and_close(status)

    def _refuse(self, status: int, reason: str) -> _Refuse:
        self.refusal = _Refuse(status, reason)
        return self.refusal

    def _answer_and_close(self, status: int) -> None:
        if self.phase == BUSY:  # an answer is being computed; do not interleave
            self.abort()
            return
        if status == 413:
            self._send(self.front.too_large)
        else:
            self._send(_simple(status, _STATUS.get(status, b"Error").lower() + b"\n"))
        self.linger()

    def _dispatch(self, req: Request) -> None:
        front = self.front
        if front.inline is not None:
            try:
                answer = front.inline(req)
            except Exception:
                log.error("request failed on the event loop; retrying in a thread", exc_info=True)
                answer = None
            if answer is not None:
                self._release_body()
                keep = req.keep_alive and not front.draining
                self._send(_response(*answer, keep=keep))
                self.answered = True
                if not keep or self.eof:
                    self.close()
                    return
                assert front.loop is not None
                self.phase, self.deadline = IDLE, front.loop.time() + self.limits.keepalive_s
                if self.request is not None:  # the next request began in the same read
                    self.phase, self.deadline = HEAD, front.loop.time() + self.limits.header_timeout_s
                return
        self.phase, self.deadline = BUSY, float("inf")
        if self.transport is not None:
            self.transport.pause_reading()
        future = self.front.executor.submit(self.front.call_app, req, self.peer)
        loop = self.front.loop
        assert loop is not None
        future.add_done_callback(lambda f: loop.call_soon_threadsafe(self._answered, f))

    def _answered(self, future: futures.Future[tuple[bytes, bool]]) -> None:
        self._release_body()
        if self.phase == CLOSED:
            return
        try:
            data, keep = future.result()
        except Exception:  # e.g. the pool was shut down under a request
            data, keep = _simple(503, b"shutting down\n"), False
        self._send(data)
        self.answered = True
        if not keep or (self.eof and not self.queue):
            self.close()
            return
        assert self.front.loop is not None
        if self.queue:
            self._dispatch(self.queue.popleft())
            return
        self.phase, self.deadline = IDLE, self.front.loop.time() + self.limits.keepalive_s
        if self.request is not None:  # the next request began in the same read
            self.phase, self.deadline = HEAD, self.front.loop.time() + self.limits.header_timeout_s
        if self.transport is not None and not self.paused_writing:
            self.transport.resume_reading()

    def _send(self, data: bytes) -> None:
        if self.transport is None or self.phase == CLOSED:
            return
        if self.tls is None:
            self.transport.write(data)
            return
        try:
            self.tls.write(data)
        except (ssl.SSLError, OSError):
            self.abort()
            return
        self._flush()

    def _flush(self) -> None:
        if self.outgoing is not None and self.transport is not None:
            pending = self.outgoing.read()
            if pending:
                self.transport.write(pending)

    def expire(self) -> None:
        """Past the deadline of its phase: a client that is too slow (or idle for longer than keep-alive)."""
        if self.phase == LINGER:
            self.abort()
            return
        self.front.observer.closed(PHASE_NAMES[self.phase])
        if self.phase in (HEAD, BODY):
            # A 408 for whoever debugs the client, then closed at once: a client this slow is not owed a linger.
            self._send(_simple(408, b"request timeout\n"))
            self.close()
        elif self.phase == IDLE:
            self.close()
        else:
            self.abort()

    def close(self) -> None:
        """Close after what is written (with a TLS close_notify when the session is up)."""
        if self.phase == CLOSED:
            return
        if self.tls is not None and self.phase not in (HANDSHAKE, LINGER):
            try:
                self.tls.unwrap()
            except (ssl.SSLError, OSError):
                pass
            self._flush()
        self._forget()
        if self.transport is not None:
            self.transport.close()

    def linger(self) -> None:
        """Answered with an error: send close_notify and FIN, drop what still arrives, close after a moment."""
        if self.phase >= LINGER:
            return
        if self.tls is not None and self.phase != HANDSHAKE:
            try:
                self.tls.unwrap()
            except (ssl.SSLError, OSError):
                pass
            self._flush()
        was = self.phase
        self.phase = LINGER
        self.queue.clear()
        self.request = None
        if was != BUSY:
            self._release_body()
        assert self.front.loop is not None
        self.deadline = self.front.loop.time() + _LINGER_S
        if self.transport is not None:
            try:
                self.transport.write_eof()
            except OSError:  # the client is gone already
                self.abort()
                return
            self.transport.resume_reading()

    def abort(self) -> None:
        self._forget()
        if self.transport is not None:
            self.transport.abort()

    def _forget(self) -> None:
        was = self.phase
        if was != CLOSED:
            self.phase = CLOSED
            self.deadline = float("inf")
            self.front.connections.discard(self)
        self.queue.clear()
        self.request = None
        if was != BUSY:  # else the body is still the app's; _answered releases it
            self._release_body()

    def _release_body(self) -> None:
        if self.held:
            self.front.body_bytes -= self.held
            self.held = 0


class _Refuse(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def run(
    front: Front,
    sockets: Iterable[socket.socket],
    *,
    alive: Callable[[], bool],
    heartbeat: Callable[[], None],
    graceful_timeout_s: float,
    tick_s: float = 1.0,
) -> None:
    """Serve until `alive()` turns false, calling `heartbeat()` every tick; then drain for up to graceful_timeout_s."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)

    async def main() -> None:
        await front.start(sockets)
        while alive():
            heartbeat()
            await asyncio.sleep(tick_s)
        front.close_listeners()
        started = time.monotonic()
        deadline = started + graceful_timeout_s
        idle_until = started + min(DRAIN_IDLE_S, graceful_timeout_s)
        while (front.busy() or (front.connections and time.monotonic() < idle_until)) and time.monotonic() < deadline:
            heartbeat()
            await asyncio.sleep(0.1)
        front.abort_all()

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
