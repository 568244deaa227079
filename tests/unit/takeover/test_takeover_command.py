"""`pcidevices-takeover` over an in-memory API: what it reads, what it writes, and what it prints."""

from __future__ import annotations

import copy
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jsonpatch  # type: ignore[import-untyped]

import apiclient
from takeover import command
from takeover.plan import UPSTREAM_NODE_FINALIZER, UPSTREAM_PCI_FINALIZER

Missing = apiclient.NotFound


class FakeKube:
    """Objects by path; lists by collection path; a path in `conflicts` fails its writes."""

    def __init__(self, objects: dict[str, dict[str, Any]], conflicts: Sequence[str] = ()) -> None:
        self.objects = copy.deepcopy(objects)
        self.writes: list[tuple[str, str]] = []
        self.conflicts = set(conflicts)

    def get(self, res: apiclient.Resource, name: str, *, namespace: str | None = None) -> dict[str, Any]:
        path = res.path(name, namespace)
        if path not in self.objects:
            raise Missing(path)
        return copy.deepcopy(self.objects[path])

    def list(
        self, res: apiclient.Resource, *, label_selector: str | None = None, namespace: str | None = None
    ) -> apiclient.ObjectList:
        path = res.path(None, namespace)
        found = [copy.deepcopy(o) for p, o in sorted(self.objects.items()) if p.rsplit("/", 1)[0] == path]
        if not found and not any(p.startswith(path) for p in self.objects):
            raise Missing(path)  # an API that is not installed
        return apiclient.ObjectList(found, "1")

    def json_patch(
        self, res: apiclient.Resource, name: str, ops: Sequence[Any], *, namespace: str | None = None
    ) -> dict[str, Any]:
        path = res.path(name, namespace)
        self.writes.append(("patch", path))
        if path in self.conflicts:
            raise RuntimeError("409: the object has been modified")
        self.objects[path] = jsonpatch.apply_patch(self.objects[path], list(ops))
        return self.objects[path]

    def delete(self, res: apiclient.Resource, name: str, *, namespace: str | None = None) -> None:
        path = res.path(name, namespace)
        self.writes.append(("delete", path))
        if path not in self.objects:
            raise Missing(path)
        del self.objects[path]


CLAIM = "/apis/devices.harvesterhci.io/v1beta1/pcideviceclaims/n1-000001000"
NODE = "/api/v1/nodes/n1"
VALIDATOR = "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/pcidevices-validator"


def _cluster(**extra: dict[str, Any]) -> dict[str, dict[str, Any]]:
    objects: dict[str, dict[str, Any]] = {
        CLAIM: {
            "metadata": {"name": "n1-000001000", "resourceVersion": "1", "finalizers": [UPSTREAM_PCI_FINALIZER]},
            "spec": {"address": "0000:01:00.0", "nodeName": "n1", "userName": "admin"},
        },
        NODE: {"metadata": {"name": "n1", "resourceVersion": "2", "finalizers": [UPSTREAM_NODE_FINALIZER]}},
        VALIDATOR: {"metadata": {"name": "pcidevices-validator", "resourceVersion": "3"}},
    }
    objects.update(extra)
    return objects


def _run(kube: FakeKube, *args: str) -> tuple[int, str]:
    out = io.StringIO()
    rc = command.main(list(args), out, connect=lambda _kubeconfig, _as: kube)
    return rc, out.getvalue()


def test_dry_run_prints_found_and_planned_changes_and_writes_nothing() -> None:
    kube = FakeKube(_cluster())
    rc, out = _run(kube, "--dry-run")
    assert rc == 0 and kube.writes == []
    assert "found:\n  1 pcideviceclaims" in out
    assert "would change: 3" in out
    assert "patch pcideviceclaims/n1-000001000: adopt: owner legacy:admin" in out
    assert "delete validatingwebhookconfigurations/pcidevices-validator" in out


def test_a_run_applies_the_plan_and_a_second_run_writes_nothing() -> None:
    kube = FakeKube(_cluster())
    rc, out = _run(kube)
    assert rc == 0 and "done: 3 changed, 0 failed" in out
    assert VALIDATOR not in kube.objects
    assert kube.objects[NODE]["metadata"]["finalizers"] == []
    kube.writes.clear()
    rc, out = _run(kube)
    assert rc == 0 and kube.writes == [] and "nothing to change" in out


def test_a_refusal_is_explained_and_nothing_is_written() -> None:
    vgpu = {"metadata": {"name": "n1-000004000"}, "spec": {"enabled": True}}
    kube = FakeKube(_cluster(**{"/apis/devices.harvesterhci.io/v1beta1/vgpudevices/n1-000004000": vgpu}))
    rc, out = _run(kube)
    assert rc == 1 and kube.writes == []
    assert "refused (nothing was changed):\n  vgpudevices/n1-000004000: a vGPU is enabled" in out


def test_a_failed_change_is_reported_the_others_are_made_and_the_exit_status_says_so() -> None:
    kube = FakeKube(_cluster(), conflicts=[CLAIM])
    rc, out = _run(kube)
    assert rc == 1
    assert "failed patch pcideviceclaims/n1-000001000: 409" in out
    assert "done: 2 changed, 1 failed" in out
    assert VALIDATOR not in kube.objects


def test_addon_repo_without_a_version_is_a_usage_error(tmp_path: Path) -> None:
    rc, _ = _run(FakeKube(_cluster()), "--addon-repo", "https://charts.example.test")
    assert rc == 2
