"""The level-based driver: one reconcile pass at a time, started by watch nudges, udev events or the slow resync.

A pass looks at everything (host and API) and converges it, so a nudge only says "look again": nudges that arrive
while a pass runs collapse into one more pass. A failed pass is retried on a backoff ladder; a successful one
resets it. Watches re-list and re-watch after the server closes them or drops (an API-server restart), backing off
on the same ladder. Clock and waiting are injected, so tests step time by hand.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

import apiclient
from nodeagent.errors import AgentError

log = logging.getLogger(__name__)

LADDER_S = (0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)


def backoff(failures: int, ladder: tuple[float, ...] = LADDER_S) -> float:
    return ladder[min(max(failures, 1), len(ladder)) - 1]


@dataclass
class RunnerStats:
    passes: int = 0
    failures: int = 0
    consecutive_failures: int = 0
    last_success: float | None = None
    last_error: str = ""


class Runner:
    def __init__(
        self,
        work: Callable[[], None],
        *,
        clock: Callable[[], float],
        resync_s: float = 300.0,
        ladder: tuple[float, ...] = LADDER_S,
    ) -> None:
        self._work = work
        self._clock = clock
        self._resync_s = resync_s
        self._ladder = ladder
        self._nudged = threading.Event()
        self.stats = RunnerStats()
        self.on_pass: Callable[[bool], None] | None = None
        self.sooner: Callable[[], float | None] | None = None
        """After a successful pass: a shorter wait than the resync, when the pass asks for one (None: the resync)."""

    def nudge(self) -> None:
        self._nudged.set()

    def step(self) -> float:
        """Run one pass; return how long to wait before the next one unless nudged."""
        self._nudged.clear()
        self.stats.passes += 1
        try:
            self._work()
        except Exception as e:  # the loop never dies: the node's devices would silently stop converging
            self.stats.failures += 1
            self.stats.consecutive_failures += 1
            self.stats.last_error = str(e)
            delay = backoff(self.stats.consecutive_failures, self._ladder)
            log.warning("reconcile pass failed; retrying", extra={"error": str(e), "retry_in_s": delay}, exc_info=True)
            if self.on_pass is not None:
                self.on_pass(False)
            return delay
        self.stats.consecutive_failures = 0
        self.stats.last_success = self._clock()
        self.stats.last_error = ""
        if self.on_pass is not None:
            self.on_pass(True)
        wait = self.sooner() if self.sooner is not None else None
        return self._resync_s if wait is None else min(wait, self._resync_s)

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            delay = self.step()
            if self.stats.consecutive_failures:
                # Backing off: a nudge does not cut the wait short (the API server may be down).
                stop.wait(delay)
                continue
            deadline = self._clock() + delay
            while not stop.is_set() and not self._nudged.is_set():
                left = deadline - self._clock()
                if left <= 0:
                    break
                self._nudged.wait(min(left, 1.0))

    def wake(self) -> None:
        """Let run() notice a stop at once."""
        self._nudged.set()


class Watcher:
    """Watches one kind and nudges the runner on every event; re-lists and re-watches whenever the watch ends."""

    def __init__(
        self,
        api: apiclient.KubeApi,
        res: apiclient.Resource,
        nudge: Callable[[], None],
        *,
        label_selector: str | None = None,
        timeout_s: int = 300,
        ladder: tuple[float, ...] = LADDER_S,
    ) -> None:
        self._api = api
        self._res = res
        self._nudge = nudge
        self._selector = label_selector
        self._timeout_s = timeout_s
        self._ladder = ladder
        self.restarts = 0

    def run(self, stop: threading.Event) -> None:
        failures = 0
        while not stop.is_set():
            try:
                listed = self._api.list(self._res, label_selector=self._selector)
                self._nudge()  # anything may have changed while we were not watching
                failures = 0
                for _ in self._api.watch(
                    self._res,
                    resource_version=listed.resource_version,
                    label_selector=self._selector,
                    timeout_s=self._timeout_s,
                    stop=stop,
                ):
                    self._nudge()
            except apiclient.NotFound:
                failures += 1  # the kind is not installed (e.g. no KubeVirt yet): look again later
            except (AgentError, apiclient.KubeError) as e:
                failures += 1
                log.info("watch ended; re-listing", extra={"kind": self._res.kind, "error": str(e)})
            self.restarts += 1
            if failures:
                stop.wait(backoff(failures, self._ladder))
