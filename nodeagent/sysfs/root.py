"""The one door to the host's filesystem: `/sys`, `/dev` and `/proc` seen under a prefix.

Every read and write of a host file goes through a `SysfsRoot`, so the same code runs on `/`, on a synthetic tree
built by the tests, under a umockdev replay (root `/`, umockdev redirects `/sys`) and in a container that sees the
host's `/proc` somewhere else (`proc=`). Callers speak in host paths (`/sys/bus/pci/devices/0000:00:1f.6/vendor`);
the root maps them to the real location. Callers must build those paths only from validated parts
(`policy.names.pci_address`); a path with `..` is refused outright.
"""

from __future__ import annotations

import errno as errno_mod
import os
from collections.abc import Sequence

from nodeagent.errors import RootUnavailable, SysfsError

SYS = "/sys"
DEV = "/dev"
PROC = "/proc"

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_CLOEXEC
MISSING = (errno_mod.ENOENT, errno_mod.ENOTDIR, errno_mod.ENODEV, errno_mod.ENXIO)


class SysfsRoot:
    """Host paths under a prefix. `SysfsRoot("/x")` makes `/x` stand for `/`; `proc=` overrides `/proc` alone."""

    __slots__ = ("_prefix", "_proc")

    def __init__(self, root: str | os.PathLike[str] = "/", *, proc: str | os.PathLike[str] | None = None) -> None:
        prefix = os.path.abspath(os.fspath(root))
        self._prefix = "" if prefix == "/" else prefix
        self._proc = os.path.abspath(os.fspath(proc)) if proc is not None else None

    def __repr__(self) -> str:
        return f"SysfsRoot({self.prefix!r}, proc={self._proc!r})"

    @property
    def prefix(self) -> str:
        """The directory that stands for `/` ("/" for the live host)."""
        return self._prefix or "/"

    @property
    def proc_moved(self) -> bool:
        """True when /proc was given separately (a container's view of the host's /proc, where `self` is not
        the host's process but pid 1 is)."""
        return self._proc is not None

    def check(self) -> None:
        """Raise RootUnavailable unless the root is a readable directory (the CLI's exit-2 case)."""
        where = self.prefix
        if not os.path.isdir(where):
            raise RootUnavailable(f"root {where} is not a directory", path=where, errno=errno_mod.ENOENT)
        if not os.access(where, os.R_OK | os.X_OK):
            raise RootUnavailable(f"root {where} is not readable", path=where, errno=errno_mod.EACCES)

    # -- paths -------------------------------------------------------------------------------------------------

    @staticmethod
    def sys(*parts: str) -> str:
        """Host path under /sys, e.g. `root.sys("bus", "pci", "devices")`."""
        return "/".join((SYS, *parts))

    @staticmethod
    def dev(*parts: str) -> str:
        """Host path under /dev, e.g. `root.dev("vfio", "45")`."""
        return "/".join((DEV, *parts))

    @staticmethod
    def proc(*parts: str) -> str:
        """Host path under /proc, e.g. `root.proc("self", "mountinfo")`."""
        return "/".join((PROC, *parts))

    def real(self, host_path: str) -> str:
        """The real filesystem location of a host path (for tools that need a path, e.g. lspci -O sysfs.path)."""
        if not host_path.startswith("/") or "/.." in host_path:
            raise SysfsError(f"refusing host path {host_path!r}", path=host_path)
        if self._proc is not None and (host_path == PROC or host_path.startswith("/proc/")):
            return self._proc + host_path[5:]
        return self._prefix + host_path

    def host(self, real_path: str) -> str:
        """The host path of a real location under the root (inverse of `real`)."""
        if self._proc is not None and (real_path == self._proc or real_path.startswith(self._proc + "/")):
            return PROC + real_path[len(self._proc) :]
        if not self._prefix:
            return real_path
        if real_path == self._prefix:
            return "/"
        if real_path.startswith(self._prefix + "/"):
            return real_path[len(self._prefix) :]
        raise SysfsError(f"{real_path} lies outside root {self.prefix}", path=real_path)

    # -- reads -------------------------------------------------------------------------------------------------

    def read_bytes(self, host_path: str, size: int = -1) -> bytes:
        """Read a file once (at most `size` bytes); raise SysfsError."""
        try:
            with open(self.real(host_path), "rb", buffering=0) as f:
                return f.read(size) if size >= 0 else f.readall()
        except OSError as e:
            raise SysfsError(f"cannot read {host_path}: {e.strerror}", path=host_path, errno=e.errno) from e

    def try_read_bytes(self, host_path: str, size: int = 4096) -> bytes | None:
        """At most `size` bytes in one read(2), None when the file does not exist; the scan's fast path."""
        try:
            fd = os.open(self.real(host_path), os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            if e.errno in MISSING:
                return None
            raise SysfsError(f"cannot read {host_path}: {e.strerror}", path=host_path, errno=e.errno) from e
        try:
            return os.read(fd, size)
        except OSError as e:
            raise SysfsError(f"cannot read {host_path}: {e.strerror}", path=host_path, errno=e.errno) from e
        finally:
            os.close(fd)

    def try_read_all(self, host_path: str) -> bytes | None:
        """A whole file of unknown size (mountinfo, routes) in 64 KiB reads, None when it does not exist."""
        try:
            fd = os.open(self.real(host_path), os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            if e.errno in MISSING:
                return None
            raise SysfsError(f"cannot read {host_path}: {e.strerror}", path=host_path, errno=e.errno) from e
        chunks = []
        try:
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
        except OSError as e:
            raise SysfsError(f"cannot read {host_path}: {e.strerror}", path=host_path, errno=e.errno) from e
        finally:
            os.close(fd)
        return b"".join(chunks)

    def read_entries(
        self, host_dir: str, files: Sequence[tuple[str, int]], links: Sequence[str]
    ) -> tuple[list[bytes | None], list[str | None]]:
        """Several small files and link names of one directory, paths resolved once (openat); None when missing."""
        with self.open_dir(host_dir) as d:
            return d.read_each(files), [d.link_name(name) for name in links]

    def open_dir(self, host_path: str) -> DirHandle:
        """An open directory for reading several attributes of one device with paths resolved once (openat)."""
        try:
            fd = os.open(self.real(host_path), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise SysfsError(f"cannot open {host_path}: {e.strerror}", path=host_path, errno=e.errno) from e
        return DirHandle(fd, host_path)

    def try_open_dir(self, host_path: str) -> DirHandle | None:
        """Like open_dir, but None when the directory does not exist (a machine without a USB bus)."""
        try:
            return self.open_dir(host_path)
        except SysfsError as e:
            if e.errno in MISSING:
                return None
            raise

    def read_attr(self, host_path: str) -> str:
        """A sysfs attribute as text, surrounding whitespace removed; raise SysfsError."""
        return self.read_bytes(host_path).decode("utf-8", "replace").strip()

    def try_read_attr(self, host_path: str) -> str | None:
        """Like read_attr, but None when the file does not exist (other errors still raise)."""
        try:
            return self.read_attr(host_path)
        except SysfsError as e:
            if e.errno in MISSING:
                return None
            raise

    def read_link(self, host_path: str) -> str:
        """The raw target of a symlink (sysfs links are relative); raise SysfsError."""
        try:
            return os.readlink(self.real(host_path))
        except OSError as e:
            raise SysfsError(f"cannot read link {host_path}: {e.strerror}", path=host_path, errno=e.errno) from e

    def try_link_name(self, host_path: str) -> str | None:
        """Basename of a symlink's target (e.g. the driver or iommu_group), None when there is no link."""
        try:
            return os.path.basename(os.readlink(self.real(host_path)))
        except OSError as e:
            if e.errno in MISSING or e.errno == errno_mod.EINVAL:
                return None
            raise SysfsError(f"cannot read link {host_path}: {e.strerror}", path=host_path, errno=e.errno) from e

    def resolve(self, host_path: str) -> str:
        """The host path with every symlink resolved, e.g. /sys/bus/pci/devices/X -> /sys/devices/pci0000:00/.../X."""
        return self.host(os.path.realpath(self.real(host_path)))

    def exists(self, host_path: str) -> bool:
        return os.path.exists(self.real(host_path))

    def is_link(self, host_path: str) -> bool:
        return os.path.islink(self.real(host_path))

    def children(self, host_path: str) -> list[str]:
        """Sorted entry names of a directory; [] when it does not exist; raise SysfsError on other errors."""
        try:
            return sorted(os.listdir(self.real(host_path)))
        except OSError as e:
            if e.errno in MISSING:
                return []
            raise SysfsError(f"cannot list {host_path}: {e.strerror}", path=host_path, errno=e.errno) from e

    # -- writes (the binder's; discovery never writes) ---------------------------------------------------------

    def write_attr(self, host_path: str, value: str) -> None:
        """Write `value` to an existing attribute in one write(2); raise SysfsError with the kernel's errno."""
        data = value.encode()
        try:
            fd = os.open(self.real(host_path), os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
        except OSError as e:
            raise SysfsError(f"cannot write {host_path}: {e.strerror}", path=host_path, errno=e.errno) from e


class DirHandle:
    """One open sysfs directory: `read`/`link_name` of entries relative to it; close it (or use `with`)."""

    __slots__ = ("_fd", "host_path")

    def __init__(self, fd: int, host_path: str) -> None:
        self._fd = fd
        self.host_path = host_path

    def __enter__(self) -> DirHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def fileno(self) -> int:
        return self._fd

    def entries(self) -> list[str]:
        """Sorted entry names of this directory (one getdents pass on the open descriptor)."""
        try:
            return sorted(os.listdir(self._fd))
        except OSError as e:
            raise SysfsError(f"cannot list {self.host_path}: {e.strerror}", path=self.host_path, errno=e.errno) from e

    def open_dir(self, name: str) -> DirHandle:
        """Entry `name` (a validated name, never `..`) as an open directory, resolved relative to this one."""
        path = f"{self.host_path}/{name}"
        if name.startswith("/") or ".." in name:
            raise SysfsError(f"refusing host path {path!r}", path=path)
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=self._fd)
        except OSError as e:
            raise SysfsError(f"cannot open {path}: {e.strerror}", path=path, errno=e.errno) from e
        return DirHandle(fd, path)

    def read(self, name: str, size: int = 4096) -> bytes | None:
        """At most `size` bytes of entry `name` in one read(2); None when it does not exist."""
        try:
            fd = os.open(name, _FILE_FLAGS, dir_fd=self._fd)
        except FileNotFoundError:
            return None
        except OSError as e:
            if e.errno in MISSING:
                return None
            path = f"{self.host_path}/{name}"
            raise SysfsError(f"cannot read {path}: {e.strerror}", path=path, errno=e.errno) from e
        try:
            return os.read(fd, size)
        except OSError as e:
            path = f"{self.host_path}/{name}"
            raise SysfsError(f"cannot read {path}: {e.strerror}", path=path, errno=e.errno) from e
        finally:
            os.close(fd)

    def read_each(self, files: Sequence[tuple[str, int]]) -> list[bytes | None]:
        """Several small entries in one call (the scan's hot path): at most `size` bytes of each, None when missing."""
        out: list[bytes | None] = []
        dfd = self._fd
        name = ""
        try:
            for name, size in files:
                try:
                    fd = os.open(name, _FILE_FLAGS, dir_fd=dfd)
                except FileNotFoundError:
                    out.append(None)
                    continue
                try:
                    out.append(os.read(fd, size))
                finally:
                    os.close(fd)
        except OSError as e:
            if e.errno in MISSING:
                return [*out, None, *self.read_each(files[len(out) + 1 :])]
            path = f"{self.host_path}/{name}"
            raise SysfsError(f"cannot read {path}: {e.strerror}", path=path, errno=e.errno) from e
        return out

    def read_link(self, name: str) -> str:
        """The raw target of symlink `name` (sysfs links are relative); raise SysfsError."""
        try:
            return os.readlink(name, dir_fd=self._fd)
        except OSError as e:
            path = f"{self.host_path}/{name}"
            raise SysfsError(f"cannot read link {path}: {e.strerror}", path=path, errno=e.errno) from e

    def link_name(self, name: str) -> str | None:
        """Basename of symlink `name`'s target, None when there is none."""
        try:
            return os.readlink(name, dir_fd=self._fd).rpartition("/")[2]
        except FileNotFoundError:
            return None
        except OSError as e:
            if e.errno in MISSING or e.errno == errno_mod.EINVAL:
                return None
            path = f"{self.host_path}/{name}"
            raise SysfsError(f"cannot read link {path}: {e.strerror}", path=path, errno=e.errno) from e
