"""Policy settings: which identities are trusted for what, and which permission checks are enforced."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields

AGENT = "system:serviceaccount:harvester-system:pcidevices-agent"
CONTROLLER = "system:serviceaccount:harvester-system:pcidevices-controller"
MIGRATION = "system:serviceaccount:harvester-system:pcidevices-takeover"
GC = "system:serviceaccount:kube-system:generic-garbage-collector"
# kube-controller-manager without --use-service-account-credentials runs its garbage collector as itself
CONTROLLER_MANAGER = "system:kube-controller-manager"
# KubeVirt's virt-controller: it creates the VMIs of VMs, pools and replica sets and their virt-launcher pods
VIRT_CONTROLLERS = frozenset(
    {"system:serviceaccount:kubevirt:kubevirt-controller", "system:serviceaccount:harvester-system:kubevirt-controller"}
)
# kube-controller-manager's resource claim controller: it makes a pod's ResourceClaims from ResourceClaimTemplates
# (as its own service account with --use-service-account-credentials, else as kube-controller-manager)
RESOURCE_CLAIM_CONTROLLERS = frozenset(
    {"system:serviceaccount:kube-system:resource-claim-controller", CONTROLLER_MANAGER}
)
# Controllers that restore, clone or re-create VMs: they attach devices without the `use` verb
USE_EXEMPT = frozenset({"system:serviceaccount:harvester-system:harvester"})
PER_DEVICE = "perDevice"
POOLED = "pooled"
RESOURCE_NAME_POLICIES = (PER_DEVICE, POOLED)

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True, slots=True)
class PolicySettings:
    agent_usernames: frozenset[str] = field(default_factory=lambda: frozenset({AGENT}))
    controller_usernames: frozenset[str] = field(default_factory=lambda: frozenset({CONTROLLER}))
    migration_usernames: frozenset[str] = field(default_factory=lambda: frozenset({MIGRATION}))
    gc_usernames: frozenset[str] = field(default_factory=lambda: frozenset({GC, CONTROLLER_MANAGER}))
    virt_controller_usernames: frozenset[str] = VIRT_CONTROLLERS
    resource_claim_controller_usernames: frozenset[str] = RESOURCE_CLAIM_CONTROLLERS
    use_exempt_usernames: frozenset[str] = USE_EXEMPT
    enforce_claim: bool = True
    enforce_release: bool = True
    enforce_use: bool = True
    # perDevice: every claimed device has its own resource name; pooled: upstream's shared names, one owner per pool
    # on a node, VMs pinned to their devices' node
    resource_names: str = PER_DEVICE

    @classmethod
    def from_mapping(cls, m: Mapping[str, str]) -> PolicySettings:
        """Read settings from env-like strings: upper-case field names (AGENT_USERNAMES=a,b; ENFORCE_CLAIM=false).

        Keys that are not settings are ignored, so os.environ can be passed as is; a bad boolean raises ValueError.
        """
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = m.get(f.name.upper())
            if raw is None:
                continue
            if f.name.endswith("_usernames"):
                values[f.name] = frozenset(part.strip() for part in raw.split(",") if part.strip())
            elif f.name == "resource_names":
                if raw.strip() not in RESOURCE_NAME_POLICIES:
                    raise ValueError(f"RESOURCE_NAMES must be one of {', '.join(RESOURCE_NAME_POLICIES)}; got {raw!r}")
                values[f.name] = raw.strip()
            else:
                lowered = raw.strip().lower()
                if lowered not in _TRUE | _FALSE:
                    raise ValueError(f"{f.name.upper()} must be true or false; got {raw!r}")
                values[f.name] = lowered in _TRUE
        return cls(**values)  # type: ignore[arg-type]

    @property
    def pooled(self) -> bool:
        return self.resource_names == POOLED
