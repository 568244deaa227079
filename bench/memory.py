"""Memory of the webhook and the agent, before and after a change, side by side in one run.

    .venv/bin/python bench/memory.py [--base REV] [--devices 100000] [--claims 20000] [--agent-devices 1000]

The "before" side is REV checked out into a temporary `git worktree` (default: the commit just before the webhook's
`kubernetes`-based adapter went, i.e. before apiclient/ became the one door to the API server); the "after" side is
this checkout. Both run from the same virtual environment (the test extra keeps the `kubernetes` package installed,
so the older commit still runs), one after the other, on the same machine:

- the webhook as production runs it (bench/webhook.py's server: gunicorn, TLS, the view of --devices PCIDevices and
  --claims claims read from a file, SubjectAccessReviews answered by a local fake API through the client), after a
  closed-loop burst of claim reviews; printed: the RSS of each worker and of the master (target: worker <= 120 MiB);
- the agent with --agent-devices PCI functions on a fake tree against a real kube-apiserver (bench/agent_rss.py of
  this checkout running each side's code, the tree built outside the agent's process), after its first pass and
  three more (target <= 60 MiB).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import agent as agent_bench  # noqa: E402
from bench import webhook as webhook_bench  # noqa: E402

WEBHOOK_TARGET_MIB = 120
AGENT_TARGET_MIB = 60


def default_base() -> str:
    """The parent of the commit that removed webhook/kube.py (the webhook's `kubernetes` adapter)."""
    removed = subprocess.run(
        ["git", "rev-list", "-n", "1", "HEAD", "--", "webhook/kube.py"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    if not removed:
        raise SystemExit("no commit removed webhook/kube.py here; pass --base REV")
    return f"{removed}^"


def checkout(rev: str, where: Path) -> Path:
    """REV as a detached worktree at `where`, with this checkout's compiled scan accelerator when its source is the
    same (both sides then scan alike)."""
    subprocess.run(["git", "worktree", "add", "--detach", str(where), rev], cwd=ROOT, check=True, capture_output=True)
    source = "nodeagent/sysfs/_pcifast.c"
    if (where / source).exists() and (where / source).read_bytes() == (ROOT / source).read_bytes():
        for built in (ROOT / "nodeagent/sysfs").glob("_pcifast*.so"):
            shutil.copy2(built, where / "nodeagent/sysfs" / built.name)
    return where


def describe(rev: str) -> str:
    return subprocess.run(
        ["git", "log", "-1", "--format=%h %s", rev], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()[:90]


def webhook_rss(tree: Path, work: Path, view: Path, kubeconfig: Path, bodies: list[bytes]) -> dict[str, float]:
    """Worker and master RSS (MiB) of `tree`'s webhook after a burst of claim reviews."""
    work.mkdir()
    shutil.copytree(view.parent / "certs", work / "certs")
    server = webhook_bench.start_server(work, floor=False, view=view, kubeconfig=kubeconfig, workers=None, tree=tree)
    try:
        webhook_bench._in_process(webhook_bench._closed_loop, server.port, server.cafile, bodies, 5.0, 8)
        time.sleep(1)
        memory = server.memory_mib()
    finally:
        server.stop()
    workers = [rss for role, rss, _ in memory.values() if role == "worker"]
    master = [rss for role, rss, _ in memory.values() if role == "master"]
    return {"worker": max(workers), "master": max(master)}


def agent_rss(tree: Path, kubeconfig: Path, node: str, devices: int) -> dict[str, float]:
    r = agent_bench.rss_child(tree, kubeconfig, node, devices)
    return {"rss": r["vm_rss_kib"] / 1024, "peak": r["vm_hwm_kib"] / 1024, "first_pass_s": r["first_pass_s"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default=None, help="the 'before' commit (default: see above)")
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--claims", type=int, default=20_000)
    parser.add_argument("--agent-devices", type=int, default=1000)
    parser.add_argument("--skip-agent", action="store_true", help="webhook only (no kube-apiserver needed)")
    args = parser.parse_args()
    base = args.base or default_base()
    work = Path(tempfile.mkdtemp(prefix="membench"))
    before = checkout(base, work / "before")
    sides = {"before": before, "after": ROOT}
    print(f"before: {describe(base)}\nafter:  {describe('HEAD')} (+ uncommitted changes, if any)", flush=True)
    results: dict[str, dict[str, dict[str, float]]] = {side: {} for side in sides}
    sar_proc = None
    try:
        rng = random.Random(42)
        objects, free = webhook_bench.build_view(args.devices, args.claims, rng)
        view = work / "view.jsonl"
        with view.open("w") as f:
            for obj in objects:
                f.write(json.dumps(obj) + "\n")
        gpus = [d for d in free if d["status"]["classId"] == "0302"][:2000]
        bodies = [webhook_bench.claim_review(d, rng.choice(webhook_bench.USERS)) for d in gpus]
        webhook_bench.write_certs(work / "certs")
        kubeconfig, sar_proc, _ = webhook_bench.start_fake_api(work)
        for side, tree in sides.items():
            t = time.perf_counter()
            results[side]["webhook"] = webhook_rss(tree, work / f"webhook-{side}", view, kubeconfig, bodies)
            print(f"  webhook {side}: {results[side]['webhook']} ({time.perf_counter() - t:.0f} s)", flush=True)
        if not args.skip_agent:
            from tests.support.controlplane import Binaries, ControlPlane

            with ControlPlane(Binaries.locate(ROOT), work / "controlplane") as cp:
                api = agent_bench.setup_cluster(cp)
                for side, tree in sides.items():
                    node = f"membench-{side}"
                    agent_bench.add_node(api, node)
                    kubeconfig = agent_bench.json_kubeconfig(cp)
                    results[side]["agent"] = agent_rss(tree, kubeconfig, node, args.agent_devices)
                    print(f"  agent {side}: {results[side]['agent']}", flush=True)
        report(results, args)
        return 0
    finally:
        if sar_proc is not None:
            sar_proc.terminate()
            sar_proc.join(5)
        subprocess.run(["git", "worktree", "remove", "--force", str(before)], cwd=ROOT, check=False)
        shutil.rmtree(work, ignore_errors=True)


def report(results: dict[str, dict[str, dict[str, float]]], args: argparse.Namespace) -> None:
    b, a = results["before"], results["after"]
    print(f"\n== memory, before vs after (RSS, MiB; {os.cpu_count()} CPUs)")
    print(f"  {'':44} {'before':>8} {'after':>8} {'change':>8}   target")
    rows = [
        (f"webhook worker, {args.devices:,} devices in view", "webhook", "worker", f"<= {WEBHOOK_TARGET_MIB}"),
        ("webhook master", "webhook", "master", ""),
    ]
    if "agent" in a:
        rows += [
            (f"agent, {args.agent_devices:,} devices", "agent", "rss", f"<= {AGENT_TARGET_MIB}"),
            ("agent, peak", "agent", "peak", ""),
        ]
    for label, part, key, target in rows:
        x, y = b[part][key], a[part][key]
        print(f"  {label:44} {x:8.1f} {y:8.1f} {y - x:+8.1f}   {target}")


if __name__ == "__main__":
    raise SystemExit(main())
