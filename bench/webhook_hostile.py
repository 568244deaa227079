"""The webhook under hostile clients: legitimate reviews next to slow and idle connections from other processes.

One server as production runs it (`python -m webhook serve`: gunicorn + webhook.front, TLS, the view from a file,
SubjectAccessReviews from the fake API of bench/webhook.py). Legitimate claim CREATE reviews arrive open-loop at
--rate over a few keep-alive connections (bench/webhook.py's load), first alone ("quiet"), then while --slow slow
clients and --idle idle TLS connections are open ("hostile"):

- slow clients, half of them sending a request head one header line per second, half a complete head and then the
  body one byte per second; the server cuts them at its deadlines and they reconnect at once, as an attacker would;
- idle connections: TLS up, one /healthz answered, then nothing (they stay inside the keep-alive time).

The hostile clients run in --hostile-processes processes of their own (asyncio, at nice 10: they stand in for clients
on other machines, and this machine may have only two cores), the legitimate load in others. The
figures are printed side by side: p50/p99/max, answered and failed reviews, the webhook's RSS (master + workers,
the largest sample while the phase ran) and its CPU per review. Then, in the same run, the old serving model
(gunicorn gthread) answers the quiet phase for the CPU comparison, and a short hostile phase with a handful of slow
clients shows what it did before (`--no-old` skips both).

    .venv/bin/python bench/webhook_hostile.py             # 100,000 devices in view, 1,000 + 1,000 hostile, 200/s
    .venv/bin/python bench/webhook_hostile.py --quick     # 2,000 devices, 10 s phases

Everything listens on 127.0.0.1; every client stops when its phase ends. The open-files limit of this process (and
so of the server and the clients it starts) is raised to its hard limit.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import importlib.util
import json
import multiprocessing
import os
import random
import resource
import shutil
import ssl
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from webhook import certs  # noqa: E402

_spec = importlib.util.spec_from_file_location("bench_webhook", ROOT / "bench" / "webhook.py")
assert _spec is not None and _spec.loader is not None
base = importlib.util.module_from_spec(_spec)
sys.modules["bench_webhook"] = base
_spec.loader.exec_module(base)

# counters shared with the hostile processes (one slot each per process)
IDLE_OPEN, SLOW_OPEN, CUT, CONNECT_FAILED, IDLE_LOST = range(5)


def raise_open_files() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# -- hostile clients -------------------------------------------------------------------------------------------------


def _hostile_process(
    port: int, cafile: str, n_idle: int, n_head: int, n_body: int, counters: Any, slot: int, stop: Any
) -> None:
    raise_open_files()
    # These processes stand in for clients on other machines: on a machine with two cores they would otherwise take
    # the CPU that the server and the legitimate load need. What the server spends on them is still spent by it.
    # SCHED_IDLE: they run only on CPU time that the server and the legitimate load leave (nice 10 still preempted
    # the server mid-callback for milliseconds: slow callbacks of 5-15 ms wall with 0.1 ms CPU, measured).
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    asyncio.run(_hostile(port, cafile, n_idle, n_head, n_body, counters, slot, stop))


async def _hostile(
    port: int, cafile: str, n_idle: int, n_head: int, n_body: int, counters: Any, slot: int, stop: Any
) -> None:
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # an attacker does not check the certificate either; it saves their CPU
    rng = random.Random(slot)

    def add(index: int, n: int) -> None:
        counters[slot * 5 + index] += n

    async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        try:
            return await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="127.0.0.1", limit=16384), 30
            )
        except (OSError, TimeoutError):
            add(CONNECT_FAILED, 1)
            await asyncio.sleep(0.5)
            return None

    async def idle() -> None:
        await asyncio.sleep(rng.random() * 5)  # spread the handshakes
        while not stop.is_set():
            conn = await connect()
            if conn is None:
                continue
            reader, writer = conn
            try:
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: bench\r\n\r\n")
                await writer.drain()
                await reader.readuntil(b"\r\n\r\n")
                await reader.readexactly(2)
                add(IDLE_OPEN, 1)
                try:
                    await reader.read(1)  # nothing more is sent; this returns only when the server closes
                finally:
                    add(IDLE_OPEN, -1)
                if not stop.is_set():
                    add(IDLE_LOST, 1)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                pass
            finally:
                writer.transport.abort()

    async def slow(body: bool) -> None:
        await asyncio.sleep(rng.random() * 5)
        while not stop.is_set():
            conn = await connect()
            if conn is None:
                continue
            reader, writer = conn
            add(SLOW_OPEN, 1)
            try:
                if body:
                    writer.write(
                        b"POST /validate HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
                        b"Content-Length: 3000\r\n\r\n"
                    )
                else:
                    writer.write(b"POST /validate HTTP/1.1\r\nHost: bench\r\n")
                i = 0
                while not stop.is_set():
                    try:
                        await asyncio.wait_for(reader.read(4096), 1.0 + rng.random() * 0.2)
                        add(CUT, 1)  # the server answered (408) or closed: cut
                        break
                    except TimeoutError:
                        pass
                    writer.write(b"{" if body else b"X-Slow-%d: a\r\n" % i)
                    i += 1
            except OSError:
                add(CUT, 1)
            finally:
                add(SLOW_OPEN, -1)
                writer.transport.abort()

    tasks = [asyncio.create_task(idle()) for _ in range(n_idle)]
    tasks += [asyncio.create_task(slow(False)) for _ in range(n_head)]
    tasks += [asyncio.create_task(slow(True)) for _ in range(n_body)]
    while not stop.is_set():
        await asyncio.sleep(0.2)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


class Hostile:
    """--slow slow clients and --idle idle TLS connections, spread over `processes` processes."""

    def __init__(self, port: int, cafile: str, *, slow: int, idle: int, processes: int) -> None:
        ctx = multiprocessing.get_context("fork")
        self.counters = ctx.Array("l", 5 * processes, lock=False)
        self.stop = ctx.Event()
        self.procs = []
        for k in range(processes):
            share = [
                n // processes + (k < n % processes) for n in (idle, (slow + 1) // 2, slow // 2)
            ]  # idle, slow heads, slow bodies
            self.procs.append(
                ctx.Process(
                    target=_hostile_process,
                    args=(port, cafile, *share, self.counters, k, self.stop),
                    daemon=True,
                )
            )
        for p in self.procs:
            p.start()

    def total(self, index: int) -> int:
        return sum(self.counters[k * 5 + index] for k in range(len(self.procs)))

    def wait_open(self, idle: int, slow: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.total(IDLE_OPEN) >= idle and self.total(SLOW_OPEN) >= 0.9 * slow:
                return True
            time.sleep(0.5)
        return False

    def close(self) -> None:
        self.stop.set()
        for p in self.procs:
            p.join(15)
            if p.is_alive():
                p.kill()


# -- measuring -------------------------------------------------------------------------------------------------------


class RssSampler:
    """The webhook's RSS (master + workers), sampled every 0.5 s; `peak` is the largest sum seen."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, sum(rss for _, rss, _ in self.server.memory_mib().values()))
            self._stop.wait(0.5)


