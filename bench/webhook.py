"""Benchmark of the admission webhook as production runs it: gunicorn (gthread, TLS) from `python -m webhook serve`.

The cluster view is fed from a snapshot file (PCIDEVICES_WEBHOOK_VIEW_SOURCE=file:...) holding --devices PCIDevices
and --claims claims, so no API server is needed; SubjectAccessReviews go to a tiny fake API on 127.0.0.1. A load
process sends claim CREATE reviews (as the API server sends them: managedFields, userInfo extra, options) open-loop
at fixed rates over keep-alive TLS connections, and latency is measured from each request's scheduled send time
(so a slow server cannot hide its queueing). The same server answering a constant "allowed"
(PCIDEVICES_WEBHOOK_BENCH_FLOOR) is measured the same way, and the figures are printed side by side as ratios.

    .venv/bin/python bench/webhook.py                  # defaults: 100,000 devices, 20,000 claims, ~3-4 minutes
    .venv/bin/python bench/webhook.py --quick          # small view, short steps (a smoke run)
    .venv/bin/python bench/webhook.py --vm [--quick]   # VM UPDATE reviews at 200/s (bench/webhook_vm.py)

Everything listens on 127.0.0.1 and stops when the run ends.
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import http.server
import json
import multiprocessing
import os
import queue
import random
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from webhook import certs  # noqa: E402

GROUP = "devices.harvesterhci.io"
DEVICES_PER_NODE = 80
USERS = [f"tenant-{i:02d}" for i in range(40)]
SLO_P99_S = 0.005


# -- the cluster view ------------------------------------------------------------------------------------------------


def _address(i: int) -> str:
    return f"0000:{(i // 2) // 32 + 1:02x}:{(i // 2) % 32:02x}.{i % 2}"


def _device(node: str, i: int) -> dict[str, Any]:
    address = _address(i)
    name = f"{node}-{address.replace(':', '').replace('.', '')}"
    gpu = i % 2 == 0
    group = str(i // 2 + 10)
    sibling = _address(i + 1 if gpu else i - 1)
    return {
        "apiVersion": f"{GROUP}/v1beta1",
        "kind": "PCIDevice",
        "metadata": {
            "name": name,
            "uid": str(uuid.uuid5(uuid.NAMESPACE_URL, name)),
            "resourceVersion": "1",
            "labels": {"nodename": node},
        },
        "spec": {},
        "status": {
            "address": address,
            "vendorId": "10de",
            "deviceId": "1eb8" if gpu else "10f8",
            "classId": "0302" if gpu else "0403",
            "iommuGroup": group,
            "iommuGroupMembers": [{"address": address, "bridge": False}, {"address": sibling, "bridge": False}],
            "nodeName": node,
            "resourceName": f"nvidia.com/{name}",
            "description": "3D controller: NVIDIA Corporation TU104GL [Tesla T4]"
            if gpu
            else "Audio device: NVIDIA Corporation TU104 HD Audio Controller",
            "kernelDriverInUse": "nvidia" if gpu else "snd_hda_intel",
        },
    }


def _claim(device: dict[str, Any], owner: str) -> dict[str, Any]:
    st = device["status"]
    return {
        "apiVersion": f"{GROUP}/v1beta1",
        "kind": "PCIDeviceClaim",
        "metadata": {
            "name": device["metadata"]["name"],
            "uid": str(uuid.uuid4()),
            "annotations": {f"{GROUP}/requested-by": owner},
            "labels": {"nodename": st["nodeName"]},
            "ownerReferences": [
                {
                    "apiVersion": f"{GROUP}/v1beta1",
                    "kind": "PCIDevice",
                    "name": device["metadata"]["name"],
                    "uid": device["metadata"]["uid"],
                }
            ],
        },
        "spec": {"address": st["address"], "nodeName": st["nodeName"], "userName": owner},
    }


def build_view(n_devices: int, n_claims: int, rng: random.Random) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """All objects of the view, and the devices left unclaimed (GPU functions whose whole group is free)."""
    nodes = [f"node-{i:04d}" for i in range((n_devices + DEVICES_PER_NODE - 1) // DEVICES_PER_NODE)]
    objects: list[dict[str, Any]] = [{"apiVersion": "v1", "kind": "Node", "metadata": {"name": n}} for n in nodes]
    devices = [_device(nodes[i // DEVICES_PER_NODE], i % DEVICES_PER_NODE) for i in range(n_devices)]
    objects += devices
    groups = list(range(0, n_devices - 1, 2))
    rng.shuffle(groups)
    claimed_groups = groups[: n_claims // 2]
    for g in claimed_groups:  # whole groups (GPU and its audio function) per owner, as the UI makes them
        owner = rng.choice(USERS)
        objects += [_claim(devices[g], owner), _claim(devices[g + 1], owner)]
    free = [devices[g] for g in groups[n_claims // 2 :]]
    return objects, free


def _managed_fields(manager: str, when: str) -> list[dict[str, Any]]:
    return [
        {
            "manager": manager,
            "operation": "Update",
            "apiVersion": f"{GROUP}/v1beta1",
            "time": when,
            "fieldsType": "FieldsV1",
            "fieldsV1": {
                "f:metadata": {
                    "f:annotations": {".": {}, f"f:{GROUP}/requested-by": {}},
                    "f:ownerReferences": {".": {}, 'k:{"uid":"0"}': {}},
                },
                "f:spec": {".": {}, "f:address": {}, "f:nodeName": {}, "f:userName": {}},
            },
        }
    ]


def user_info(user: str) -> dict[str, Any]:
    """userInfo as the API server sends it for a user of a client certificate."""
    return {
        "username": user,
        "uid": str(uuid.uuid5(uuid.NAMESPACE_DNS, user)),
        "groups": ["system:authenticated", "tenants"],
        "extra": {"authentication.kubernetes.io/credential-id": ["X509SHA256=" + "ab" * 32]},
    }


def claim_review(device: dict[str, Any], user: str) -> bytes:
    """A validating review of a claim CREATE as the API server sends it (after our mutation added the owner)."""
    claim = _claim(device, user)
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    claim["metadata"].update(creationTimestamp=now, generation=1, managedFields=_managed_fields("harvester", now))
    claim["spec"]["userName"] = "admin"  # the UI's display name, not the Kubernetes username
    gvk = {"group": GROUP, "version": "v1beta1", "kind": "PCIDeviceClaim"}
    gvr = {"group": GROUP, "version": "v1beta1", "resource": "pcideviceclaims"}
    review = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": gvk,
            "resource": gvr,
            "requestKind": gvk,
            "requestResource": gvr,
            "name": claim["metadata"]["name"],
            "operation": "CREATE",
            "userInfo": user_info(user),
            "object": claim,
            "oldObject": None,
            "dryRun": False,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1", "fieldManager": "harvester"},
        },
    }
    return json.dumps(review).encode()


# -- the fake SubjectAccessReview API --------------------------------------------------------------------------------


class _SARHandler(http.server.BaseHTTPRequestHandler):
    """SubjectAccessReviews (everything granted) and the Leases of the webhook's device holds (webhook/holds.py),
    which VM reviews that name devices read and write before they are answered."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else headers and body in two segments meet delayed ACKs: 40 ms per review
    counter: Any = None
    leases: dict[str, dict[str, Any]] = {}
    leases_lock = threading.Lock()

    def _answer(self, code: int, body: dict[str, Any]) -> None:
        answer = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def _body(self) -> Any:
        return json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))

    def do_GET(self) -> None:  # noqa: N802
        with self.leases_lock:
            lease = self.leases.get(self.path.split("?")[0])
        if lease is None:
            self._answer(404, {"kind": "Status", "code": 404, "reason": "NotFound"})
        else:
            self._answer(200, lease)

    def do_PUT(self) -> None:  # noqa: N802
        body = self._body()
        with self.leases_lock:
            body["metadata"]["resourceVersion"] = str(len(self.leases) + 1)
            self.leases[self.path.split("?")[0]] = body
        self._answer(200, body)

    def do_POST(self) -> None:  # noqa: N802
        body = self._body()
        if self.path.split("?")[0].endswith("/leases"):
            key = f"{self.path.split('?')[0]}/{body['metadata']['name']}"
            with self.leases_lock:
                if key in self.leases:
                    self._answer(409, {"kind": "Status", "code": 409, "reason": "AlreadyExists"})
                    return
                body["metadata"]["resourceVersion"] = "1"
                self.leases[key] = body
            self._answer(201, body)
            return
        with self.counter.get_lock():
            self.counter.value += 1
        self._answer(201, {**body, "status": {"allowed": True, "reason": "bench grants everything"}})

    def log_message(self, *args: Any) -> None:
        pass


