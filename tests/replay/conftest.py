"""One umockdev replay for the whole tier: building the testbed costs ~25 s of CPU, so it is done once per session."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
# Kept in the repository (its README says where it comes from): a clone replays it with nothing beside it.
RECORDING = REPO / "tests/fixtures/umockdev/hpe-proliant-all.umockdev"


@pytest.fixture(scope="session")
def replay(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    missing = [tool for tool in ("umockdev-run", "lspci", "lsusb") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"replay tier needs {', '.join(missing)} (Debian umockdev, pciutils, usbutils; scripts/setup)")
    out = tmp_path_factory.mktemp("replay") / "replay.json"
    subprocess.run(
        ["umockdev-run", "-d", str(RECORDING), "--", sys.executable, str(REPO / "tests/replay/collect.py"), str(out)],
        check=True,
        cwd=REPO,
        timeout=900,
    )
    doc: dict[str, Any] = json.loads(out.read_text())
    return doc
