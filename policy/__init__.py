"""Pure decisions of pcidevices: object views, naming rules and admission rules. No I/O, no clients.

The public surface is `__all__`; inside the package, import modules (`from policy import snapshot`).
"""

from policy.access import Access, Grant, StaticAccess
from policy.decision import Decision
from policy.dispatch import KINDS, MUTATING_RULES, VALIDATING_RULES, mutate, validate
from policy.objects import FINALIZER_AGENT, MalformedObject
from policy.review import AdmissionRequest, MalformedReview, Operation, UserInfo
from policy.settings import PolicySettings
from policy.snapshot import ClusterIndex, ClusterView

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