def _sar_server(port: int, counter: Any) -> None:
    _SARHandler.counter = counter
    http.server.ThreadingHTTPServer.daemon_threads = True
    # socketserver listens with a backlog of 5: a burst of cache misses from several workers overflows it on a busy
    # machine, and each dropped SYN costs the admission behind it one to three seconds of retransmission.
    http.server.ThreadingHTTPServer.request_queue_size = 1024
    http.server.ThreadingHTTPServer(("127.0.0.1", port), _SARHandler).serve_forever()


def start_fake_api(work: Path) -> tuple[Path, Any, Any]:
    """The fake API in a forked process, and a kubeconfig for it: (kubeconfig, process, SubjectAccessReview count)."""
    port = _free_port()
    counter = multiprocessing.get_context("fork").Value("l", 0)
    proc = multiprocessing.get_context("fork").Process(target=_sar_server, args=(port, counter), daemon=True)
    proc.start()
    kubeconfig = work / "kubeconfig"
    cluster = {"name": "bench", "cluster": {"server": f"http://127.0.0.1:{port}"}}
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "bench",
                "clusters": [cluster],
                "users": [{"name": "bench", "user": {"token": "bench"}}],
                "contexts": [{"name": "bench", "context": {"cluster": "bench", "user": "bench"}}],
            }
        )
    )
    return kubeconfig, proc, counter