def phase(server: Any, bodies: list[bytes], args: argparse.Namespace, label: str) -> dict[str, Any]:
    cpu_before = server.cpu_seconds()
    with RssSampler(server) as rss:
        r = base.load(
            server.port, server.cafile, bodies, args.rate, args.duration, args.connections, args.load_processes
        )
    cpu = server.cpu_seconds() - cpu_before
    lat = r["latencies"]
    result = {
        "label": label,
        "sent": r["sent"],
        "answered": len(lat),
        "errors": len(r["errors"]),
        "sample_errors": r["errors"][:3],
        "p50": base._percentile(lat, 0.5),
        "p99": base._percentile(lat, 0.99),
        "max": max(lat) if lat else float("nan"),
        "rss_mib": rss.peak,
        "cpu_ms_per_review": cpu / len(lat) * 1e3 if lat else float("nan"),
    }
    print(
        f"  {label:8s} p50 {result['p50'] * 1e3:7.2f} ms  p99 {result['p99'] * 1e3:7.2f} ms  max "
        f"{result['max'] * 1e3:7.1f} ms  answered {result['answered']}/{result['sent']}  errors {result['errors']}  "
        f"RSS {result['rss_mib']:.0f} MiB  CPU {result['cpu_ms_per_review']:.2f} ms/review",
        flush=True,
    )
    if result["errors"]:
        print(f"    e.g. {result['sample_errors'][0][:200]}", flush=True)
    return result


