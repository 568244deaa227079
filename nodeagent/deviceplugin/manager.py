"""The set of running device plugins: a diff of the desired set, supervised restarts, health polling.

The agent calls `set_desired()` with the resources its claims make (one PCI plugin per resource name, one USB plugin
per claimed USB device) and `refresh()` when a udev event may have changed health. One supervisor thread runs
`step()` every tick: start/stop/update plugins, re-serve and re-register after a kubelet restart, publish health.
A plugin that fails to serve or register is retried after 0.25, 0.5, 1, 2, 5, then every 10 seconds; a plugin never
gives up because the kubelet is briefly gone. Clock and sleep are injected so tests drive time by hand.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from nodeagent.deviceplugin import errors, health, metrics, model, registration, servicer

log = logging.getLogger(__name__)

# Short first steps: a kubelet that has just made its kubelet.sock often refuses the first Register while it starts,
# and a ladder that began at 1 s, then 2 s, kept the node's allocatable at 0 for 3.5-4.6 s after a kubelet restart
# (the handoff test under TCG); four quick retries cost nothing while the kubelet is really gone.
BACKOFF_S = (0.25, 0.5, 1.0, 2.0, 5.0, 10.0)


def backoff(failures: int) -> float:
    """Delay before the next attempt after `failures` consecutive failures (>= 1)."""
    return BACKOFF_S[min(max(failures, 1), len(BACKOFF_S)) - 1]


@dataclass(frozen=True)
class PluginPlan:
    """What a sync must do: names to start, to stop, and to update in place (same kind, other devices)."""

    start: tuple[str, ...]
    stop: tuple[str, ...]
    update: tuple[str, ...]


def plan_plugins(current: Mapping[str, model.Resource], desired: Mapping[str, model.Resource]) -> PluginPlan:
    """Pure diff. A resource whose kind changed (PCI <-> USB) is stopped and started again."""
    start, stop, update = [], [], []
    for name in sorted(current):
        if name not in desired or type(desired[name]) is not type(current[name]):
            stop.append(name)
    for name in sorted(desired):
        if name not in current or type(desired[name]) is not type(current[name]):
            start.append(name)
        elif desired[name] != current[name]:
            update.append(name)
    return PluginPlan(tuple(start), tuple(stop), tuple(update))


@dataclass
class _Entry:
    resource: model.Resource
    state: servicer.PluginState
    server: registration.PluginServer | None = None
    failures: int = 0
    next_attempt: float = 0.0
    kubelet_at_failure: registration.FileId | None = None  # a new kubelet.sock ends the backoff early


@dataclass(frozen=True)
class PluginStatus:
    resource_name: str
    serving: bool
    registered: bool
    failures: int
    socket_path: str


class PluginManager:
    """Runs the plugins of one node. `step()` is single-threaded; `set_desired`/`refresh` may come from anywhere."""

    def __init__(
        self,
        *,
        plugin_dir: str,
        probe: health.HostProbe,
        counters: metrics.PluginMetrics,
        clock: Callable[[], float],
        sleep: Callable[[float], object] | None = None,
        tick_s: float = 0.1,
        health_interval_s: float = 5.0,
        register_timeout_s: float = 5.0,
    ) -> None:
        self._plugin_dir = plugin_dir
        self._probe = probe
        self._metrics = counters
        self._clock = clock
        self._wake = threading.Event()
        # How run() waits between ticks; the default returns early when set_desired() or refresh() is called.
        self._sleep = sleep if sleep is not None else self._wake.wait
        self._tick_s = tick_s
        self._health_interval_s = health_interval_s
        self._register_timeout_s = register_timeout_s
        self._lock = threading.Lock()
        self._desired: dict[str, model.Resource] = {}
        self._refresh = True
        self._entries: dict[str, _Entry] = {}
        self._next_health = 0.0
        self._swept = False

    # -- inputs (any thread) ------------------------------------------------------------------------------------

    def set_desired(self, resources: Iterable[model.Resource]) -> None:
        desired: dict[str, model.Resource] = {}
        for r in resources:
            if r.name in desired:
                raise ValueError(f"resource {r.name} given twice")
            desired[r.name] = r
        with self._lock:
            self._desired = desired
        self._wake.set()

    def refresh(self) -> None:
        """Probe health at the next tick (e.g. after a udev event or a bind)."""
        with self._lock:
            self._refresh = True
        self._wake.set()

    # -- supervisor (one thread) --------------------------------------------------------------------------------

    def status(self) -> dict[str, PluginStatus]:
        """Where each plugin stands (for readiness, logs and tests)."""
        return {
            n: PluginStatus(
                n,
                e.server is not None and e.server.serving,
                e.server is not None and e.server.registered,
                e.failures,
                os.path.join(self._plugin_dir, registration.socket_name(n)),
            )
            for n, e in list(self._entries.items())  # a copy: other threads may ask while step() runs
        }

    def step(self) -> None:
        """One supervisor pass: apply the desired set, publish health, keep every plugin served and registered."""
        now = self._clock()
        self._wake.clear()
        with self._lock:
            desired = dict(self._desired)
            probe_now = self._refresh or now >= self._next_health
            self._refresh = False
        if not self._swept:
            self._sweep_stale_sockets()
        plan = plan_plugins({n: e.resource for n, e in self._entries.items()}, desired)
        for name in plan.stop:
            self._stop(name)
        for name in plan.start:
            r = desired[name]
            self._entries[name] = _Entry(r, servicer.PluginState(health.scan_snapshot(r, self._probe)))
            log.info("device plugin wanted", extra={"resource": name})
        for name in plan.update:
            self._entries[name].resource = desired[name]
        if probe_now or plan.update:
            self._next_health = now + self._health_interval_s
            for name, e in self._entries.items():
                changed = e.state.publish(health.scan_snapshot(e.resource, self._probe))
                if changed:
                    self._metrics.health_changed(name, len(changed))
                    log.info("device health changed", extra={"resource": name, "devices": list(changed)})
        kubelet = registration.file_id(os.path.join(self._plugin_dir, registration.KUBELET_SOCKET))
        for name, e in self._entries.items():
            # Two events end a backoff early, as both mean "the kubelet is (re)starting": a new kubelet.sock, and
            # our served socket deleted under us (a starting kubelet empties the directory).
            early = e.failures > 0 and (
                (kubelet is not None and kubelet != e.kubelet_at_failure)
                or (e.server is not None and e.server.serving and e.server.needs_reserve())
            )
            if now >= e.next_attempt or early:
                self._supervise(name, e, now, kubelet)

    def _sweep_stale_sockets(self) -> None:
        """Once at start: remove sockets a previous agent left (it may have crashed); ours are re-created."""
        self._swept = True
        ours = {registration.socket_name(n) for n in self._entries}
        try:
            names = os.listdir(self._plugin_dir)
        except OSError:
            return
        for name in names:
            if name.startswith(registration.SOCKET_PREFIX) and name.endswith(".sock") and name not in ours:
                try:
                    os.unlink(os.path.join(self._plugin_dir, name))
                    log.info("removed stale device plugin socket", extra={"socket": name})
                except OSError:
                    pass

    def _supervise(self, name: str, e: _Entry, now: float, kubelet: registration.FileId | None) -> None:
        try:
            if e.server is None:
                e.server = registration.PluginServer(
                    resource_name=name,
                    plugin_dir=self._plugin_dir,
                    state=e.state,
                    counters=self._metrics,
                    register_timeout_s=self._register_timeout_s,
                )
            if e.server.needs_reserve():
                e.server.serve()
            if e.server.needs_register():
                e.server.register()
            e.failures, e.next_attempt, e.kubelet_at_failure = 0, 0.0, None  # an early retry ends the backoff too
        except errors.DevicePluginError as ex:
            e.failures += 1
            e.kubelet_at_failure = kubelet
            e.next_attempt = now + backoff(e.failures)
            log.warning(
                "device plugin not ready; retrying",
                extra={"resource": name, "error": str(ex), "failures": e.failures, "retry_in_s": backoff(e.failures)},
            )
        except Exception:  # a bug in one plugin must not take the others down: restart it on the ladder
            e.failures += 1
            e.kubelet_at_failure = kubelet
            e.next_attempt = now + backoff(e.failures)
            log.exception("device plugin crashed; restarting", extra={"resource": name, "failures": e.failures})
            if e.server is not None:
                e.server.stop()
                e.server = None
                e.state = servicer.PluginState(e.state.snapshot)

    def _stop(self, name: str) -> None:
        e = self._entries.pop(name)
        if e.server is not None:
            e.server.stop()
        else:
            e.state.close()
        log.info("device plugin stopped", extra={"resource": name})

    def run(self, stop: threading.Event) -> None:
        """Supervise until `stop` is set (call `wake()` after setting it), then stop every plugin."""
        try:
            while not stop.is_set():
                try:
                    self.step()
                except Exception:  # the supervisor never dies: the plugins would vanish from the node
                    log.exception("device plugin supervisor pass failed; continuing")
                self._sleep(self._tick_s)
        finally:
            self.close()

    def wake(self) -> None:
        """End the current wait between ticks (e.g. to let run() see its stop event at once)."""
        self._wake.set()

    def close(self) -> None:
        for name in list(self._entries):
            self._stop(name)
