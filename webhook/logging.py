"""JSON log lines and the per-request adapter (uid, resource, operation, user, object).

Configured once by gunicorn_conf (logconfig_dict); library modules only call logging.getLogger(__name__).
"""

from __future__ import annotations

import json
import logging
from collections.abc import MutableMapping
from typing import Any

from policy import review

# Attributes every LogRecord has; anything else on a record came from `extra=` and is emitted as a field.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


class RequestLogger(logging.LoggerAdapter[logging.Logger]):
    """Adds the request's identity to every line logged while handling one admission review."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        kwargs["extra"] = {**(self.extra or {}), **kwargs.get("extra", {})}
        return msg, kwargs


def for_request(logger: logging.Logger, request: review.AdmissionRequest) -> RequestLogger:
    return RequestLogger(
        logger,
        {
            "uid": request.uid,
            "resource": request.resource.resource,
            "subresource": request.sub_resource,
            "operation": request.operation,
            "user": request.user.username,
            "object": request.name,
            "dry_run": request.dry_run,
        },
    )


def config_dict(level: str, json_lines: bool) -> dict[str, Any]:
    """A logging.config dictConfig for gunicorn's logconfig_dict (gunicorn's own loggers included)."""
    plain = {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}
    formatter = {"()": f"{__name__}.JSONFormatter"} if json_lines else plain
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"main": formatter},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "main", "stream": "ext://sys.stderr"}},
        "root": {"level": level, "handlers": ["stderr"]},
        "loggers": {
            "gunicorn.error": {"level": level, "handlers": ["stderr"], "propagate": False},
            "gunicorn.access": {"level": "WARNING", "handlers": ["stderr"], "propagate": False},
        },
    }
