"""The guest side of the node tier's guest node (tests/support/guestnode.py): a real kubelet node in the kernel tier's
qemu guest, and a small command server through which the host drives it.

Runs as the script of the guest's init (PID 1's child, as root). The host shares a work folder at /node (virtio-9p,
mount tag `node`) holding `guest.json`: the addresses of qemu's user-mode network, the command port, and the
containerd and kubelet command lines with every file they need (binaries, configuration, certificates, image
archives) under /node. This script

1. mounts cgroup2 at /sys/fs/cgroup (the guest is cgroup v2 only: the kubelet needs no `failCgroupV1` here), a tmpfs
   at /var/lib and /var/log (containerd's images and snapshots, the kubelet's state, pod logs), configures the NIC of
   qemu's user network and the loopback device;
2. serves commands on TCP (`guest.json` "port", reached from the host through qemu's `hostfwd`): one JSON request
   line, one JSON answer line per connection (see `handle`);
3. unpacks containerd's root prepared on the host (the images already imported and unpacked there), starts
   containerd, imports any further image archives into its `k8s.io` namespace, starts the kubelet, and reports each
   step with its seconds in the `state` the `ping` command returns;
4. on `shutdown`: stops the kubelet, then containerd, and exits (the init then prints its verdict and powers off).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
import traceback
from typing import Any

SHARE = "/node"
CONFIG = f"{SHARE}/guest.json"
LOGS = "/var/log/pcidevices"

state: dict[str, Any] = {"phase": "starting", "seconds": {}, "errors": [], "images": {}}
procs: dict[str, subprocess.Popen[bytes]] = {}
argvs: dict[str, list[str]] = {}
lock = threading.Lock()
done = threading.Event()
started = time.monotonic()


def say(text: str) -> None:
    print(f"guestnode [{time.monotonic() - started:6.1f}s] {text}", flush=True)


def sh(*argv: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: rc={proc.returncode} {proc.stderr.strip()}")
    return proc


def mounted(path: str) -> bool:
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == path for line in f)


def mount_share() -> None:
    os.makedirs(SHARE, exist_ok=True)
    if not mounted(SHARE):
        # cache=mmap: files the host adds later are seen, and binaries can be executed (mapped) from the share
        sh("mount", "-t", "9p", "-o", "trans=virtio,version=9p2000.L,msize=524288,cache=mmap", "node", SHARE)


def interface_with_mac(mac: str) -> str:
    for name in sorted(os.listdir("/sys/class/net")):
        with contextlib.suppress(OSError), open(f"/sys/class/net/{name}/address") as f:
            if f.read().strip().lower() == mac.lower():
                return name
    raise RuntimeError(f"no network interface with address {mac}")


def set_up_system(cfg: dict[str, Any]) -> None:
    if not mounted("/sys/fs/cgroup"):
        sh("mount", "-t", "cgroup2", "-o", "nsdelegate", "cgroup2", "/sys/fs/cgroup")
    for path in ("/var/lib", "/var/log"):
        os.makedirs(path, exist_ok=True)
        if not mounted(path):
            sh("mount", "-t", "tmpfs", "-o", "mode=755", "tmpfs", path)
    os.makedirs(LOGS, exist_ok=True)
    for d in cfg.get("make_dirs", []):
        os.makedirs(d, exist_ok=True)
    socket.sethostname(cfg["name"])
    with open("/etc/hostname", "w") as f:
        f.write(cfg["name"] + "\n")
    with open("/etc/hosts", "w") as f:
        f.write(f"127.0.0.1 localhost\n{cfg['ip']} {cfg['name']}\n")
    net = cfg["network"]
    nic = interface_with_mac(net["mac"])
    sh("ip", "link", "set", "lo", "up")
    sh("ip", "link", "set", nic, "up")
    sh("ip", "addr", "add", f"{cfg['ip']}/{net['prefix']}", "dev", nic)
    sh("ip", "route", "add", "default", "via", net["gateway"])
    with open("/proc/sys/net/ipv4/ip_forward", "w") as f:
        f.write("1")
    for module in cfg.get("modules", []):
        sh("modprobe", module)
    say(f"system ready: cgroup2, tmpfs /var/lib and /var/log, {nic} {cfg['ip']}/{net['prefix']}")


def spawn(name: str, argv: list[str], env: dict[str, str] | None = None) -> int:
    """Start a long-running process with its output in /var/log/pcidevices/<name>.log; replaces a dead one."""
    with lock:
        old = procs.get(name)
        if old is not None and old.poll() is None:
            raise RuntimeError(f"{name} is already running (pid {old.pid})")
        with open(f"{LOGS}/{name}.log", "ab") as out:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                start_new_session=True,
            )
        procs[name] = proc
        argvs[name] = argv
    return proc.pid


def stop(name: str, timeout: float = 30) -> int | None:
    with lock:
        proc = procs.get(name)
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return proc.returncode


def wait_for(check: Any, timeout: float, step: float = 0.01) -> float | None:
    """Seconds until check() held, polling every `step`; None when it did not within `timeout`."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            return None
        time.sleep(step)
    return time.monotonic() - start


