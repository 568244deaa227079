"""AdmissionReview in and out: content type, size cap, JSON, v1/v1beta1, and the response shape.

Everything the API server (or anyone reaching the port) can send ends as a `Rejected` with a 4xx code, never as an
exception out of a route; answers always echo the request's apiVersion and uid so the API server accepts them.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from policy import decision as decision_mod
from policy import review

DEFAULT_API_VERSION = "admission.k8s.io/v1"
INTERNAL_ERROR_MESSAGE = "the pcidevices webhook failed internally; the details are in its log under this review's uid"


class Rejected(Exception):
    """The body cannot be judged; `code` is the HTTP-style status (400, 413, 415) put into the answer."""

    def __init__(
        self, code: int, message: str, *, api_version: str = DEFAULT_API_VERSION, uid: str = "", parsed: bool = False
    ) -> None:
        super().__init__(message)
        self.parsed = parsed  # the body was a JSON document (the review itself is what is wrong)
        self.code = code
        self.message = message
        self.api_version = api_version
        self.uid = uid


@dataclass(frozen=True, slots=True)
class Envelope:
    """What every answer must echo, known as soon as the body parsed (even if the request itself is malformed)."""

    api_version: str
    uid: str


def check_content_type(content_type: str | None) -> None:
    mime = (content_type or "").split(";", 1)[0].strip().lower()
    if mime != "application/json":
        raise Rejected(415, f"content type must be application/json; got {mime or 'none'!r:.60}")


def check_length(content_length: int | None, limit: int) -> None:
    if content_length is not None and content_length > limit:
        raise Rejected(413, f"the body is {content_length} bytes; at most {limit} are accepted")


def decode(body: bytes, limit: int) -> tuple[Envelope, review.AdmissionRequest]:
    """Parse a body into the echo envelope and the typed request; raise Rejected on anything malformed."""
    if len(body) > limit:
        raise Rejected(413, f"the body is over {limit} bytes")
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        raise Rejected(400, "the body is not valid JSON") from None
    envelope = envelope_of(doc)
    try:
        request = review.AdmissionRequest.from_review(doc)
    except review.MalformedReview as e:
        raise Rejected(400, str(e), api_version=envelope.api_version, uid=envelope.uid, parsed=True) from None
    return envelope, request


def envelope_of(doc: object) -> Envelope:
    """Best-effort apiVersion and uid of a parsed body, for echoing even in error answers."""
    api_version, uid = DEFAULT_API_VERSION, ""
    if isinstance(doc, Mapping):
        if doc.get("apiVersion") in review.API_VERSIONS:
            api_version = doc["apiVersion"]
        req = doc.get("request")
        if isinstance(req, Mapping) and isinstance(req.get("uid"), str):
            uid = req["uid"]
    return Envelope(api_version=api_version, uid=uid)


def encode(envelope: Envelope, decision: decision_mod.Decision) -> dict[str, Any]:
    """The AdmissionReview answer for a decision (403 denials carry reason Forbidden; patches are base64)."""
    response: dict[str, Any] = {"uid": envelope.uid, "allowed": decision.allowed}
    if decision.allowed:
        response["status"] = {"code": 200}
    else:
        status: dict[str, Any] = {"code": decision.code, "message": decision.message}
        if decision.reason:
            status["reason"] = decision.reason
        response["status"] = status
    if decision.warnings:
        response["warnings"] = list(decision.warnings)
    if decision.patch and decision.allowed:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(json.dumps(list(decision.patch)).encode()).decode()
    return {"apiVersion": envelope.api_version, "kind": "AdmissionReview", "response": response}


def encode_rejected(rejected: Rejected) -> dict[str, Any]:
    reason = {400: "BadRequest", 413: "RequestEntityTooLarge", 415: "UnsupportedMediaType"}.get(rejected.code, "")
    return encode(
        Envelope(api_version=rejected.api_version, uid=rejected.uid),
        decision_mod.Decision(allowed=False, code=rejected.code, reason=reason, message=rejected.message),
    )


def encode_internal_error(envelope: Envelope) -> dict[str, Any]:
    return encode(
        envelope,
        decision_mod.Decision(allowed=False, code=500, reason="InternalError", message=INTERNAL_ERROR_MESSAGE),
    )
