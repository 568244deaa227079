"""KubeVirt objects that make virt-controller write a VM for someone: restores, clones, and the snapshots between.

A `VirtualMachineRestore` turns a snapshot's copy of a VM (a `VirtualMachineSnapshotContent`), with the restore's JSON
patches applied, into a VM; a `VirtualMachineClone` makes a snapshot and a restore (owned by the clone) to copy a VM.
virt-controller writes the resulting VM, so its own identity says nothing about who asked: these slim views let the
rules trace such a VM back to the restore, the restore to its clone, and judge the devices by the requester recorded
on the object a user created (policy.records).

Patches are strings of JSON patch operations that KubeVirt applies to the copied VM. Rather than rebuild the VM, the
rules read every string a patch adds (`strings`): one that names our device counts as naming it, whatever its path.
`copy` and `move` operations could carry a device name from elsewhere in the VM, so they are remembered (`moves`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from policy import records
from policy.objects import MalformedObject, OwnerReference, as_mapping

RESTORE = "VirtualMachineRestore"
CLONE = "VirtualMachineClone"
SNAPSHOT = "VirtualMachineSnapshot"
KINDS = (RESTORE, CLONE, SNAPSHOT)
MAX_STRINGS = 256  # strings kept per object's patches; more is denied as unjudgeable (messages.COPY_PATCH_TOO_BIG)


@dataclass(frozen=True, slots=True)
class Patches:
    """What a list of JSON patch strings could put into a VM: every string value it adds, and whether it copies."""

    strings: tuple[str, ...]
    moves: bool
    instancetypes: tuple[str, ...]  # names a patch sets at an instancetype path
    too_big: bool = False

    @classmethod
    def parse(cls, raw: object, where: str) -> Patches:
        if raw is None:
            return cls((), False, ())
        if not isinstance(raw, list) or not all(isinstance(p, str) for p in raw):
            raise MalformedObject(f"{where} must be a list of strings")
        strings: list[str] = []
        moves = False
        instancetypes: list[str] = []
        for text in raw:
            try:
                op = json.loads(text)
            except ValueError:
                raise MalformedObject(f"{where}[] must be JSON patch operations") from None
            for o in op if isinstance(op, list) else [op]:
                if not isinstance(o, Mapping):
                    raise MalformedObject(f"{where}[] must be JSON patch operations")
                kind, path = o.get("op"), o.get("path")
                if kind in ("copy", "move"):
                    moves = True
                if "value" in o:
                    _collect(o["value"], strings)
                    if isinstance(path, str) and "/instancetype" in path:
                        _collect(o["value"], instancetypes)
        too_big = len(strings) > MAX_STRINGS
        return cls(tuple(sorted(set(strings)))[:MAX_STRINGS], moves, tuple(sorted(set(instancetypes))), too_big)


def _collect(value: Any, out: list[str], depth: int = 0) -> None:
    if depth > 32 or len(out) > MAX_STRINGS:
        out.append("")  # deeper or longer than any VM field: counted, so `too_big` denies it
        return
    if isinstance(value, str):
        out.append(value)
    elif isinstance(value, Mapping):
        for k, v in value.items():
            out.append(str(k))
            _collect(v, out, depth + 1)
    elif isinstance(value, list):
        for v in value:
            _collect(v, out, depth + 1)


@dataclass(frozen=True, slots=True)
class Restore:
    namespace: str
    name: str
    uid: str
    target: str  # the VM it writes (spec.target.name)
    snapshot: str  # spec.virtualMachineSnapshotName
    patches: Patches
    requester: records.Requester | None
    controller: OwnerReference | None  # a clone that made it

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def mark(self) -> str:
        """The value KubeVirt writes into the VM's lastRestoreUID annotation."""
        return f"{self.name}-{self.uid}"


@dataclass(frozen=True, slots=True)
class Clone:
    namespace: str
    name: str
    uid: str
    source_kind: str  # VirtualMachine or VirtualMachineSnapshot
    source: str
    patches: Patches
    requester: records.Requester | None

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class Snapshot:
    namespace: str
    name: str
    uid: str
    content: str  # status.virtualMachineSnapshotContentName
    source: str  # the VM it copies

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def parse(kind: str, obj: object) -> Restore | Clone | Snapshot:
    """The slim view of a restore, clone or snapshot; MalformedObject when a field the rules read is misshapen."""
    if not isinstance(obj, Mapping):
        raise MalformedObject("object must be an object")
    meta = as_mapping(obj.get("metadata"), "metadata")
    name, namespace = meta.get("name"), meta.get("namespace", "")
    namespace = "" if namespace is None else namespace
    if not isinstance(name, str) or not name or not isinstance(namespace, str):
        raise MalformedObject("metadata.name must be a non-empty string")
    if "/" in name:  # keyed by the webhook's watch as "<namespace>/<name>"
        namespace, _, name = name.partition("/")
    uid = _str(meta.get("uid"), "metadata.uid")
    annotations = as_mapping(meta.get("annotations"), "metadata.annotations")
    requester = records.Requester.decode(annotations.get(records.ANNOTATION))
    spec, status = as_mapping(obj.get("spec"), "spec"), as_mapping(obj.get("status"), "status")
    if kind == RESTORE:
        target = as_mapping(spec.get("target"), "spec.target")
        controller = None
        refs = meta.get("ownerReferences") or []
        if not isinstance(refs, list):
            raise MalformedObject("metadata.ownerReferences must be a list")
        for ref in refs:
            if isinstance(ref, Mapping) and ref.get("controller") is True:
                controller = OwnerReference.from_dict(ref)
        return Restore(
            namespace,
            name,
            uid,
            _str(target.get("name"), "spec.target.name"),
            _str(spec.get("virtualMachineSnapshotName"), "spec.virtualMachineSnapshotName"),
            Patches.parse(spec.get("patches"), "spec.patches"),
            requester,
            controller,
        )
    if kind == CLONE:
        source = as_mapping(spec.get("source"), "spec.source")
        return Clone(
            namespace,
            name,
            uid,
            _str(source.get("kind"), "spec.source.kind"),
            _str(source.get("name"), "spec.source.name"),
            Patches.parse(spec.get("patches"), "spec.patches"),
            requester,
        )
    if kind == SNAPSHOT:
        source = as_mapping(spec.get("source"), "spec.source")
        return Snapshot(
            namespace,
            name,
            uid,
            _str(status.get("virtualMachineSnapshotContentName"), "status.virtualMachineSnapshotContentName"),
            _str(source.get("name"), "spec.source.name"),
        )
    raise ValueError(f"unsupported kind {kind!r}")


def _str(value: object, where: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise MalformedObject(f"{where} must be a string")
    return value
