"""What every rule receives: the request, who asks, the cluster view, the permission oracle and the settings."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from policy import decision, messages
from policy.access import Access, is_cluster_admin
from policy.decision import Decision
from policy.review import AdmissionRequest
from policy.rules.identity import Identity
from policy.settings import PolicySettings
from policy.snapshot import ClusterView


@dataclass(frozen=True, slots=True)
class Context:
    request: AdmissionRequest
    identity: Identity
    view: ClusterView
    access: Access
    settings: PolicySettings

    @property
    def user(self) -> str:
        return messages.shown(self.request.user.username)

    def is_cluster_admin(self) -> bool:
        return is_cluster_admin(self.access, self.request.user)

    def node_gone(self, node: str) -> bool:
        """A node the view does not know is gone (the webhook is ready only after its Node cache synced)."""
        return bool(node) and not self.view.node_exists(node)

    def new(self) -> Mapping[str, Any] | Decision:
        """The request's object, or a 400 Decision when the API server sent none."""
        return self._required(self.request.object, "object")

    def old(self) -> Mapping[str, Any] | Decision:
        return self._required(self.request.old_object, "oldObject")

    def _required(self, obj: Mapping[str, Any] | None, field: str) -> Mapping[str, Any] | Decision:
        if obj is not None:
            return obj
        r = self.request
        return decision.malformed(
            messages.MISSING_OBJECT.format(
                operation=r.operation, resource=r.resource.resource, name=messages.shown(r.name), field=field
            )
        )
