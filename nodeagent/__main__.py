"""`pcidevices-agent`: the node agent's command line; the only place that reads argv and sets up logging.

    pcidevices-agent discover [--root DIR] [--node-name NAME] [--node-ip IP] [-o table|wide|yaml|json]
    pcidevices-agent run      (the DaemonSet process; configured from the environment, see nodeagent.settings)
    pcidevices-agent takeover [--root DIR] [--node-name NAME] [--claimed ADDRESS ...] [--dry-run]
                              (one-shot: remove_id for the vfio-pci new_id entries upstream left on this node)
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import socket
import sys
from collections.abc import Sequence
from typing import TextIO

from nodeagent import discovery
from nodeagent.errors import DiscoveryError, RootUnavailable
from nodeagent.idsdb import NamesDatabases
from nodeagent.sysfs.root import SysfsRoot

EXIT_USAGE = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pcidevices-agent", description="pcidevices node agent")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages to stderr")
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("discover", help="show this node's PCI and USB devices as the agent would write them")
    d.add_argument("--root", default="/", help="directory that stands for / (sys, dev, proc); default /")
    d.add_argument("--proc", default=None, help="where the host's /proc is, if not <root>/proc")
    d.add_argument("--node-name", default=None, help="node name for object names (default: the host name)")
    d.add_argument("--node-ip", default=None, help="the node's InternalIP; NICs carrying it are host-critical")
    d.add_argument("-o", "--output", choices=("table", "wide", "yaml", "json"), default="table")
    d.add_argument("--pci-ids", default=None, help="pci.ids file (default: the system's)")
    d.add_argument("--usb-ids", default=None, help="usb.ids file (default: the system's)")
    sub.add_parser("run", help="run the node agent (settings from the environment: NODE_NAME, HOST_ROOT, ...)")
    t = sub.add_parser("takeover", help="remove the vfio-pci dynamic ids upstream left; bound devices stay bound")
    t.add_argument("--root", default="/", help="directory that stands for / (sys); default /")
    t.add_argument("--node-name", default=None, help="this node (default: $NODE_NAME or the host name)")
    t.add_argument(
        "--claimed", action="append", default=None, metavar="ADDRESS", help="a claimed PCI address (skips the API)"
    )
    t.add_argument("--kubeconfig", default=None, help="kubeconfig for listing claims (default: in-cluster)")
    t.add_argument("--dry-run", action="store_true", help="print what would be removed, write nothing")
    return parser


def _takeover(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    import os
    from pathlib import Path

    from nodeagent.errors import SysfsError
    from nodeagent.host import dynids
    from policy import names

    root = SysfsRoot(args.root)
    try:
        root.check()
    except RootUnavailable as e:
        print(f"pcidevices-agent: --root: {e}", file=err)
        return EXIT_USAGE
    node = args.node_name or os.environ.get("NODE_NAME") or socket.gethostname()
    if args.claimed is not None:
        claimed = set(args.claimed)
    else:
        import apiclient.client  # only when the API is asked (the kernel-tier guest has no HTTP client)

        try:
            api = apiclient.client.Client.connect(Path(args.kubeconfig) if args.kubeconfig else None)
            items = api.list(apiclient.PCIDEVICECLAIMS).items
        except (apiclient.KubeError, OSError, ValueError) as e:
            print(f"pcidevices-agent: cannot list claims: {e}", file=err)
            return EXIT_USAGE
        claimed = {
            str((c.get("spec") or {}).get("address", ""))
            for c in items
            if (c.get("spec") or {}).get("nodeName") == node
        }
    bad = sorted(a for a in claimed if not names.is_pci_address(a))
    if bad:
        print(f"pcidevices-agent: not PCI addresses: {', '.join(bad)}", file=err)
        return EXIT_USAGE
    try:
        bindings = dynids.scan(root)
        p = dynids.plan(bindings, claimed)
        out.write(f"node {node}: {len(bindings)} devices bound to vfio-pci by id, {len(claimed)} claimed\n")
        for vendor, device, why in p.skipped:
            out.write(f"  kept {vendor} {device}: {why}\n")
        if args.dry_run:
            for vendor, device in p.remove:
                out.write(f"  would remove_id {vendor} {device}\n")
            return 0
        for vendor, device, outcome in dynids.remove_ids(root, p.remove):
            out.write(f"  remove_id {vendor} {device}: {outcome}\n")
    except SysfsError as e:
        print(f"pcidevices-agent: {e}", file=err)
        return 1
    if not p.remove:
        out.write("  nothing to remove\n")
    return 0


def _run(err: TextIO) -> int:
    import os
    import signal

    import apiclient.client
    from nodeagent import wiring
    from nodeagent.settings import AgentSettings

    try:
        settings = AgentSettings.from_env(os.environ)
        root = SysfsRoot(settings.root, proc=settings.proc)
        root.check()
    except (ValueError, RootUnavailable) as e:
        print(f"pcidevices-agent: {e}", file=err)
        return EXIT_USAGE
    agent = wiring.build(settings, apiclient.client.Client.connect(settings.kubeconfig), root=root)
    signal.signal(signal.SIGTERM, lambda *_: agent.stop())
    agent.start()
    try:
        agent.wait()
    except KeyboardInterrupt:
        agent.stop()
    return 0


def _discover(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    root = SysfsRoot(args.root, proc=args.proc)
    try:
        root.check()
    except RootUnavailable as e:
        print(f"pcidevices-agent: --root: {e}", file=err)
        return EXIT_USAGE
    if args.node_ip is not None:
        try:
            ipaddress.ip_address(args.node_ip)
        except ValueError:
            print(f"pcidevices-agent: --node-ip: {args.node_ip!r} is not an IP address", file=err)
            return EXIT_USAGE
    node = args.node_name or socket.gethostname()
    db = NamesDatabases.load(args.pci_ids, args.usb_ids)
    try:
        inventory = discovery.discover(root, db, node, args.node_ip)
    except DiscoveryError as e:
        print(f"pcidevices-agent: {e}", file=err)
        return EXIT_USAGE
    from nodeagent.output import render  # here: its PyYAML (~6 MiB) is no part of a running agent

    out.write(render(inventory.to_json(), args.output))
    return 0


def main(argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.ERROR, stream=err)
    if args.command == "discover":
        return _discover(args, out, err)
    if args.command == "run":
        logging.getLogger().setLevel(logging.DEBUG if args.verbose else logging.INFO)
        return _run(err)
    if args.command == "takeover":
        return _takeover(args, out, err)
    return EXIT_USAGE  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":
    sys.exit(main())