def write_certs(folder: Path) -> None:
    """A fresh CA and serving certificate for 127.0.0.1, as the server reads them (PCIDEVICES_WEBHOOK_CERT_DIR)."""
    policy = certs.CertPolicy(dns_names=("localhost",), ip_addresses=("127.0.0.1",))
    certs.write_files(certs.fresh(policy, datetime.datetime.now(datetime.UTC)), folder)


# -- the load generator ----------------------------------------------------------------------------------------------


def _load_shard(
    port: int,
    cafile: str,
    bodies: list[bytes],
    rate: float,
    duration: float,
    connections: int,
    shard: int,
    shards: int,
    ready: Any,
    start_at: Any,
    out: Any,
) -> None:
    """Open loop, one shard: request i (i = shard mod shards) is due at start + i/rate; latency counts from then."""
    sys.setswitchinterval(0.0005)  # a thread whose response arrived should not wait 5 ms for the GIL
    ctx = ssl.create_default_context(cafile=cafile)
    n = int(rate * duration)
    due: queue.SimpleQueue[int] = queue.SimpleQueue()
    for i in range(shard, n, shards):
        due.put(i)
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    # Connections are opened (TLS handshake done) before the clock starts: the API server keeps its connections.
    opened = threading.Barrier(connections + 1)
    start = 0.0

    def worker() -> None:
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
        conn.request("GET", "/healthz")
        conn.getresponse().read()
        opened.wait()
        opened.wait()  # `start` is known
        mine: list[float] = []
        try:
            while True:
                try:
                    i = due.get_nowait()
                except queue.Empty:
                    break
                at = start + i / rate
                delay = at - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                try:
                    conn.request(
                        "POST", "/validate", body=bodies[i % len(bodies)], headers={"Content-Type": "application/json"}
                    )
                    resp = conn.getresponse()
                    data = resp.read()
                    done = time.perf_counter()
                    if resp.status != 200 or b'"allowed": true' not in data and b'"allowed":true' not in data:
                        with lock:
                            errors.append(data[:300].decode(errors="replace"))
                    mine.append(done - at)
                except (OSError, http.client.HTTPException) as e:
                    with lock:
                        errors.append(repr(e))
                    conn.close()
                    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
        finally:
            conn.close()
            with lock:
                latencies.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(connections)]
    for t in threads:
        t.start()
    opened.wait()
    ready.wait()  # every shard has its connections open; the parent then sets the common start
    ready.wait()
    start = start_at.value  # CLOCK_MONOTONIC: the same clock in every process of this machine
    opened.wait()
    for t in threads:
        t.join()
    out.put(
        {
            "latencies": latencies,
            "errors": errors,
            "elapsed": time.perf_counter() - start,
            "sent": len(range(shard, n, shards)),
        }
    )


