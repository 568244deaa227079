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

from policy import names
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
ADDON_PATH = f"/apis/harvesterhci.io/v1beta1/namespaces/{UPSTREAM_NAMESPACE}/addons/pcidevices-controller"
UPSTREAM_ONLY = ("sriovnetworkdevices", "sriovgpudevices", "vgpudevices", "migconfigurations")
_DEVICES = f"/apis/{names.API_VERSION}"


class KubeLike(Protocol):
    def get(self, path: str) -> dict[str, Any]: ...
    def list_all(self, path: str, limit: int = 500) -> list[dict[str, Any]]: ...
    def json_patch(self, path: str, ops: Sequence[Any]) -> dict[str, Any]: ...
    def delete(self, path: str) -> None: ...


def path_of(target: Target) -> str:
    base = "/api/v1" if target.api_version == "v1" else f"/apis/{target.api_version}"
    ns = f"/namespaces/{target.namespace}" if target.namespace else ""
    return f"{base}{ns}/{target.plural}/{target.name}"


def observe(kube: KubeLike, not_found: type[Exception]) -> Observed:
    """Everything the plan reads; NotFound (an API or object that does not exist) reads as absent."""

    def listed(path: str) -> list[dict[str, Any]]:
        try:
            return kube.list_all(path)
        except not_found:
            return []

    def got(path: str) -> dict[str, Any] | None:
        try:
            return kube.get(path)
        except not_found:
            return None

    webhooks = [
        (plural, name)
        for api_version, plural, name in UPSTREAM_WEBHOOKS
        if got(path_of(Target(api_version, plural, name))) is not None
    ]
    secrets = [name for name in UPSTREAM_SECRETS if got(path_of(Target("v1", "secrets", name, UPSTREAM_NAMESPACE)))]
    crds = [c for c in (got(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{n}") for n in OUR_CRDS) if c]
    return Observed(
        pci_claims=listed(f"{_DEVICES}/pcideviceclaims"),
        usb_claims=listed(f"{_DEVICES}/usbdeviceclaims"),
        pci_devices=listed(f"{_DEVICES}/pcidevices"),
        users=listed("/apis/management.cattle.io/v3/users"),
        nodes=listed("/api/v1/nodes"),
        vmis=listed("/apis/kubevirt.io/v1/virtualmachineinstances"),
        vms=listed("/apis/kubevirt.io/v1/virtualmachines"),
        node_devices=listed(f"{_DEVICES}/nodes"),
        webhook_configurations=webhooks,
        secrets=secrets,
        crds=crds,
        kubevirts=listed("/apis/kubevirt.io/v1/kubevirts"),
        addon=got(ADDON_PATH),
        upstream_only={plural: listed(f"{_DEVICES}/{plural}") for plural in UPSTREAM_ONLY},
    )


def apply(kube: KubeLike, changes: Sequence[Change], not_found: type[Exception]) -> list[tuple[Change, str]]:
    """Make the changes in order; return the ones that failed with why (the rest are done)."""
    failed: list[tuple[Change, str]] = []
    for change in changes:
        path = path_of(change.target)
        try:
            if change.op == "delete":
                kube.delete(path)
            else:
                kube.json_patch(path, list(change.patch))
        except not_found:
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


def run(kube: KubeLike, settings: TakeoverSettings, out: TextIO, *, dry_run: bool, not_found: type[Exception]) -> int:
    p = plan(observe(kube, not_found), settings)
    report(p, out, dry_run=dry_run)
    if p.refused:
        return EXIT_REFUSED
    if dry_run or not p.changes:
        return 0
    failed = apply(kube, p.changes, not_found)
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
    not_found: type[Exception] | None = None,
) -> int:
    """The command; tests pass `connect` (an in-memory API) and the exception it raises for a missing object."""
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
    from webhook import kube

    def _connect(kubeconfig: Path | None, as_user: str | None) -> KubeLike:
        api = kube.connect(kubeconfig)
        if as_user:
            api.set_default_header("Impersonate-User", as_user)  # type: ignore[no-untyped-call]
        return kube.Kube(api)

    try:
        client = (connect or _connect)(args.kubeconfig, args.as_user)
        return run(client, settings, out, dry_run=args.dry_run, not_found=not_found or kube.NotFound)
    except kube.KubeError as e:
        print(f"pcidevices-takeover: the API server answered {e}", file=sys.stderr)
        return EXIT_USAGE
