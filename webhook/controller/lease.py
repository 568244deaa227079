"""Leader election through a coordination.k8s.io/v1 Lease, client-go style: the holder renews `renewTime`; another
replica takes the Lease over once `renewTime + leaseDurationSeconds` has passed. Writes carry the resourceVersion
read, so two replicas racing for an expired Lease cannot both win (one gets Conflict).

`decide` is pure; `Elector` does the reads and writes through a narrow API.
"""

from __future__ import annotations

import datetime
import enum
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import apiclient

log = logging.getLogger(__name__)


class Step(enum.Enum):
    CREATE = "create"  # no Lease yet
    RENEW = "renew"  # we hold it
    TAKE_OVER = "take-over"  # its holder stopped renewing
    FOLLOW = "follow"  # someone else holds it


def decide(lease: Mapping[str, Any] | None, me: str, now: datetime.datetime) -> Step:
    if lease is None:
        return Step.CREATE
    spec = lease.get("spec") or {}
    holder = spec.get("holderIdentity") or ""
    if holder == me:
        return Step.RENEW
    renewed = _time(spec.get("renewTime")) or _time(spec.get("acquireTime"))
    duration = datetime.timedelta(seconds=int(spec.get("leaseDurationSeconds") or 0))
    if not holder or renewed is None or renewed + duration < now:
        return Step.TAKE_OVER
    return Step.FOLLOW


class LeaseApi(apiclient.Gets, apiclient.Creates, apiclient.Replaces, Protocol):
    """The calls the elector makes (apiclient.client.Client; an in-memory fake in unit tests)."""


@dataclass
class Elector:
    api: LeaseApi
    namespace: str
    name: str
    identity: str
    duration_s: int
    clock: Callable[[], datetime.datetime]

    def try_acquire_or_renew(self) -> bool:
        """One round: True when this replica holds the Lease afterwards."""
        now = self.clock()
        try:
            lease: dict[str, Any] | None = self.api.get(apiclient.LEASES, self.name, namespace=self.namespace)
        except apiclient.NotFound:
            lease = None
        step = decide(lease, self.identity, now)
        if step is Step.FOLLOW:
            return False
        stamp = now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        spec: dict[str, Any] = dict((lease or {}).get("spec") or {})
        transitions = int(spec.get("leaseTransitions") or 0)
        if step is not Step.RENEW:
            spec.update(
                holderIdentity=self.identity,
                acquireTime=stamp,
                leaseTransitions=transitions + (1 if lease is not None else 0),
            )
        spec.update(renewTime=stamp, leaseDurationSeconds=self.duration_s)
        try:
            if lease is None:
                body = {
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace},
                    "spec": spec,
                }
                self.api.create(apiclient.LEASES, body, namespace=self.namespace)
            else:
                self.api.replace(apiclient.LEASES, self.name, {**lease, "spec": spec}, namespace=self.namespace)
        except apiclient.Conflict:
            return False
        if step is not Step.RENEW:
            log.info("became the leader", extra={"lease": self.name, "identity": self.identity})
        return True

    def release(self) -> None:
        """Give the Lease up on a clean stop (holder emptied), so another replica need not wait for it to expire."""
        try:
            lease = self.api.get(apiclient.LEASES, self.name, namespace=self.namespace)
            spec = dict(lease.get("spec") or {})
            if spec.get("holderIdentity") != self.identity:
                return
            spec["holderIdentity"] = ""
            self.api.replace(apiclient.LEASES, self.name, {**lease, "spec": spec}, namespace=self.namespace)
            log.info("released the lease", extra={"lease": self.name})
        except apiclient.KubeError:
            log.warning("could not release the lease", exc_info=True)


def _time(value: object) -> datetime.datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
