"""One plugin's life with the kubelet: serve on its socket, then register, and notice when the kubelet restarts.

The kubelet deletes every socket in its device-plugin directory when it restarts and never replays Allocate. So
`check()` (called by the manager every tick) watches two things: our own socket file vanishing or being replaced,
and `kubelet.sock` being re-created. Either means: serve again if needed, then register again. A kubelet that is
briefly gone only makes `register()` fail; the plugin keeps serving and the manager retries on its ladder.
"""

from __future__ import annotations

import hashlib
import logging
import os
from concurrent import futures
from dataclasses import dataclass

import grpc

from nodeagent.deviceplugin import errors, metrics, servicer
from nodeagent.deviceplugin._pb import api_pb2, api_pb2_grpc

log = logging.getLogger(__name__)

API_VERSION = "v1beta1"
KUBELET_SOCKET = "kubelet.sock"
DEVICE_PLUGIN_DIR = "/var/lib/kubelet/device-plugins"
SOCKET_PREFIX = "pcidevices-"
# A fresh connection per channel: grpc otherwise shares a subchannel to the same path across channels, and one
# that failed while the kubelet restarted waits out its reconnect backoff (about 1 s) before the next Register.
CHANNEL_OPTIONS = [("grpc.use_local_subchannel_pool", 1)]
# Bounds for whatever else on the node connects to a plugin's socket (the kubelet keeps one connection with one
# ListAndWatch stream and makes its unary calls on it): connections, streams per connection, a deadline for the
# HTTP/2 handshake, idle connections, client pings (the defaults, said out loud), request and metadata sizes.
SERVER_OPTIONS = [
    ("grpc.max_allowed_incoming_connections", 64),
    ("grpc.max_concurrent_streams", 8),
    ("grpc.server_handshake_timeout_ms", 5_000),
    ("grpc.max_connection_idle_ms", 300_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 300_000),
    ("grpc.http2.max_ping_strikes", 2),
    ("grpc.max_receive_message_length", 1 << 20),
    ("grpc.max_metadata_size", 16 << 10),
]
# sun_path holds 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107


def socket_name(resource_name: str) -> str:
    """A short, stable file name for any resource name: `pcidevices-<16 hex of sha256>.sock` (31 bytes)."""
    digest = hashlib.sha256(resource_name.encode()).hexdigest()[:16]
    return f"{SOCKET_PREFIX}{digest}.sock"


@dataclass(frozen=True)
class FileId:
    """Identity of a socket file; a re-created file differs even when the inode number is reused."""

    dev: int
    ino: int
    ctime_ns: int


def file_id(path: str) -> FileId | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return FileId(st.st_dev, st.st_ino, st.st_ctime_ns)


class PluginServer:
    """The gRPC server of one resource and its registration with the kubelet (not thread-safe: one caller)."""

    def __init__(
        self,
        *,
        resource_name: str,
        plugin_dir: str,
        state: servicer.PluginState,
        counters: metrics.PluginMetrics,
        register_timeout_s: float = 5.0,
        max_workers: int = 6,
        max_watchers: int = 2,
    ) -> None:
        self.resource_name = resource_name
        self.endpoint = socket_name(resource_name)
        self.plugin_dir = plugin_dir
        self.socket_path = os.path.join(plugin_dir, self.endpoint)
        if len(self.socket_path.encode()) > MAX_SOCKET_PATH:
            raise errors.ServeError(f"socket path {self.socket_path} is longer than {MAX_SOCKET_PATH} bytes")
        self.kubelet_socket = os.path.join(plugin_dir, KUBELET_SOCKET)
        self._state = state
        self._metrics = counters
        self._register_timeout_s = register_timeout_s
        # Each ListAndWatch holds a thread for as long as it lasts: at most max_watchers of them, so the other
        # threads are always there for Allocate; RPCs beyond the threads are refused at once instead of queued.
        self._max_workers = max(max_workers, max_watchers + 2)
        self._max_watchers = max_watchers
        self._server: grpc.Server | None = None
        self._served: FileId | None = None  # our socket file as we created it
        self._registered_with: FileId | None = None  # kubelet.sock we registered with; None = not registered

    @property
    def serving(self) -> bool:
        return self._server is not None

    @property
    def registered(self) -> bool:
        return self._registered_with is not None

    def serve(self) -> None:
        """Remove a stale socket and start serving DevicePlugin on it (before any registration)."""
        self._stop_server()
        try:
            os.unlink(self.socket_path)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise errors.ServeError(f"cannot remove stale socket {self.socket_path}: {e.strerror}") from e
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=self._max_workers, thread_name_prefix="deviceplugin"),
            options=SERVER_OPTIONS,
            maximum_concurrent_rpcs=self._max_workers,
        )
        plugin = servicer.DevicePluginServicer(self._state, self._metrics, max_watchers=self._max_watchers)
        api_pb2_grpc.add_DevicePluginServicer_to_server(plugin, server)
        try:
            server.add_insecure_port(f"unix://{self.socket_path}")
        except RuntimeError as e:
            server.stop(None).wait()
            raise errors.ServeError(f"cannot listen on {self.socket_path}: {e}") from e
        server.start()
        self._server = server
        self._served = file_id(self.socket_path)
        self._registered_with = None
        log.info("device plugin serving", extra={"resource": self.resource_name, "socket": self.socket_path})

    def register(self) -> None:
        """Register with the kubelet; raise RegistrationError (the caller retries, the plugin keeps serving)."""
        kubelet = file_id(self.kubelet_socket)
        if kubelet is None:
            self._metrics.registration_failed(self.resource_name)
            raise errors.RegistrationError(f"kubelet socket {self.kubelet_socket} does not exist")
        request = api_pb2.RegisterRequest(
            version=API_VERSION,
            endpoint=self.endpoint,
            resource_name=self.resource_name,
            options=api_pb2.DevicePluginOptions(get_preferred_allocation_available=True),
        )
        try:
            with grpc.insecure_channel(f"unix://{self.kubelet_socket}", options=CHANNEL_OPTIONS) as channel:
                api_pb2_grpc.RegistrationStub(channel).Register(request, timeout=self._register_timeout_s)
        except grpc.RpcError as e:
            self._metrics.registration_failed(self.resource_name)
            raise errors.RegistrationError(f"kubelet refused registration of {self.resource_name}: {e}") from e
        self._registered_with = kubelet
        self._metrics.registered(self.resource_name)
        log.info("device plugin registered", extra={"resource": self.resource_name, "endpoint": self.endpoint})

    def needs_reserve(self) -> bool:
        """Our socket vanished or was replaced (a kubelet restart deletes every socket in the directory)."""
        return self._server is None or file_id(self.socket_path) != self._served

    def needs_register(self) -> bool:
        """Never registered, or kubelet.sock is a different file than the one we registered with."""
        return self._registered_with is None or file_id(self.kubelet_socket) != self._registered_with

    def stop(self) -> None:
        """Remove our socket file (only if it is still ours), end the streams and stop serving.

        The file goes first, so nobody who sees the stream end can still find the socket.
        """
        if self._served is not None and file_id(self.socket_path) == self._served:
            try:
                os.unlink(self.socket_path)
            except FileNotFoundError:
                pass
        self._state.close()
        self._stop_server()
        self._served = None
        self._registered_with = None

    def _stop_server(self) -> None:
        if self._server is not None:
            self._server.stop(None).wait()
            self._server = None
