"""What a failed call to the API server raises; one tree for every caller.

KubeError           any failed call (carries the HTTP status; 0 when the server could not be reached or a
│                   kubeconfig could not be loaded)
├── NotFound        404: the object, or its API, does not exist
├── Conflict        409: AlreadyExists on create, a stale resourceVersion on update or patch
└── Expired         410: a watch's or list's resourceVersion is too old (re-list)
"""

from __future__ import annotations

import json


class KubeError(Exception):
    def __init__(self, message: str, *, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class NotFound(KubeError):
    pass


class Conflict(KubeError):
    pass


class Expired(KubeError):
    pass


def from_status(status: int, body: bytes | None) -> KubeError:
    """The error for an HTTP status and the API server's Status body (its message, or the first bytes)."""
    try:
        doc = json.loads(body or b"{}")
        message = str(doc.get("message", "")) if isinstance(doc, dict) else ""
    except ValueError:
        message = (body or b"")[:200].decode(errors="replace")
    kind = {404: NotFound, 409: Conflict, 410: Expired}.get(status, KubeError)
    return kind(f"{status}: {message}", status=status)
