"""Agent processes of the local cluster, configured like the chart's DaemonSet (its env) plus a kubeconfig.

    python -m devcluster.nodes sim   --workdir DIR    a simulated node: synthetic devices, simulated kernel
    python -m devcluster.nodes local                  this machine, discovery only: it can never bind a device

Both run until SIGTERM/SIGINT. The local node's guarantee does not rest on the cluster: its SysfsRoot refuses
every write, and module loads and chowns raise, so even a claim that got through cannot change this machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

import apiclient.client
from nodeagent import wiring
from nodeagent.errors import SysfsError
from nodeagent.idsdb import NamesDatabases
from nodeagent.settings import AgentSettings
from nodeagent.sysfs.root import SysfsRoot

log = logging.getLogger(__name__)

# The simulated node's devices: (address, vendor, device, class, IOMMU group, native driver).
SIM_DEVICES = (
    ("0000:00:03.0", "10de", "1eb8", "030200", 10, "nvidia"),  # Tesla T4
    ("0000:00:03.1", "10de", "10f8", "040300", 10, "snd_hda_intel"),  # its audio function, same IOMMU group
    ("0000:00:04.0", "8086", "10fb", "020000", 11, "ixgbe"),  # 82599ES 10G NIC, not carrying any route
    ("0000:00:14.0", "8086", "a36d", "0c0330", 12, "xhci_hcd"),  # USB controller with a USB stick behind it
)
SIM_USB = ("1-2", "0781", "5583", "0000:00:14.0")  # SanDisk Ultra Fit on bus 1, port 2


class ReadOnlyRoot(SysfsRoot):
    """A SysfsRoot that refuses every write: the hard discovery-only setting of the local node."""

    def write_attr(self, host_path: str, value: str) -> None:
        log.warning("discovery-only node refused a sysfs write", extra={"path": host_path})
        raise SysfsError(f"discovery-only node: not writing {host_path}", path=host_path, errno=errno.EPERM)


def _refuse_modules(names: Sequence[str]) -> None:
    raise SysfsError(f"discovery-only node: not loading {', '.join(names)}", path="/lib/modules", errno=errno.EPERM)


def _refuse_chown(path: str, uid: int, gid: int) -> None:
    raise SysfsError(f"discovery-only node: not changing the owner of {path}", path=path, errno=errno.EPERM)


def _settings() -> AgentSettings:
    s = AgentSettings.from_env(os.environ)
    # No kubelet here: no device-plugin registration, no pod-resources socket, no udev monitor.
    return dataclasses.replace(s, device_plugins=False, udev=False, health_host="127.0.0.1")


def build_sim(workdir: Path, settings: AgentSettings, api: apiclient.KubeApi) -> wiring.Agent:
    from tests.support.simhost import SimHost  # the simulated kernel lives with the tests

    host = SimHost(workdir)
    for address, vendor, device, cls, group, native in SIM_DEVICES:
        host.pci(address, native=native, group=group, vendor=vendor, device=device, cls=cls)
    port, vendor, product, controller = SIM_USB
    host.tree.usb(port, vendor=vendor, product=product, devnum=3, controller=controller, serial="4C530001")
    return wiring.build(
        settings,
        api,
        root=host.root(),
        db=NamesDatabases.load(settings.pci_ids, settings.usb_ids),
        load_modules=host.sim.load_modules,
        chown=lambda path, uid, gid: None,
    )


def build_local(settings: AgentSettings, api: apiclient.KubeApi) -> wiring.Agent:
    root = ReadOnlyRoot(settings.root, proc=settings.proc)
    root.check()
    return wiring.build(settings, api, root=root, load_modules=_refuse_modules, chown=_refuse_chown)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devcluster.nodes")
    parser.add_argument("mode", choices=("sim", "local"))
    parser.add_argument("--workdir", type=Path, help="where the simulated node's sysfs tree goes (sim)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    settings = _settings()
    api = apiclient.client.Client.connect(settings.kubeconfig)
    if args.mode == "sim":
        if args.workdir is None:
            parser.error("sim needs --workdir")
        agent = build_sim(args.workdir, settings, api)
    else:
        agent = build_local(settings, api)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    agent.start()
    log.info("agent started", extra={"node": settings.node_name, "mode": args.mode})
    stop.wait()
    # Agent.stop joins each thread in turn (watches blocked in long-poll reads take their timeout); neither node keeps
    # state worth waiting for, so give it 3 s in all, then leave.
    stopper = threading.Thread(target=agent.stop, kwargs={"timeout": 1.0}, daemon=True)
    stopper.start()
    stopper.join(3.0)
    log.info("agent stopped", extra={"node": settings.node_name})
    logging.shutdown()
    os._exit(0)


if __name__ == "__main__":
    raise SystemExit(main())
