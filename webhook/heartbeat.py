"""The certificate keeper's heartbeat file, apart from the certificate code: a worker reads it for /healthz and must
not load `cryptography` for that (the master would load it before forking, and every worker would carry it)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path


class Heartbeat:
    """The certificate keeper's sign of life: a file it touches on every round, which the workers' /healthz reads.

    The keeper is a separate process nobody else restarts; if it dies, rotation stops silently and the certificate
    expires months later. A stale heartbeat makes the liveness probe fail instead, so the kubelet restarts the pod.
    """

    NAME = "keeper.heartbeat"

    def __init__(self, cert_dir: Path, clock: Callable[[], float] = time.time) -> None:
        self.path = cert_dir / self.NAME
        self._clock = clock

    def beat(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        now = self._clock()
        self.path.touch()
        os.utime(self.path, (now, now))

    def stale(self, max_age_s: float) -> bool:
        """True when the keeper has beaten before and not within max_age_s (no file: no keeper to judge)."""
        try:
            last = self.path.stat().st_mtime
        except FileNotFoundError:
            return False
        return self._clock() - last > max_age_s
