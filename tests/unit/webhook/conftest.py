"""Builders for webhook unit tests: AdmissionReview bodies as the API server sends them, and a ready test client."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from policy import access, snapshot
from webhook import app as app_mod
from webhook import settings as settings_mod


@pytest.fixture
def webhook_app(tmp_path: Path) -> Iterator[Any]:
    app = app_mod.create_app(
        settings_mod.WebhookSettings(cert_dir=tmp_path), view=snapshot.ClusterIndex(), access=access.StaticAccess()
    )
    app_mod.runtime(app).start()
    yield app


@pytest.fixture
def client(webhook_app: Any) -> FlaskClient:
    return webhook_app.test_client()