def file_id(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino, st.st_ctime_ns)


def bring_up(cfg: dict[str, Any]) -> None:
    """containerd, the images, the kubelet; each step's seconds into state."""
    try:
        t = time.monotonic()
        ctd = cfg["containerd"]
        if ctd.get("prepared_root"):  # containerd's root with the images, made on the host (guestnode.prepare_images)
            root = ctd["root"]
            os.makedirs(root, exist_ok=True)
            sh("tar", "--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf", ctd["prepared_root"], "-C", root,
               timeout=600)  # fmt: skip
            state["seconds"]["images"] = round(time.monotonic() - t, 2)
            say(f"images unpacked into {root} in {state['seconds']['images']}s")
            t = time.monotonic()
        spawn("containerd", ctd["argv"], ctd.get("env"))
        ctr = [*ctd["ctr"], "--namespace=k8s.io"]
        ok = wait_for(lambda: sh(*ctr, "version", check=False, timeout=30).returncode == 0, 180, step=0.2)
        if ok is None:
            raise RuntimeError("containerd did not answer within 180 s")
        state["seconds"]["containerd"] = round(time.monotonic() - t, 2)
        say(f"containerd ready in {state['seconds']['containerd']}s")
        for archive in cfg.get("images", []):
            t = time.monotonic()
            sh(*ctr, "images", "import", "--no-unpack=false", archive, timeout=900)
            state["images"][os.path.basename(archive)] = round(time.monotonic() - t, 2)
            say(f"imported {os.path.basename(archive)} in {state['images'][os.path.basename(archive)]}s")
        t = time.monotonic()
        kubelet = cfg["kubelet"]
        spawn("kubelet", kubelet["argv"], kubelet.get("env"))
        sock = kubelet["plugin_socket"]
        if wait_for(lambda: os.path.exists(sock), 180, step=0.1) is None:
            raise RuntimeError(f"the kubelet made no {sock} within 180 s")
        state["seconds"]["kubelet"] = round(time.monotonic() - t, 2)
        say(f"kubelet serving its device-plugin registration in {state['seconds']['kubelet']}s")
        state["phase"] = "running"
    except Exception:
        state["errors"].append(traceback.format_exc())
        state["phase"] = "failed"
        say("bring-up failed:\n" + traceback.format_exc())


