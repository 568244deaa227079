"""`pcidevices-takeover`: take over an upstream harvester/pcidevices installation (the I/O around takeover.plan).

    pcidevices-takeover [--dry-run] [--kubeconfig FILE] [--as USER]
                        [--release-name NAME] [--release-namespace NS]
                        [--addon-repo URL --addon-version V [--addon-values FILE]]

Observe (lists and gets; an API that is not installed counts as empty), plan (pure), print the plan, then apply it
unless --dry-run or refused. Each patch carries a resourceVersion test, so a change racing the takeover fails it
and a second run re-plans from the new state; a run on a taken-over cluster changes nothing.

It runs once, as a command line tool or the chart's hook Job, not as part of the webhook: as the migration identity
(the chart's ServiceAccount pcidevices-takeover, or `--as` it), the one identity the webhook lets write another
user's owner annotation. Exit status: 0 done (or nothing to do), 1 refused or a change failed,
2 usage or the API unreachable.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, TextIO

import apiclient
from policy.settings import MIGRATION
from takeover.plan import (
    OUR_CRDS,
    UPSTREAM_NAMESPACE,
    UPSTREAM_SECRETS,
    UPSTREAM_WEBHOOKS,
    AddonTarget,
    Change,
    Observed,
    Plan,
    TakeoverSettings,
    Target,
    plan,
)

log = logging.getLogger(__name__)

EXIT_REFUSED = 1
EXIT_USAGE = 2
ADDONS = apiclient.Resource("harvesterhci.io", "v1beta1", "addons", "Addon", namespaced=True)
ADDON = "pcidevices-controller"
USERS = apiclient.Resource("management.cattle.io", "v3", "users", "User")  # Rancher's
NODE_DEVICES = apiclient.Resource("devices.harvesterhci.io", "v1beta1", "nodes", "Node")  # upstream's
UPSTREAM_ONLY = ("sriovnetworkdevices", "sriovgpudevices", "vgpudevices", "migconfigurations")


class KubeLike(apiclient.Lists, apiclient.Gets, apiclient.JsonPatches, apiclient.Deletes, Protocol):
    """The calls the takeover makes (apiclient.client.Client; an in-memory fake in unit tests)."""


def resource_of(target: Target) -> apiclient.Resource:
    return apiclient.Resource.of(target.api_version, target.plural, namespaced=bool(target.namespace))


def observe(kube: KubeLike) -> Observed:
    """Everything the plan reads; NotFound (an API or object that does not exist) reads as absent."""

    def listed(res: apiclient.Resource) -> list[dict[str, Any]]:
        try:
            return kube.list(res).items
        except apiclient.NotFound:
            return []

    def got(res: apiclient.Resource, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        try:
            return kube.get(res, name, namespace=namespace)
        except apiclient.NotFound:
            return None

    webhooks = [
        (plural, name)
        for api_version, plural, name in UPSTREAM_WEBHOOKS
        if got(apiclient.Resource.of(api_version, plural), name) is not None
    ]
    secrets = [name for name in UPSTREAM_SECRETS if got(apiclient.SECRETS, name, UPSTREAM_NAMESPACE)]
    crds = [c for c in (got(apiclient.CUSTOMRESOURCEDEFINITIONS, n) for n in OUR_CRDS) if c]
    devices = apiclient.PCIDEVICES
    return Observed(
        pci_claims=listed(apiclient.PCIDEVICECLAIMS),
        usb_claims=listed(apiclient.USBDEVICECLAIMS),
        pci_devices=listed(devices),
        users=listed(USERS),
        nodes=listed(apiclient.NODES),
        vmis=listed(apiclient.VIRTUALMACHINEINSTANCES),
        vms=listed(apiclient.VIRTUALMACHINES),
        node_devices=listed(NODE_DEVICES),
        webhook_configurations=webhooks,
        secrets=secrets,
        crds=crds,
        kubevirts=listed(apiclient.KUBEVIRTS),
        addon=got(ADDONS, ADDON, UPSTREAM_NAMESPACE),
        upstream_only={
            plural: listed(apiclient.Resource(devices.group, devices.version, plural, "")) for plural in UPSTREAM_ONLY
        },
    )


def apply(kube: KubeLike, changes: Sequence[Change]) -> list[tuple[Change, str]]:
    """Make the changes in order; return the ones that failed with why (the rest are done)."""
    failed: list[tuple[Change, str]] = []
    for change in changes:
        res, name, namespace = resource_of(change.target), change.target.name, change.target.namespace or None
        try:
            if change.op == "delete":
                kube.delete(res, name, namespace=namespace)
            else:
                kube.json_patch(res, name, list(change.patch), namespace=namespace)
        except apiclient.NotFound:
            if change.op != "delete":
                failed.append((change, "it vanished meanwhile"))
        except Exception as e:  # noqa: BLE001 - reported per change; a rerun re-plans
            log.warning("takeover change failed", extra={"target": str(change.target), "error": str(e)})
            failed.append((change, str(e)))
    return failed


def report(p: Plan, out: TextIO, *, dry_run: bool) -> None:
    out.write("found:\n")
    for line in p.found:
        out.write(f"  {line}\n")
    if p.refused:
        out.write("refused (nothing was changed):\n")
        for line in p.refusals:
            out.write(f"  {line}\n")
        return
    verb = "would change" if dry_run else "changing"
    out.write(f"{verb}: {len(p.changes)}\n" if p.changes else "nothing to change\n")
    for c in p.changes:
        out.write(f"  {c.op} {c.target}: {c.why}\n")


def run(kube: KubeLike, settings: TakeoverSettings, out: TextIO, *, dry_run: bool) -> int:
    p = plan(observe(kube), settings)
    report(p, out, dry_run=dry_run)
    if p.refused:
        return EXIT_REFUSED
    if dry_run or not p.changes:
        return 0
    failed = apply(kube, p.changes)
    for change, why in failed:
        out.write(f"failed {change.op} {change.target}: {why}\n")
    out.write(f"done: {len(p.changes) - len(failed)} changed, {len(failed)} failed\n")
    return EXIT_REFUSED if failed else 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pcidevices-takeover", description=__doc__.split("\n", 1)[0])
    parser.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    parser.add_argument("--kubeconfig", type=Path, default=None, help="kubeconfig (default: in-cluster)")
    parser.add_argument(
        "--as", dest="as_user", default=None, help=f"impersonate this user (e.g. {MIGRATION} when run by hand)"
    )
    parser.add_argument("--release-name", default="pcidevices-controller", help="the Helm release that adopts the CRDs")
    parser.add_argument("--release-namespace", default=UPSTREAM_NAMESPACE)
    parser.add_argument("--addon-repo", default=None, help="point the Harvester Addon at this chart repository")
    parser.add_argument("--addon-version", default=None, help="chart version for the Addon (with --addon-repo)")
    parser.add_argument("--addon-values", type=Path, default=None, help="values file for the Addon's valuesContent")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def main(
    argv: Sequence[str] | None = None,
    out: TextIO | None = None,
    *,
    connect: Callable[[Path | None, str | None], KubeLike] | None = None,
) -> int:
    """The command; tests pass `connect` (an in-memory API)."""
    out = out or sys.stdout
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, stream=sys.stderr)
    addon: AddonTarget | None = None
    if args.addon_repo or args.addon_version:
        if not (args.addon_repo and args.addon_version):
            print("pcidevices-takeover: --addon-repo and --addon-version go together", file=sys.stderr)
            return EXIT_USAGE
        values = args.addon_values.read_text() if args.addon_values else ""
        addon = AddonTarget(repo=args.addon_repo, version=args.addon_version, values=values)
    settings = TakeoverSettings(release_name=args.release_name, release_namespace=args.release_namespace, addon=addon)

    def _connect(kubeconfig: Path | None, as_user: str | None) -> KubeLike:
        import apiclient.client

        return apiclient.client.Client.connect(kubeconfig, headers={"Impersonate-User": as_user} if as_user else None)

    try:
        client = (connect or _connect)(args.kubeconfig, args.as_user)
        return run(client, settings, out, dry_run=args.dry_run)
    except apiclient.KubeError as e:
        print(f"pcidevices-takeover: the API server answered {e}", file=sys.stderr)
        return EXIT_USAGE
