"""Passthrough handoff benchmark: the node tier's guest-node scenario (tests/node/test_passthrough_handoff.py), run
`--rounds` times, each with a fresh guest boot, printing its figures per round and their medians.

    .venv/bin/python bench/handoff.py [--rounds 3]

Needs scripts/prepare-node (which also prepares the kernel tier's guest and the guest's images). Per round: boot to
node Ready, claim -> node allocatable, kubelet restart -> new kubelet.sock -> plugin socket re-created -> plugin
registered -> allocatable back in the API, agent pod deleted -> replacement through its first pass, launcher pod
created -> Running, launcher deleted -> claim released and gone. Seconds; under TCG on whatever machine runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

FIGURES = {
    "claim -> allocatable": ("claim", "claim_to_allocatable_s"),
    "kubelet start -> kubelet.sock": ("kubelet_restart", "sock_after_start_s"),
    "kubelet.sock -> plugin registered": ("kubelet_restart", "registered_after_kubelet_sock_s"),
    "kubelet.sock -> allocatable back": ("kubelet_restart", "allocatable_after_kubelet_sock_s"),
    "agent pod deleted -> new one serving": ("agent_restart", "ready_s"),
    "launcher created -> Running": ("launcher", "created_to_running_s"),
    "launcher deleted -> claim gone": ("release", "claim_gone_after_pod_s"),
}


def one_round(path: Path) -> dict[str, Any]:
    env = {**os.environ, "PCIDEVICES_HANDOFF_RECORD": str(path)}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-m", "node", "-p", "no:cacheprovider",
         "tests/node/test_passthrough_handoff.py"],
        cwd=REPO, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    summary = [line for line in proc.stdout.splitlines() if line.startswith(("guest node:", "handoff:"))]
    print("\n".join(summary))
    if proc.returncode != 0:
        print(proc.stdout[-4000:], file=sys.stderr)
    record: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    record["_passed"] = proc.returncode == 0
    return record


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.rounds):
            print(f"--- round {i + 1}")
            rounds.append(one_round(Path(tmp) / f"round{i}.json"))
    print("--- medians over", len(rounds), "rounds (seconds)")
    for label, (step, key) in FIGURES.items():
        values = [r[step][key] for r in rounds if isinstance(r.get(step, {}).get(key), int | float)]
        shown = f"{statistics.median(values):.2f} (of {', '.join(f'{v:.2f}' for v in values)})" if values else "-"
        print(f"  {label:40s} {shown}")
    return 0 if all(r["_passed"] for r in rounds) else 1


if __name__ == "__main__":
    sys.exit(main())
