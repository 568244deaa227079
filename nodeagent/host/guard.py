"""The agent's host writes, counted and, in observe mode, refused: the last line of defence of observe mode.

Observe mode (DESIGN §6) promises that the agent never writes to sysfs or /dev. The reconcilers keep that promise by
never asking for a bind, a release or an owner change on such a node; this guard makes it checkable and safe even
if a code path forgets: every host write the agent can make (a sysfs attribute, the owner of a device node, a
module load) passes here first (the binder calls `check` before each sysfs write), is counted by kind, and is
refused with EROFS while observe mode is on. The counts are exported as metrics, so a test or an operator can see
that not one write was even attempted.
"""

from __future__ import annotations

import errno
import logging
import threading
from collections.abc import Callable, Sequence

from nodeagent.errors import SysfsError

log = logging.getLogger(__name__)

KINDS = ("sysfs", "chown", "modprobe")


class HostWriteGuard:
    """Counts host writes by kind and outcome (`written`, `refused`); refuses all while `observe()` is true."""

    def __init__(self, observe: Callable[[], bool]) -> None:
        self._observe = observe
        self._lock = threading.Lock()
        self.counts: dict[tuple[str, str], int] = {(k, r): 0 for k in KINDS for r in ("written", "refused")}

    def check(self, kind: str, target: str) -> None:
        """Call before a host write; raises SysfsError(EROFS) in observe mode (and counts the refusal)."""
        refused = self._observe()
        with self._lock:
            self.counts[(kind, "refused" if refused else "written")] += 1
        if refused:
            log.error("host write refused in observe mode", extra={"kind": kind, "target": target})
            raise SysfsError(f"observe mode: refused to write {target}", path=target, errno=errno.EROFS)

    def attempts(self) -> int:
        """Every host write asked for since start, written or refused."""
        with self._lock:
            return sum(self.counts.values())


def guarded_modules(load: Callable[[Sequence[str]], None], guard: HostWriteGuard) -> Callable[[Sequence[str]], None]:
    """The binder's module loader behind the guard (modprobe changes the host's kernel)."""

    def load_guarded(names: Sequence[str]) -> None:
        try:
            guard.check("modprobe", " ".join(names))
        except SysfsError as e:
            raise OSError(e.errno, str(e)) from e
        load(names)

    return load_guarded


def guarded_chown(chown: Callable[[str, int, int], None], guard: HostWriteGuard) -> Callable[[str, int, int], None]:
    """The USB owner setter's chown behind the guard (a device node under /dev)."""

    def chown_guarded(path: str, uid: int, gid: int) -> None:
        try:
            guard.check("chown", path)
        except SysfsError as e:
            raise OSError(e.errno, str(e)) from e
        chown(path, uid, gid)

    return chown_guarded
