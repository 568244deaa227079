"""A SysfsRoot whose directory handles let a test act at the moment the scan lists a directory or opens an entry
(a device unplugged mid-scan)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from nodeagent.sysfs.root import DirHandle, SysfsRoot

Hook = Callable[[str], None]


class HookedRoot(SysfsRoot):
    """`after_list(dir)` runs once a handle has listed `dir`; `after_open(name)` once a handle has opened entry
    `name` as a directory. Both get host paths / entry names as the scan used them."""

    def __init__(self, base: Path, *, after_list: Hook | None = None, after_open: Hook | None = None) -> None:
        super().__init__(base)
        self.after_list = after_list or (lambda _: None)
        self.after_open = after_open or (lambda _: None)

    def open_dir(self, host_path: str) -> DirHandle:
        handle = super().open_dir(host_path)
        fd = os.dup(handle.fileno())
        handle.close()
        return _HookedDir(fd, host_path, self)


class _HookedDir(DirHandle):
    __slots__ = ("root",)

    def __init__(self, fd: int, host_path: str, root: HookedRoot) -> None:
        super().__init__(fd, host_path)
        self.root = root

    def entries(self) -> list[str]:
        listed = super().entries()
        self.root.after_list(self.host_path)
        return listed

    def open_dir(self, name: str) -> DirHandle:
        handle = super().open_dir(name)
        self.root.after_open(name)
        return handle
