"""What every rule receives: the request, the cluster view, the permission oracle and the settings."""

from __future__ import annotations

from dataclasses import dataclass

from policy.access import Access
from policy.review import AdmissionRequest
from policy.settings import PolicySettings
from policy.snapshot import ClusterView


@dataclass(frozen=True, slots=True)
class Context:
    request: AdmissionRequest
    view: ClusterView
    access: Access
    settings: PolicySettings