def default_load_processes() -> int:
    """One load process has one GIL: above a few hundred requests/s its own threads queue for it and the tail it
    reports is the client's. Shard the schedule over processes where there are cores for them."""
    return max(1, min(4, (os.cpu_count() or 1) // 4))


def load(
    port: int, cafile: str, bodies: list[bytes], rate: float, duration: float, connections: int, processes: int = 1
) -> dict[str, Any]:
    """Open-loop load at `rate` for `duration` over `connections` keep-alive TLS connections, from `processes`
    processes sharing one schedule; latencies are measured from each request's due time."""
    ctx = multiprocessing.get_context("fork")
    processes = max(1, min(processes, connections))
    per = [connections // processes + (k < connections % processes) for k in range(processes)]
    ready = ctx.Barrier(processes + 1)
    start_at = ctx.Value("d", 0.0)
    out = ctx.Queue()
    procs = [
        ctx.Process(
            target=_load_shard,
            args=(port, cafile, bodies, rate, duration, per[k], k, processes, ready, start_at, out),
        )
        for k in range(processes)
    ]
    for p in procs:
        p.start()
    ready.wait(timeout=120)
    start_at.value = time.perf_counter() + 0.05
    ready.wait(timeout=120)
    parts = [out.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(30)
    return {
        "latencies": [x for r in parts for x in r["latencies"]],
        "errors": [e for r in parts for e in r["errors"]],
        "elapsed": max(r["elapsed"] for r in parts),
        "sent": sum(r["sent"] for r in parts),
    }


def _closed_loop(port: int, cafile: str, bodies: list[bytes], duration: float, connections: int, out: Any) -> None:
    """Back-to-back requests on `connections` keep-alive connections: the peak throughput."""
    ctx = ssl.create_default_context(cafile=cafile)
    stop_at = time.perf_counter() + duration
    counts: list[int] = []
    lock = threading.Lock()

    def worker(k: int) -> None:
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
        done, i = 0, k
        while time.perf_counter() < stop_at:
            conn.request(
                "POST", "/validate", body=bodies[i % len(bodies)], headers={"Content-Type": "application/json"}
            )
            conn.getresponse().read()
            done += 1
            i += connections
        conn.close()
        with lock:
            counts.append(done)

    start = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.put({"requests": sum(counts), "elapsed": time.perf_counter() - start})


def _in_process(target: Any, *args: Any) -> dict[str, Any]:
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, out))
    proc.start()
    result: dict[str, Any] = out.get(timeout=600)
    proc.join(30)
    return result


# -- the server ------------------------------------------------------------------------------------------------------


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    cafile: str
    log: Path
    metrics_dir: Path

    def get(self, path: str) -> tuple[int, bytes]:
        conn = http.client.HTTPSConnection(
            "127.0.0.1", self.port, context=ssl.create_default_context(cafile=self.cafile)
        )
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def processes(self) -> dict[int, str]:
        """pid -> role for the master and its workers (the cert keeper is off: certificates come from files)."""
        found = {self.proc.pid: "master"}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == self.proc.pid:
                found[int(stat.parent.name)] = "worker"
        return found

    def memory_mib(self) -> dict[int, tuple[str, float, float]]:
        """pid -> (role, RSS MiB, PSS MiB)."""
        result = {}
        for pid, role in self.processes().items():
            try:
                rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
            except OSError:
                continue
            rss = int(re.search(r"^Rss:\s+(\d+)", rollup, re.M).group(1)) / 1024  # type: ignore[union-attr]
            pss = int(re.search(r"^Pss:\s+(\d+)", rollup, re.M).group(1)) / 1024  # type: ignore[union-attr]
            result[pid] = (role, rss, pss)
        return result

    def metric(self, name: str, labels: str = "") -> float:
        _, text = self.get("/metrics")
        total = 0.0
        for line in text.decode().splitlines():
            if line.startswith(name) and (not labels or labels in line):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def cpu_seconds(self) -> float:
        """CPU time (user + system) of the master and its workers so far."""
        tick = os.sysconf("SC_CLK_TCK")
        total = 0.0
        for pid in self.processes():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / tick
        return total

    def histogram(self) -> dict[float, float]:
        """Cumulative counts of the server's own admission-latency histogram (all workers), by bucket bound."""
        _, text = self.get("/metrics")
        counts: dict[float, float] = {}
        for line in text.decode().splitlines():
            m = re.match(r'pcidevices_webhook_admission_seconds_bucket\{le="([^"]+)",webhook="validate"\} (\S+)', line)
            if m:
                counts[float(m.group(1))] = counts.get(float(m.group(1)), 0.0) + float(m.group(2))
        return counts

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(
    work: Path, *, floor: bool, view: Path, kubeconfig: Path, workers: int | None, tree: Path = ROOT
) -> Server:
    """The webhook of `tree` (this checkout, or another one: bench/memory.py runs an older commit beside it)."""
    port = _free_port()
    metrics_dir = work / ("metrics-floor" if floor else "metrics")
    env = {
        **os.environ,
        "PCIDEVICES_WEBHOOK_BIND": f"127.0.0.1:{port}",
        "PCIDEVICES_WEBHOOK_CERT_DIR": str(work / "certs"),
        "PCIDEVICES_WEBHOOK_MANAGE_CERTIFICATES": "false",
        "PCIDEVICES_WEBHOOK_VIEW_SOURCE": f"file:{view}",
        "PCIDEVICES_WEBHOOK_KUBECONFIG": str(kubeconfig),
        "PCIDEVICES_WEBHOOK_BENCH_FLOOR": "true" if floor else "false",
        "PCIDEVICES_WEBHOOK_LOG_LEVEL": "WARNING",
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        "PYTHONPATH": str(tree),
    }
    if workers is not None:
        env["PCIDEVICES_WEBHOOK_WORKERS"] = str(workers)
    log = work / ("server-floor.log" if floor else "server.log")
    with log.open("wb") as f:
        proc = subprocess.Popen([sys.executable, "-m", "webhook", "serve"], cwd=tree, env=env, stdout=f, stderr=f)
    server = Server(proc, port, str(work / "certs" / "ca.crt"), log, metrics_dir)
    deadline = time.monotonic() + 300
    n_workers = workers or 2
    # /readyz answers from whichever worker accepts; the metric counts every worker whose view is complete, so the
    # measurement never overlaps a worker still loading (it would hold the GIL and stall its admissions).
    while True:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"webhook did not start:\n{log.read_text()[-3000:]}")
        try:
            if server.metric("pcidevices_webhook_view_synced_workers") >= n_workers:
                break
        except (OSError, http.client.HTTPException):
            pass
        time.sleep(0.2)
    return server


# -- the run ---------------------------------------------------------------------------------------------------------


@dataclass
class Step:
    rate: float
    sent: int
    answered: int
    errors: int
    p50: float
    p99: float
    max: float
    throughput: float
    server_p50: float = float("nan")  # bucket bounds of the server's own histogram (time inside the app)
    server_p99: float = float("nan")
    cpu_ms_per_review: float = float("nan")  # server CPU per answered review: capacity independent of contention
    sample_errors: list[str] = field(default_factory=list)


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def _bucket_quantile(cumulative: dict[float, float], q: float) -> float:
    """The upper bound of the histogram bucket holding quantile q."""
    total = cumulative.get(float("inf"), 0.0)
    if not total:
        return float("nan")
    return next(le for le, count in cumulative.items() if count >= q * total)


def run_steps(
    server: Server, bodies: list[bytes], rates: list[float], duration: float, connections: int, processes: int
) -> list[Step]:
    steps = []
    load(server.port, server.cafile, bodies, 100.0, 2.0, connections, processes)  # warm-up: connections, caches
    for rate in rates:
        before = server.histogram()
        cpu_before = server.cpu_seconds()
        r = load(server.port, server.cafile, bodies, rate, duration, connections, processes)
        cpu = server.cpu_seconds() - cpu_before
        after = server.histogram()
        delta = {le: after[le] - before.get(le, 0.0) for le in sorted(after)}
        lat = r["latencies"]
        step = Step(
            rate=rate,
            sent=r["sent"],
            answered=len(lat),
            errors=len(r["errors"]),
            p50=_percentile(lat, 0.50),
            p99=_percentile(lat, 0.99),
            max=max(lat) if lat else float("nan"),
            throughput=len(lat) / r["elapsed"],
            server_p50=_bucket_quantile(delta, 0.50),
            server_p99=_bucket_quantile(delta, 0.99),
            cpu_ms_per_review=cpu / len(lat) * 1e3 if lat else float("nan"),
            sample_errors=r["errors"][:3],
        )
        steps.append(step)
        print(
            f"    {rate:7.0f}/s  p50 {step.p50 * 1e3:7.2f} ms  p99 {step.p99 * 1e3:7.2f} ms"
            f"  max {step.max * 1e3:7.1f} ms  answered {step.throughput:7.1f}/s  errors {step.errors}"
            f"  (in the app: p50 <= {step.server_p50 * 1e3:g} ms, p99 <= {step.server_p99 * 1e3:g} ms;"
            f" server CPU {step.cpu_ms_per_review:.2f} ms/review)",
            flush=True,
        )
        if step.errors:
            print(f"      e.g. {step.sample_errors[0][:200]}", flush=True)
        if step.p99 > 4 * SLO_P99_S and step.rate >= 1000:
            break  # far past saturation: higher rates only queue
    return steps


def _vm_main(argv: list[str]) -> int:
    """`--vm`: the VM UPDATE reviews of part 2 (bench/webhook_vm.py, which reuses this file's server and load)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_webhook_vm", ROOT / "bench" / "webhook_vm.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.argv = [str(ROOT / "bench" / "webhook_vm.py"), *argv]
    result: int = module.main()
    return result


def main() -> int:
    if "--vm" in sys.argv[1:]:
        return _vm_main([a for a in sys.argv[1:] if a != "--vm"])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vm", action="store_true", help="VM UPDATE reviews instead (see bench/webhook_vm.py)")
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--claims", type=int, default=20_000)
    parser.add_argument("--rates", default="250,500,750,1000,1250,1500,2000")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per rate step")
    parser.add_argument("--connections", type=int, default=16, help="keep-alive connections of the load")
    parser.add_argument(
        "--load-processes", type=int, default=default_load_processes(), help="processes the connections are spread over"
    )
    parser.add_argument("--workers", type=int, default=None, help="override the production worker count")
    parser.add_argument("--quick", action="store_true", help="2,000 devices, 400 claims, 3 s steps")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.quick:
        args.devices, args.claims, args.duration, args.rates = 2000, 400, 3.0, "250,500,1000"
    rates = [float(r) for r in args.rates.split(",")]
    print(f"load: {args.connections} connections from {args.load_processes} process(es); {os.cpu_count()} CPUs")
    rng = random.Random(42)
    work = Path(tempfile.mkdtemp(prefix="whbench"))
    servers: list[Server] = []
    sar_proc = None
    try:
        t = time.perf_counter()
        objects, free = build_view(args.devices, args.claims, rng)
        view = work / "view.jsonl"  # JSON Lines: each worker streams it, as a paginated list would arrive
        with view.open("w") as f:
            for obj in objects:
                f.write(json.dumps(obj) + "\n")
        n_pci = sum(o["kind"] == "PCIDevice" for o in objects)
        n_claims = sum(o["kind"] == "PCIDeviceClaim" for o in objects)
        print(
            f"view: {n_pci} PCIDevices, {n_claims} claims, {view.stat().st_size / 2**20:.0f} MiB "
            f"({time.perf_counter() - t:.1f} s to build)",
            flush=True,
        )
        gpus = [d for d in free if d["status"]["classId"] == "0302"]
        rng.shuffle(gpus)
        bodies = [claim_review(d, rng.choice(USERS)) for d in gpus[:20_000]]
        print(
            f"review bodies: {len(bodies)} distinct claim CREATEs, {sum(map(len, bodies)) / len(bodies):.0f} bytes "
            "each on average",
            flush=True,
        )
        write_certs(work / "certs")
        kubeconfig, sar_proc, counter = start_fake_api(work)

        results: dict[str, Any] = {"devices": n_pci, "claims": n_claims, "rates": rates, "duration_s": args.duration}
        for label, floor in (("policy", False), ("floor", True)):
            print(
                f"\n== {label}: {'constant allowed' if floor else 'full policy, SubjectAccessReview via fake API'}",
                flush=True,
            )
            t = time.perf_counter()
            server = start_server(work, floor=floor, view=view, kubeconfig=kubeconfig, workers=args.workers)
            servers.append(server)
            print(f"  ready in {time.perf_counter() - t:.1f} s", flush=True)
            sar_before = counter.value
            steps = run_steps(server, bodies, rates, args.duration, args.connections, args.load_processes)
            peak = _in_process(_closed_loop, server.port, server.cafile, bodies, args.duration, args.connections)
            mem = server.memory_mib()
            hits = server.metric("pcidevices_webhook_sar_cache_total", 'result="hit"')
            misses = server.metric("pcidevices_webhook_sar_cache_total", 'result="miss"')
            ok_rates = [s.rate for s in steps if s.p99 <= SLO_P99_S and not s.errors and s.throughput >= 0.97 * s.rate]
            results[label] = {
                "steps": [s.__dict__ for s in steps],
                "peak_throughput": peak["requests"] / peak["elapsed"],
                "highest_rate_p99_le_5ms": max(ok_rates, default=0.0),
                "sar_cache_hits": hits,
                "sar_cache_misses": misses,
                "sar_requests_seen_by_fake_api": counter.value - sar_before,
                "memory_mib": {str(pid): {"role": r, "rss": rss, "pss": pss} for pid, (r, rss, pss) in mem.items()},
            }
            print(f"  peak (closed loop, {args.connections} connections): {results[label]['peak_throughput']:.0f}/s")
            print(f"  SAR cache: {hits:.0f} hits, {misses:.0f} misses; fake API saw {counter.value - sar_before}")
            for pid, (role, rss, pss) in sorted(mem.items()):
                print(f"  memory {role:6s} pid {pid}: RSS {rss:6.1f} MiB, PSS {pss:6.1f} MiB")
            server.stop()
            servers.remove(server)

        _report(results)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
        return 0
    finally:
        for server in servers:
            server.stop()
        if sar_proc is not None:
            sar_proc.terminate()
            sar_proc.join(5)
        shutil.rmtree(work, ignore_errors=True)


def _report(results: dict[str, Any]) -> None:
    pol, flo = results["policy"], results["floor"]
    print("\n== summary (policy vs. floor; targets in brackets)")
    print(f"  {'rate':>8} {'p50 policy':>11} {'p50 floor':>10} {'p99 policy':>11} {'p99 floor':>10} {'p99 ratio':>10}")
    for a, b in zip(pol["steps"], flo["steps"], strict=False):
        ratio = a["p99"] / b["p99"] if b["p99"] else float("nan")
        print(
            f"  {a['rate']:>7.0f}/s {a['p50'] * 1e3:>9.2f}ms {b['p50'] * 1e3:>8.2f}ms "
            f"{a['p99'] * 1e3:>9.2f}ms {b['p99'] * 1e3:>8.2f}ms {ratio:>9.2f}x"
        )
    at500 = [s for s in pol["steps"] if s["rate"] == 500]
    floor500 = [s for s in flo["steps"] if s["rate"] == 500]
    if at500:
        print(
            f"  p99 at 500/s: {at500[0]['p99'] * 1e3:.2f} ms [<= 5 ms]"
            + (f", {at500[0]['p99'] / floor500[0]['p99']:.2f}x the floor [<= 2x]" if floor500 else "")
        )
    print(
        f"  highest rate with p99 <= 5 ms: policy {pol['highest_rate_p99_le_5ms']:.0f}/s, "
        f"floor {flo['highest_rate_p99_le_5ms']:.0f}/s"
    )
    print(
        f"  peak throughput: policy {pol['peak_throughput']:.0f}/s [>= 1000/s], floor {flo['peak_throughput']:.0f}/s "
        f"({pol['peak_throughput'] / flo['peak_throughput']:.2f}x)"
    )
    worst = max(m["rss"] for m in pol["memory_mib"].values())
    print(
        f"  largest process RSS: policy {worst:.0f} MiB [<= 250 MiB], floor "
        f"{max(m['rss'] for m in flo['memory_mib'].values()):.0f} MiB"
    )
    print(f"  SAR cache (policy run): {pol['sar_cache_hits']:.0f} hits / {pol['sar_cache_misses']:.0f} misses")
    cpu_pol = min(s["cpu_ms_per_review"] for s in pol["steps"])
    cpu_flo = min(s["cpu_ms_per_review"] for s in flo["steps"])
    print(
        f"  server CPU per review: policy {cpu_pol:.2f} ms, floor {cpu_flo:.2f} ms ({cpu_pol / cpu_flo:.2f}x); "
        f"i.e. about {1000 / cpu_pol:.0f} reviews/s per free core"
    )


if __name__ == "__main__":
    raise SystemExit(main())