def probe(server: Any, bodies: list[bytes], *, seconds: float) -> dict[str, Any]:
    """One review after another, each on a fresh connection with a 5 s timeout (a client that reconnects), for
    `seconds`: how many are answered at all. For a server so stalled that the open-loop load cannot even connect."""
    import http.client

    ctx = ssl.create_default_context(cafile=server.cafile)
    sent = answered = 0
    stop_at = time.monotonic() + seconds
    while time.monotonic() < stop_at:
        sent += 1
        conn = http.client.HTTPSConnection("127.0.0.1", server.port, context=ctx, timeout=5)
        try:
            conn.request(
                "POST", "/validate", body=bodies[sent % len(bodies)], headers={"Content-Type": "application/json"}
            )
            answered += conn.getresponse().status == 200
        except (OSError, http.client.HTTPException):
            pass
        finally:
            conn.close()
    return {"sent": sent, "answered": answered, "failed": sent - answered}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--claims", type=int, default=20_000)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per phase")
    parser.add_argument("--slow", type=int, default=1000, help="slow clients (half slow heads, half slow bodies)")
    parser.add_argument("--idle", type=int, default=1000, help="idle TLS connections")
    parser.add_argument("--hostile-processes", type=int, default=4)
    parser.add_argument("--connections", type=int, default=8, help="keep-alive connections of the legitimate load")
    parser.add_argument("--load-processes", type=int, default=2)
    parser.add_argument("--workers", type=int, default=None, help="override the production worker count")
    parser.add_argument("--no-old", action="store_true", help="skip the gthread comparison")
    parser.add_argument("--quick", action="store_true", help="2,000 devices, 400 claims, 10 s phases")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.quick:
        args.devices, args.claims, args.duration = 2000, 400, 10.0
    nofile = raise_open_files()
    print(
        f"{os.cpu_count()} CPUs; open files {nofile}; legitimate load {args.rate:.0f}/s over {args.connections} "
        f"connections from {args.load_processes} process(es); hostile: {args.slow} slow + {args.idle} idle from "
        f"{args.hostile_processes} process(es); {args.duration:.0f} s per phase",
        flush=True,
    )
    rng = random.Random(42)
    work = Path(tempfile.mkdtemp(prefix="whhostile"))
    servers: list[Any] = []
    sar_proc = None
    try:
        objects, free = base.build_view(args.devices, args.claims, rng)
        view = work / "view.jsonl"
        with view.open("w") as f:
            for obj in objects:
                f.write(json.dumps(obj) + "\n")
        gpus = [d for d in free if d["status"]["classId"] == "0302"]
        rng.shuffle(gpus)
        bodies = [base.claim_review(d, rng.choice(base.USERS)) for d in gpus[:5000]]
        certs.write_files(
            certs.fresh(
                certs.CertPolicy(dns_names=("localhost",), ip_addresses=("127.0.0.1",)),
                datetime.datetime.now(datetime.UTC),
            ),
            work / "certs",
        )
        sar_port = base._free_port()
        counter = multiprocessing.get_context("fork").Value("l", 0)
        sar_proc = multiprocessing.get_context("fork").Process(
            target=base._sar_server, args=(sar_port, counter), daemon=True
        )
        sar_proc.start()
        kubeconfig = work / "kubeconfig"
        kubeconfig.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "current-context": "bench",
                    "clusters": [{"name": "bench", "cluster": {"server": f"http://127.0.0.1:{sar_port}"}}],
                    "users": [{"name": "bench", "user": {"token": "bench"}}],
                    "contexts": [{"name": "bench", "context": {"cluster": "bench", "user": "bench"}}],
                }
            )
        )
        results: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}}

        print(f"\n== front (the serving model now): view of {args.devices} devices, {args.claims} claims", flush=True)
        os.environ["PCIDEVICES_WEBHOOK_WORKER_CLASS"] = "front"
        server = base.start_server(work, floor=False, view=view, kubeconfig=kubeconfig, workers=args.workers)
        servers.append(server)
        base.load(server.port, server.cafile, bodies, 100.0, 3.0, args.connections, args.load_processes)  # warm-up
        quiet = phase(server, bodies, args, "quiet")
        hostile = Hostile(server.port, server.cafile, slow=args.slow, idle=args.idle, processes=args.hostile_processes)
        try:
            t = time.monotonic()
            opened = hostile.wait_open(args.idle, args.slow, timeout=120)
            print(
                f"  hostile clients open after {time.monotonic() - t:.1f} s: {hostile.total(IDLE_OPEN)} idle, "
                f"{hostile.total(SLOW_OPEN)} slow{'' if opened else ' (not all: see below)'}",
                flush=True,
            )
            cut_before = hostile.total(CUT)
            loud = phase(server, bodies, args, "hostile")
            stats = {
                "idle_open_at_end": hostile.total(IDLE_OPEN),
                "slow_open_at_end": hostile.total(SLOW_OPEN),
                "slow_cut_during_phase": hostile.total(CUT) - cut_before,
                "idle_closed_by_server": hostile.total(IDLE_LOST),
                "hostile_connects_failed": hostile.total(CONNECT_FAILED),
            }
            conns = server.metric("pcidevices_webhook_connections ")
        finally:
            hostile.close()
        closed = {
            reason: server.metric("pcidevices_webhook_connections_closed_total", f'reason="{reason}"')
            for reason in ("handshake", "header", "body", "idle", "limit", "tls", "malformed")
        }
        print(
            f"  hostile at the end: {stats['idle_open_at_end']} idle and {stats['slow_open_at_end']} slow open "
            f"(server counted {conns:.0f} connections); slow clients cut by a deadline {stats['slow_cut_during_phase']}"
            f" times during the phase; idle closed by the server {stats['idle_closed_by_server']}; hostile connects "
            f"that failed {stats['hostile_connects_failed']}",
            flush=True,
        )
        print(f"  server closed connections by reason: {json.dumps({k: int(v) for k, v in closed.items()})}")
        server.stop()
        servers.remove(server)
        results.update(quiet=quiet, hostile=loud, hostile_clients=stats, closed_by_reason=closed)

        if not args.no_old:
            print("\n== gthread (the serving model before), same view and load", flush=True)
            os.environ["PCIDEVICES_WEBHOOK_WORKER_CLASS"] = "gthread"
            old = base.start_server(work, floor=False, view=view, kubeconfig=kubeconfig, workers=args.workers)
            servers.append(old)
            base.load(old.port, old.cafile, bodies, 100.0, 3.0, args.connections, args.load_processes)
            old_quiet = phase(old, bodies, args, "quiet")
            few = 2 * (args.workers or 2) * 8  # as many slow clients as gthread has threads, twice over
            hostile = Hostile(old.port, old.cafile, slow=few, idle=0, processes=1)
            try:
                time.sleep(6)
                old_loud = probe(old, bodies, seconds=min(args.duration, 10.0))
                print(
                    f"  {few} slow: {old_loud['answered']} of {old_loud['sent']} reviews answered on fresh "
                    f"connections within 5 s each ({old_loud['failed']} failed)",
                    flush=True,
                )
            finally:
                hostile.close()
            old.stop()
            servers.remove(old)
            results.update(old_quiet=old_quiet, old_hostile=old_loud, old_hostile_slow_clients=few)

        _report(results, args)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2, default=str))
        return 0
    finally:
        for server in servers:
            server.stop()
        if sar_proc is not None:
            sar_proc.terminate()
            sar_proc.join(5)
        shutil.rmtree(work, ignore_errors=True)


