"""Kernel tier: the prepared guest (scripts/prepare-kernel) for every module; missing tools skip locally."""

from __future__ import annotations

import pytest

from tests.support import qemu


@pytest.fixture(scope="session")
def guest_image() -> qemu.GuestImage:
    missing = qemu.missing_tools()
    if missing:
        pytest.skip(f"kernel tier needs {', '.join(missing)}: run scripts/prepare-kernel")
    image = qemu.find_image(qemu.default_cache())
    if image is None:
        pytest.skip(f"no guest image under {qemu.default_cache()}: run scripts/prepare-kernel")
    return image
