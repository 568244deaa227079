"""AdmissionReview wire shapes and the typed request the rules read.

The API server sends `admission.k8s.io/v1` or `v1beta1`; both carry the same request fields. `from_review` is the
single decoder: every structural problem becomes `MalformedReview` (answered with 400), never another exception,
so nothing the API server (or an attacker talking to the webhook directly) sends can crash a worker.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypedDict, get_args

API_VERSIONS = ("admission.k8s.io/v1", "admission.k8s.io/v1beta1")
NODE_NAME_EXTRA = "authentication.kubernetes.io/node-name"

Operation = Literal["CREATE", "UPDATE", "DELETE", "CONNECT"]
OPERATIONS: tuple[str, ...] = get_args(Operation)


class MalformedReview(ValueError):
    """The AdmissionReview is not shaped as the API server sends it (answered with HTTP-level code 400)."""


# Wire shapes (as the API server sends them; all keys optional because the input is untrusted).


class UserInfoDict(TypedDict, total=False):
    username: str
    uid: str
    groups: list[str]
    extra: dict[str, list[str]]


class GroupVersionKindDict(TypedDict, total=False):
    group: str
    version: str
    kind: str


class GroupVersionResourceDict(TypedDict, total=False):
    group: str
    version: str
    resource: str


class AdmissionRequestDict(TypedDict, total=False):
    uid: str
    kind: GroupVersionKindDict
    resource: GroupVersionResourceDict
    subResource: str
    requestKind: GroupVersionKindDict
    requestResource: GroupVersionResourceDict
    requestSubResource: str
    name: str
    namespace: str
    operation: str
    userInfo: UserInfoDict
    object: dict[str, Any] | None
    oldObject: dict[str, Any] | None
    dryRun: bool
    options: dict[str, Any] | None


class StatusDict(TypedDict, total=False):
    code: int
    reason: str
    message: str


class AdmissionResponseDict(TypedDict, total=False):
    uid: str
    allowed: bool
    status: StatusDict
    warnings: list[str]
    patch: str
    patchType: Literal["JSONPatch"]
    auditAnnotations: dict[str, str]


class AdmissionReview(TypedDict, total=False):
    apiVersion: str
    kind: str
    request: AdmissionRequestDict
    response: AdmissionResponseDict


@dataclass(frozen=True, slots=True)
class UserInfo:
    """The requester as the API server authenticated it (SubjectAccessReview needs all four fields)."""

    username: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def node_name(self) -> str | None:
        """The node a bound service-account token belongs to, when the token says exactly one."""
        values = self.extra.get(NODE_NAME_EXTRA, ())
        return values[0] if len(values) == 1 and values[0] else None

    def key(self) -> tuple[str, str, tuple[str, ...], tuple[tuple[str, tuple[str, ...]], ...]]:
        """A hashable identity, e.g. for a SubjectAccessReview cache."""
        return (self.username, self.uid, self.groups, tuple(sorted(self.extra.items())))

    def __hash__(self) -> int:
        return hash(self.key())


@dataclass(frozen=True, slots=True)
class Resource:
    group: str
    version: str
    resource: str


@dataclass(frozen=True, slots=True)
class GroupVersionKind:
    group: str
    version: str
    kind: str


@dataclass(frozen=True, slots=True)
class AdmissionRequest:
    uid: str
    api_version: str
    kind: GroupVersionKind
    resource: Resource
    sub_resource: str
    name: str
    namespace: str
    operation: Operation
    user: UserInfo
    object: Mapping[str, Any] | None
    old_object: Mapping[str, Any] | None
    dry_run: bool

    @classmethod
    def from_review(cls, review: Any) -> AdmissionRequest:
        """Decode an AdmissionReview (v1 or v1beta1); raise MalformedReview on any structural problem."""
        if not isinstance(review, Mapping):
            raise MalformedReview("the body is not an AdmissionReview object")
        api_version = review.get("apiVersion")
        if api_version not in API_VERSIONS:
            raise MalformedReview(f"apiVersion must be one of {', '.join(API_VERSIONS)}; got {api_version!r:.80}")
        if review.get("kind") != "AdmissionReview":
            raise MalformedReview(f"kind must be AdmissionReview; got {review.get('kind')!r:.80}")
        req = review.get("request")
        if not isinstance(req, Mapping):
            raise MalformedReview("request is missing or not an object")
        uid = _str(req, "uid", "request.uid", required=True)
        if not uid:
            raise MalformedReview("request.uid is empty")
        operation = req.get("operation")
        if operation not in OPERATIONS:
            raise MalformedReview(f"request.operation must be one of {', '.join(OPERATIONS)}; got {operation!r:.80}")
        kind = _required_mapping(req, "kind", "request.kind")
        resource = _required_mapping(req, "resource", "request.resource")
        obj = _mapping(req, "object", "request.object")
        old = _mapping(req, "oldObject", "request.oldObject")
        dry_run = req.get("dryRun", False)
        if dry_run is None:
            dry_run = False
        if not isinstance(dry_run, bool):
            raise MalformedReview("request.dryRun must be a boolean")
        return cls(
            uid=uid,
            api_version=api_version,
            kind=GroupVersionKind(
                group=_str(kind, "group", "request.kind.group"),
                version=_str(kind, "version", "request.kind.version", required=True),
                kind=_str(kind, "kind", "request.kind.kind", required=True),
            ),
            resource=Resource(
                group=_str(resource, "group", "request.resource.group"),
                version=_str(resource, "version", "request.resource.version", required=True),
                resource=_str(resource, "resource", "request.resource.resource", required=True),
            ),
            sub_resource=_str(req, "subResource", "request.subResource"),
            name=_str(req, "name", "request.name"),
            namespace=_str(req, "namespace", "request.namespace"),
            operation=operation,
            user=_user(req.get("userInfo")),
            object=obj,
            old_object=old,
            dry_run=dry_run,
        )


def _str(m: Mapping[str, Any], key: str, where: str, *, required: bool = False) -> str:
    value = m.get(key)
    if value is None:
        if required:
            raise MalformedReview(f"{where} is missing")
        return ""
    if not isinstance(value, str):
        raise MalformedReview(f"{where} must be a string")
    return value


def _mapping(m: Mapping[str, Any], key: str, where: str, *, required: bool = False) -> Mapping[str, Any] | None:
    value = m.get(key)
    if value is None:
        if required:
            raise MalformedReview(f"{where} is missing")
        return None
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise MalformedReview(f"{where} must be an object")
    return value


def _required_mapping(m: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    value = _mapping(m, key, where, required=True)
    assert value is not None
    return value


def _str_tuple(value: object, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise MalformedReview(f"{where} must be a list of strings")
    return tuple(value)


def _user(value: object) -> UserInfo:
    if value is None:
        raise MalformedReview("request.userInfo is missing")
    if not isinstance(value, Mapping):
        raise MalformedReview("request.userInfo must be an object")
    extra_raw = value.get("extra")
    if extra_raw is None:
        extra_raw = {}
    if not isinstance(extra_raw, Mapping):
        raise MalformedReview("request.userInfo.extra must be an object")
    extra: dict[str, tuple[str, ...]] = {}
    for k, v in extra_raw.items():
        if not isinstance(k, str):
            raise MalformedReview("request.userInfo.extra keys must be strings")
        extra[k] = _str_tuple(v, "request.userInfo.extra values")
    return UserInfo(
        username=_str(value, "username", "request.userInfo.username"),
        uid=_str(value, "uid", "request.userInfo.uid"),
        groups=_str_tuple(value.get("groups"), "request.userInfo.groups"),
        extra=extra,
    )
