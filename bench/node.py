"""Node benchmark: how fast the chart comes up on a real node, as the node tier runs it.

    .venv/bin/python bench/node.py [--rounds 3]

Needs scripts/prepare-node (binaries, image, pause image). Starts the node tier's sandbox, control plane and node
once (tests/support/node.py), imports the images, then per round: `helm install` of the unmodified chart -> every
pod Running and Ready (seconds), and for one webhook pod deleted: the replacement pod's creation -> Ready (seconds,
from the pod's own timestamps), then `helm uninstall` (CRDs kept). Prints each round and the medians.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from nodeagent.settings import LABEL_OBSERVE_ONLY  # noqa: E402
from tests.node.conftest import (  # noqa: E402
    CHART,
    CONTROLLERS,
    NODE,
    NS,
    TEST_CRDS,
    Installed,
    _prepared,
    chart_values,
)
from tests.support.controlplane import Binaries, ControlPlane  # noqa: E402
from tests.support.node import Node, NodeBinaries, Sandbox  # noqa: E402


def _ts(value: str) -> float:
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def _webhook_start_to_ready(inst: Installed) -> float:
    before = {p["metadata"]["name"] for p in inst.pods("pcidevices-webhook")}
    inst.cp.kubectl("delete", "pod", "-n", NS, sorted(before)[0], "--wait=false")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        for p in inst.pods("pcidevices-webhook"):
            if p["metadata"]["name"] in before:
                continue
            ready = next((c for c in p["status"].get("conditions", []) if c["type"] == "Ready"), None)
            if ready and ready["status"] == "True":
                return _ts(ready["lastTransitionTime"]) - _ts(p["metadata"]["creationTimestamp"])
        time.sleep(0.5)
    raise RuntimeError("no replacement webhook pod became Ready")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    images = _prepared()
    binaries, node_binaries = Binaries.locate(REPO), NodeBinaries.locate(REPO)
    workdir = Path(tempfile.mkdtemp(prefix="pcdn-bench-", dir="/tmp"))
    installs, starts = [], []
    with Sandbox(workdir / "sandbox") as sandbox, sandbox.entered():
        cp = ControlPlane(
            binaries, workdir / "cp", network=sandbox.network, controller_manager=True, controllers=CONTROLLERS
        )
        with cp:
            sandbox.route_apiserver(int(cp.server.rsplit(":", 1)[1]))
            cp.start_scheduler(node_binaries.kube_scheduler)
            cp.install_crds(TEST_CRDS)
            labels = {LABEL_OBSERVE_ONLY: "true"}
            with Node(cp, node_binaries, sandbox, workdir / "node", name=NODE, labels=labels) as node:
                for archive in (images["pause"], images["archive"]):
                    node.import_image(archive)
                sets = [a for v in chart_values(node) for a in ("--set", v)]
                for i in range(args.rounds):
                    started = time.monotonic()
                    cp.helm("install", "pcidevices", str(CHART), "-n", NS, "--create-namespace", *sets, timeout=600)
                    inst = Installed(cp, node, sandbox, chart_values(node), 0.0)
                    installs.append(time.monotonic() - started + inst.wait_all_ready())
                    starts.append(_webhook_start_to_ready(inst))
                    print(f"round {i + 1}: helm install -> all pods Ready {installs[-1]:.1f}s; "
                          f"webhook pod created -> Ready {starts[-1]:.0f}s", flush=True)  # fmt: skip
                    cp.helm("uninstall", "pcidevices", "-n", NS, "--wait", "--timeout=300s", timeout=600)
    print(f"median over {args.rounds} rounds: helm install -> all pods Ready {statistics.median(installs):.1f}s, "
          f"webhook pod created -> Ready {statistics.median(starts):.0f}s (timestamps in whole seconds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
