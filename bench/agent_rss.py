"""The agent's resident memory, measured in a process of its own: run by bench/agent.py and bench/memory.py.

    python bench/agent_rss.py SOURCE_TREE KUBECONFIG NODE DEVICES SYSFS_TREE

Imports only what the agent imports, from SOURCE_TREE (this checkout, or an older commit's worktree for a before/after
comparison; both run through this same file so the harness costs them alike). The fake sysfs tree is built by the
caller (`bench.agent.rss_tree`): the agent in a pod never builds one. Prints one JSON line.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

NAMESPACE = "kubevirt-bench"


def connect(kubeconfig: Path) -> Any:
    """The tree's API client: apiclient/ today, nodeagent/kube.py before apiclient/ became the one door."""
    try:
        import apiclient.client
    except ImportError:
        from nodeagent import kube  # type: ignore[attr-defined]

        return kube.ApiKube.connect(kubeconfig)
    return apiclient.client.Client.connect(kubeconfig)


def main(source: str, kubeconfig: str, node: str, ndev: int, tree: str) -> None:
    sys.path.insert(0, source)
    from nodeagent import wiring
    from nodeagent.idsdb import NamesDatabases
    from nodeagent.settings import AgentSettings
    from nodeagent.sysfs.root import SysfsRoot

    settings = AgentSettings(
        node_name=node,
        namespace=NAMESPACE,
        kubevirt_namespace=NAMESPACE,
        device_plugins=False,
        udev=False,
        resync_s=3600.0,
    )
    api = connect(Path(kubeconfig))
    agent = wiring.build(settings, api, root=SysfsRoot(tree), db=NamesDatabases.load(None, None), serve_health=False)
    started = time.monotonic()
    agent.start()
    deadline = started + 600
    while not (agent.runner.stats.passes >= 1 and agent.runner.stats.last_success is not None):
        if time.monotonic() > deadline:
            raise SystemExit("the agent's first pass did not finish in 600 s")
        time.sleep(0.01)
    first = time.monotonic() - started
    for _ in range(3):
        agent.runner.nudge()
        time.sleep(1)
    imported = sorted(m for m in sys.modules if m.split(".")[0] in ("kubernetes", "cryptography", "tests"))
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    out = {
        "devices": ndev,
        "first_pass_s": round(first, 2),
        "passes": agent.runner.stats.passes,
        "failures": agent.runner.stats.failures,
        "vm_rss_kib": int(fields["VmRSS"].split()[0]),
        "vm_hwm_kib": int(fields["VmHWM"].split()[0]),
        "extra_modules": imported,
    }
    agent.stop(timeout=1.0)
    print(json.dumps(out))


if __name__ == "__main__":
    if len(sys.argv) != 6:
        raise SystemExit(__doc__)
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