def _report(results: dict[str, Any], args: argparse.Namespace) -> None:
    q, h = results["quiet"], results["hostile"]
    print(f"\n== summary: legitimate reviews at {args.rate:.0f}/s, {args.duration:.0f} s a phase (targets in brackets)")
    print(f"  {'':28s} {'quiet':>10s} {'hostile':>10s} {'ratio':>8s}")

    def row(name: str, a: float, b: float, unit: str, target: str = "") -> None:
        ratio = b / a if a else float("nan")
        print(f"  {name:28s} {a:>8.2f}{unit} {b:>8.2f}{unit} {ratio:>7.2f}x {target}")

    row("p50", q["p50"] * 1e3, h["p50"] * 1e3, "ms")
    row("p99", q["p99"] * 1e3, h["p99"] * 1e3, "ms", "[<= 2x]")
    row("max", q["max"] * 1e3, h["max"] * 1e3, "ms")
    row("webhook RSS (all processes)", q["rss_mib"], h["rss_mib"], "Mi", "[<= 1.5x]")
    row("server CPU per review", q["cpu_ms_per_review"], h["cpu_ms_per_review"], "ms", "(hostile: incl. their TLS)")
    print(
        f"  {'answered / sent':28s} {q['answered']:>5d}/{q['sent']:<5d}{h['answered']:>5d}/{h['sent']:<5d}"
        f"  errors {q['errors']} / {h['errors']} [0]"
    )
    hc = results["hostile_clients"]
    print(
        f"  hostile: {args.slow} slow clients (cut {hc['slow_cut_during_phase']} times by deadlines during the phase "
        f"and reconnected), {args.idle} idle TLS connections ({hc['idle_open_at_end']} still open at the end)"
    )
    if "old_quiet" in results:
        oq, oh = results["old_quiet"], results["old_hostile"]
        print(
            f"  server CPU per review, quiet, same run: gthread {oq['cpu_ms_per_review']:.2f} ms, front "
            f"{q['cpu_ms_per_review']:.2f} ms ({q['cpu_ms_per_review'] / oq['cpu_ms_per_review']:.2f}x) [<= 0.7 ms]"
        )
        print(
            f"  gthread p99 quiet {oq['p99'] * 1e3:.2f} ms; with only {results['old_hostile_slow_clients']} slow "
            f"clients: {oh['answered']} of {oh['sent']} reviews answered (fresh connections, 5 s timeout each)"
        )


if __name__ == "__main__":
    raise SystemExit(main())
