"""Ownership of a claimed USB device node: QEMU in virt-launcher runs as uid/gid 107 and must open it.

Called by the agent at claim time (not by the plugin: Allocate must stay fast and side-effect free). The node is
reached through the SysfsRoot, so tests run it on a fake tree; `chown` is injected for the same reason.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from nodeagent.deviceplugin import model
from nodeagent.errors import SysfsError
from nodeagent.sysfs.root import SysfsRoot

log = logging.getLogger(__name__)

QEMU_UID = 107
QEMU_GID = 107


def apply_usb_owner(
    root: SysfsRoot,
    device: model.UsbDevice,
    *,
    uid: int = QEMU_UID,
    gid: int = QEMU_GID,
    chown: Callable[[str, int, int], None] = os.chown,
) -> bool:
    """Make the device node owned by uid:gid; return whether anything changed. Raise SysfsError."""
    path = root.real(device.dev_path)
    try:
        st = os.stat(path)
        if (st.st_uid, st.st_gid) == (uid, gid):
            return False
        chown(path, uid, gid)
    except OSError as e:
        message = f"cannot own {device.dev_path} for qemu: {e.strerror}"
        raise SysfsError(message, path=device.dev_path, errno=e.errno) from e
    log.info("usb device node owned by qemu", extra={"dev_path": device.dev_path, "uid": uid, "gid": gid})
    return True
