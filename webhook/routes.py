"""HTTP surface: admission endpoints (ours and upstream's paths), health, readiness and metrics."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from flask import Blueprint, Response, current_app, request
from prometheus_client import CONTENT_TYPE_LATEST
from werkzeug import exceptions as http_exceptions

from policy import decision as policy_decision
from policy import messages
from webhook import access as webhook_access
from webhook import codec
from webhook import logging as webhook_logging

if TYPE_CHECKING:
    from webhook.app import Runtime

log = logging.getLogger(__name__)
bp = Blueprint("admission", __name__)


def _runtime() -> Runtime:
    rt: Runtime = current_app.extensions["pcidevices"]
    return rt


# admit(wait=False) raises it before any effect when the answer needs a wait: an unsynced view, a SubjectAccessReview
# that is not cached, a device hold to take. The caller then asks again from a thread.
WouldWait = webhook_access.WouldWait


def admit(
    rt: Runtime,
    webhook: str,
    content_type: str | None,
    content_length: int | None,
    read: Callable[[], bytes],
    *,
    wait: bool = True,
) -> tuple[bytes, int]:
    """The answer to one admission request (JSON body, HTTP status), for the Flask route and for webhook.front.

    With wait=False nothing blocks: the event loop of a worker judges most reviews itself this way and hands the
    rest (WouldWait) to its threads, which judge them from the start."""
    started = time.perf_counter()
    envelope = codec.Envelope(api_version=codec.DEFAULT_API_VERSION, uid="")
    resource = operation = "unknown"
    rule, result = "", "error"
    status = 200
    try:
        codec.check_content_type(content_type)
        codec.check_length(content_length, rt.settings.max_body_bytes)
        envelope, req = codec.decode(read(), rt.settings.max_body_bytes)
        resource, operation = req.resource.resource, req.operation
        if not wait and not rt.wait_synced(0):
            raise WouldWait
        if rt.wait_synced(rt.settings.unsynced_wait_s):
            judge = rt.validate if webhook == "validate" else rt.mutate
            if wait:
                decision = judge(req, rt.view, rt.access, rt.settings.policy)
            else:
                with webhook_access.without_waiting():
                    decision = judge(req, rt.view, rt.access, rt.settings.policy)
            if webhook == "validate" and decision.allowed and decision.holds and rt.holds is not None:
                if not wait:
                    raise WouldWait
                decision = rt.holds.take(decision.holds, dry_run=req.dry_run) or decision
        else:
            decision = policy_decision.deny("unsynced", messages.VIEW_NOT_SYNCED, 503, "ServiceUnavailable")
        answer = codec.encode(envelope, decision)
        rule = decision.rule
        if decision.allowed:
            result = "patched" if decision.patch else "allowed"
        else:
            result = "malformed" if decision.code == 400 else "denied"
            webhook_logging.for_request(log, req).info(
                "denied", extra={"webhook": webhook, "rule": decision.rule, "code": decision.code}
            )
    except WouldWait:
        raise
    except codec.Rejected as rejected:
        result, rule = "malformed", "malformed"
        answer = codec.encode_rejected(rejected)
        # Bodies that never parsed as a review get the HTTP status as well, for callers other than the API server.
        status = 200 if rejected.parsed else rejected.code
        log.info("rejected a malformed review", extra={"webhook": webhook, "code": rejected.code, "uid": rejected.uid})
    except Exception:
        log.error("admission failed", exc_info=True, extra={"webhook": webhook, "uid": envelope.uid})
        answer = codec.encode_internal_error(envelope)
    elapsed = time.perf_counter() - started
    rt.metrics.latency.labels(webhook).observe(elapsed)
    rt.metrics.admissions.labels(webhook, resource, operation, rule, result).inc()
    return json.dumps(answer).encode(), status


def _read_body() -> bytes:
    try:
        return request.get_data(cache=False)
    except http_exceptions.RequestEntityTooLarge:
        raise codec.Rejected(413, f"the body is over {_runtime().settings.max_body_bytes} bytes") from None


def _admit(webhook: str) -> tuple[Response, int]:
    body, status = admit(_runtime(), webhook, request.content_type, request.content_length, _read_body)
    return Response(body, mimetype="application/json"), status


# Paths of the two webhooks, ours and upstream's (the chart's configurations use ours).
ADMISSION_PATHS = {
    "/validate": "validate",
    "/v1/webhook/validation": "validate",
    "/mutate": "mutate",
    "/v1/webhook/mutation": "mutate",
}


@bp.post("/validate")
@bp.post("/v1/webhook/validation")
def validate() -> tuple[Response, int]:
    return _admit("validate")


@bp.post("/mutate")
@bp.post("/v1/webhook/mutation")
def mutate() -> tuple[Response, int]:
    return _admit("mutate")


@bp.get("/healthz")
def healthz() -> tuple[str, int]:
    rt = _runtime()
    if rt.settings.manage_certificates and rt.keeper_heartbeat.stale(rt.settings.keeper_stale_s):
        log.error("the certificate keeper has stopped; failing liveness so the pod is restarted")
        return "certificate keeper stopped", 503
    return "ok", 200


@bp.get("/readyz")
def readyz() -> tuple[str, int]:
    return ("ok", 200) if _runtime().ready() else ("cluster view not synced yet", 503)


@bp.get("/metrics")
def metrics() -> Response:
    return Response(_runtime().metrics.render(), mimetype=CONTENT_TYPE_LATEST)
