"""The SubjectAccessReview call on the hot path, against a tiny local API on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import apiclient
import apiclient.client


class TinyAPI:
    """Answers SubjectAccessReviews; can close each connection after answering (as an idle-timeout would)."""

    def __init__(self, *, close_after_answer: bool, status: int = 201, allowed: bool = True) -> None:
        self.close_after_answer = close_after_answer
        self.status = status
        self.allowed = allowed
        self.connections = 0
        self.requests: list[dict[str, Any]] = []
        self.headers: list[str] = []
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen()
        self._sock.settimeout(5)
        self.port = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.connections += 1
            with conn, conn.makefile("rb") as f:
                while True:
                    head = b""
                    while not head.endswith(b"\r\n\r\n"):
                        line = f.readline()
                        if not line:
                            break
                        head += line
                    if not head:
                        break
                    text = head.decode()
                    self.headers.append(text)
                    length = int(
                        next(h.split(":")[1] for h in text.split("\r\n") if h.lower().startswith("content-length"))
                    )
                    self.requests.append(json.loads(f.read(length)))
                    body = json.dumps({"status": {"allowed": self.allowed}}).encode()
                    head_out = f"HTTP/1.1 {self.status} X\r\nContent-Type: application/json\r\n"
                    conn.sendall(f"{head_out}Content-Length: {len(body)}\r\n\r\n".encode() + body)
                    if self.close_after_answer:
                        break

    def close(self) -> None:
        self._stop.set()
        self._sock.close()


@pytest.fixture
def kubeconfig(tmp_path: Path) -> Iterator[Any]:
    def make(port: int) -> Path:
        path = tmp_path / "kubeconfig"
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "t",
            "clusters": [{"name": "t", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
            "users": [{"name": "t", "user": {"token": "secret-token"}}],
            "contexts": [{"name": "t", "context": {"cluster": "t", "user": "t"}}],
        }))  # fmt: skip
        return path

    yield make


REVIEW = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": {"user": "alice"}}


def test_reviews_reuse_one_connection_and_carry_the_token(kubeconfig: Any) -> None:
    api = TinyAPI(close_after_answer=False)
    try:
        k = apiclient.client.Client.connect(kubeconfig(api.port))
        assert all(k.review_access(REVIEW) for _ in range(3))
        k.close()
        assert api.connections == 1
        assert api.requests == [REVIEW] * 3
        assert all("authorization: bearer secret-token" in h.lower() for h in api.headers)
    finally:
        api.close()


def test_a_connection_the_server_closed_meanwhile_is_replaced_without_failing_the_review(kubeconfig: Any) -> None:
    api = TinyAPI(close_after_answer=True)
    try:
        k = apiclient.client.Client.connect(kubeconfig(api.port))
        assert [k.review_access(REVIEW) for _ in range(3)] == [True, True, True]
        k.close()
        assert api.connections == 3
    finally:
        api.close()


@pytest.mark.parametrize("status, error", [(403, apiclient.KubeError), (404, apiclient.NotFound)])
def test_an_error_status_is_translated(kubeconfig: Any, status: int, error: type[Exception]) -> None:
    api = TinyAPI(close_after_answer=False, status=status)
    try:
        k = apiclient.client.Client.connect(kubeconfig(api.port))
        with pytest.raises(error):
            k.review_access(REVIEW)
        k.close()
    finally:
        api.close()


def test_a_denied_review_is_false(kubeconfig: Any) -> None:
    api = TinyAPI(close_after_answer=False, allowed=False)
    try:
        k = apiclient.client.Client.connect(kubeconfig(api.port))
        assert k.review_access(REVIEW) is False
        k.close()
    finally:
        api.close()
