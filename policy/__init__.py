"""Pure decisions of pcidevices: object views, naming rules and admission rules. No I/O, no clients.

The public surface is `__all__`; inside the package, import modules (`from policy import snapshot`).

The surface loads on first use (PEP 562): the node agent needs only names, records and the DRA views, and importing
the admission rules with them cost it ~6 MiB of resident memory for code it never runs.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from policy.access import Access, Grant, StaticAccess
    from policy.decision import Decision
    from policy.dispatch import KINDS, MUTATING_RULES, VALIDATING_RULES, mutate, validate
    from policy.objects import FINALIZER_AGENT, MalformedObject
    from policy.review import AdmissionRequest, MalformedReview, Operation, UserInfo
    from policy.settings import PolicySettings
    from policy.snapshot import ClusterIndex, ClusterView

_HOMES = {
    "Access": "access",
    "Grant": "access",
    "StaticAccess": "access",
    "Decision": "decision",
    "KINDS": "dispatch",
    "MUTATING_RULES": "dispatch",
    "VALIDATING_RULES": "dispatch",
    "mutate": "dispatch",
    "validate": "dispatch",
    "FINALIZER_AGENT": "objects",
    "MalformedObject": "objects",
    "AdmissionRequest": "review",
    "MalformedReview": "review",
    "Operation": "review",
    "UserInfo": "review",
    "PolicySettings": "settings",
    "ClusterIndex": "snapshot",
    "ClusterView": "snapshot",
}

__all__ = [
    "FINALIZER_AGENT",
    "KINDS",
    "MUTATING_RULES",
    "VALIDATING_RULES",
    "Access",
    "AdmissionRequest",
    "ClusterIndex",
    "ClusterView",
    "Decision",
    "Grant",
    "MalformedObject",
    "MalformedReview",
    "Operation",
    "PolicySettings",
    "StaticAccess",
    "UserInfo",
    "mutate",
    "validate",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'policy' has no attribute {name!r}")
    return getattr(importlib.import_module(f"policy.{home}"), name)


def __dir__() -> list[str]:
    """The surface and the submodules loaded so far, as for an eagerly importing package."""
    loaded = [n for n, v in globals().items() if isinstance(v, ModuleType) and v.__name__ == f"policy.{n}"]
    return sorted({*__all__, *loaded})