def restart_kubelet(req: dict[str, Any], cfg: dict[str, Any]) -> dict[str, Any]:
    """Stop the kubelet, start it again with the same command line, and time (guest clock) what follows: the new
    kubelet.sock, the device-plugin sockets named in `sockets` re-created, and `registered` (a URL whose body is
    polled until the text `until` appears, e.g. the agent's registration counter)."""
    kubelet = cfg["kubelet"]
    sock = kubelet["plugin_socket"]
    sockets: list[str] = req.get("sockets", [])
    before = {p: file_id(p) for p in [sock, *sockets]}
    t0 = time.monotonic()
    code = stop("kubelet")
    stopped = time.monotonic()
    spawn("kubelet", argvs["kubelet"], kubelet.get("env"))
    begun = time.monotonic()
    out: dict[str, Any] = {"stop_rc": code, "stop_s": round(stopped - t0, 3)}
    if wait_for(lambda: file_id(sock) not in (None, before[sock]), 120) is None:
        out["error"] = "no new kubelet.sock within 120 s"
        return out
    at_sock = time.monotonic()
    out["sock_after_start_s"] = round(at_sock - begun, 3)
    out["old_sockets_gone"] = {p: file_id(p) != before[p] for p in sockets}
    for p in sockets:
        took = wait_for(lambda p=p: file_id(p) not in (None, before[p]), 60)
        out.setdefault("socket_after_kubelet_sock_s", {})[p] = None if took is None else round(
            time.monotonic() - at_sock, 3
        )
    url, until = req.get("registered"), req.get("until")
    if url and until:

        def seen() -> bool:
            try:
                import urllib.request

                with urllib.request.urlopen(url, timeout=2) as r:  # noqa: S310 - the agent's port in the guest
                    return until in r.read().decode()
            except OSError:
                return False

        took = wait_for(seen, 60, step=0.02)
        out["registered_after_kubelet_sock_s"] = None if took is None else round(time.monotonic() - at_sock, 3)
    out["since_kubelet_sock_s"] = round(time.monotonic() - at_sock, 3)
    return out


def run(req: dict[str, Any]) -> dict[str, Any]:
    t = time.monotonic()
    try:
        proc = subprocess.run(
            req["argv"],
            input=req.get("input", "").encode(),
            capture_output=True,
            timeout=req.get("timeout", 60),
            env={**os.environ, **req.get("env", {})},
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        return {"rc": None, "stdout": (e.stdout or b"").decode(errors="replace"), "stderr": "timed out",
                "seconds": round(time.monotonic() - t, 3)}  # fmt: skip
    except OSError as e:
        return {"rc": 127, "stdout": "", "stderr": str(e), "seconds": round(time.monotonic() - t, 3)}
    return {
        "rc": proc.returncode,
        "stdout": proc.stdout.decode(errors="replace"),
        "stderr": proc.stderr.decode(errors="replace"),
        "seconds": round(time.monotonic() - t, 3),
    }


def handle(req: dict[str, Any], cfg: dict[str, Any]) -> dict[str, Any]:
    """ping | exec {argv, input, timeout, env} | spawn {name, argv, env} | stop {name} | restart-kubelet {...} |
    shutdown."""
    op = req.get("op")
    if op == "ping":
        with lock:
            running = {n: p.poll() is None for n, p in procs.items()}
        return {"state": state, "running": running, "uptime_s": round(time.monotonic() - started, 1)}
    if op == "exec":
        return run(req)
    if op == "spawn":
        return {"pid": spawn(req["name"], req["argv"], req.get("env"))}
    if op == "stop":
        return {"rc": stop(req["name"], req.get("timeout", 30))}
    if op == "restart-kubelet":
        return restart_kubelet(req, cfg)
    if op == "shutdown":
        done.set()
        return {"ok": True}
    raise ValueError(f"unknown op {op!r}")


def serve(cfg: dict[str, Any]) -> socketserver.ThreadingTCPServer:
    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            try:
                req = json.loads(self.rfile.readline())
                answer = {"ok": True, **handle(req, cfg)}
            except Exception as e:
                answer = {"ok": False, "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()}
            self.wfile.write((json.dumps(answer) + "\n").encode())

    socketserver.ThreadingTCPServer.allow_reuse_address = True
    socketserver.ThreadingTCPServer.daemon_threads = True
    server = socketserver.ThreadingTCPServer(("0.0.0.0", cfg["port"]), Handler)
    threading.Thread(target=server.serve_forever, name="commands", daemon=True).start()
    return server


def main() -> int:
    mount_share()
    with open(CONFIG) as f:
        cfg = json.load(f)
    set_up_system(cfg)
    server = serve(cfg)
    say(f"commands on port {cfg['port']}")
    threading.Thread(target=bring_up, args=(cfg,), name="bring-up", daemon=True).start()
    done.wait()
    say("shutting down")
    server.shutdown()
    for name in ["kubelet", *[n for n in procs if n not in ("kubelet", "containerd")], "containerd"]:
        stop(name, 20)
    return 1 if state["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
