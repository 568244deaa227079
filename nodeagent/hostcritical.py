"""Which PCI functions the host itself needs, and why, read from the host's mount, swap, network and sysfs state.

Sources, all under the SysfsRoot so `--root` and a container's view of the host work alike:
- mounts: /proc/self/mountinfo, or /proc/1/mountinfo first when /proc is given separately (`--proc`, a
  container's view of the host); swaps: /proc/swaps;
- block devices: /sys/dev/block/<major:minor> and /sys/class/block/<name>, following partitions to their disk,
  dm/md devices through `slaves/`, loop devices through `loop/backing_file` to the mount holding that file, and
  native-multipath NVMe namespaces through their subsystem's controller links;
- routes: /proc/net/route (IPv4) and /proc/net/ipv6_route (IPv6) for the default route;
- the node IP: IPv4 through the directly connected route in /proc/net/route that covers it (the kernel adds one for
  every address with a prefix; no procfs file maps IPv4 addresses to interfaces directly), IPv6 through
  /proc/net/if_inet6 (exact address);
- interfaces: /sys/class/net/<if>: `device` (a physical NIC), `brif/`, `bonding/slaves`, `lower_*` and `master`.
The reasons are sentences for people ("holds / via nvme0n1p2"); the boot VGA is a warning, not host-critical.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from nodeagent.errors import SysfsError
from nodeagent.sysfs.pci import HostPCIFunction
from nodeagent.sysfs.root import SysfsRoot
from policy import names

log = logging.getLogger(__name__)

CLASS_ISA_BRIDGE = "0601"
CLASS_SMBUS = "0c05"
_ARROW = " → "
_NVME_CTRL = re.compile(r"^nvme[0-9]+$")


@dataclass(frozen=True, slots=True)
class Mount:
    majmin: str
    mountpoint: str
    source: str


@dataclass
class HostCritical:
    """Reasons (host-critical) and warnings per PCI address; `root_traced` says whether / led to a device."""

    reasons: dict[str, list[str]] = field(default_factory=dict)
    warnings: dict[str, list[str]] = field(default_factory=dict)
    root_traced: bool = False

    def add(self, address: str, reason: str) -> None:
        bucket = self.reasons.setdefault(address, [])
        if reason not in bucket:
            bucket.append(reason)

    def warn(self, address: str, warning: str) -> None:
        bucket = self.warnings.setdefault(address, [])
        if warning not in bucket:
            bucket.append(warning)


def _last_pci_address(host_path: str) -> str | None:
    last = None
    for part in host_path.split("/"):
        if names.is_pci_address(part):
            last = part
    return last


# -- block devices --------------------------------------------------------------------------------------------


def read_mounts(root: SysfsRoot) -> list[Mount]:
    # With the host's /proc mounted into a container, `self` is the agent's mount namespace; pid 1 is the host's.
    order = ("1", "self") if root.proc_moved else ("self", "1")
    raw = root.try_read_all(root.proc(order[0], "mountinfo")) or root.try_read_all(root.proc(order[1], "mountinfo"))
    raw = raw or b""
    mounts = []
    for line in raw.decode("utf-8", "replace").splitlines():
        fields = line.split()
        if len(fields) < 10 or "-" not in fields:
            continue
        sep = fields.index("-")
        mounts.append(Mount(fields[2], _unescape(fields[4]), _unescape(fields[sep + 2])))
    return mounts


def _unescape(text: str) -> str:
    """mountinfo and swaps escape space, tab, newline and backslash as octal (\\040)."""
    if "\\" not in text:
        return text
    return text.encode().decode("unicode_escape")


def _block_display(root: SysfsRoot, name: str) -> str:
    dm = root.try_read_attr(root.sys("class", "block", name, "dm", "name"))
    return dm or name


def _block_name_from_dev(root: SysfsRoot, dev_path: str) -> str | None:
    """`/dev/sda1`, `/dev/mapper/vg-root` or `/dev/dm-0` to a block device name in /sys/class/block."""
    if not dev_path.startswith("/dev/") or "/.." in dev_path:
        return None
    if dev_path.startswith("/dev/mapper/"):
        wanted = dev_path[len("/dev/mapper/") :]
        for name in root.children(root.sys("class", "block")):
            if name.startswith("dm-") and root.try_read_attr(root.sys("class", "block", name, "dm", "name")) == wanted:
                return name
        return None
    name = dev_path.rsplit("/", 1)[1]
    return name if root.exists(root.sys("class", "block", name)) else None


def _block_of_mount(root: SysfsRoot, mount: Mount) -> str | None:
    if not mount.majmin.startswith("0:"):
        link = root.sys("dev", "block", mount.majmin)
        if root.exists(link):
            return root.resolve(link).rsplit("/", 1)[1]
    return _block_name_from_dev(root, mount.source)


def _mount_holding(mounts: Sequence[Mount], path: str) -> Mount | None:
    best: Mount | None = None
    for m in mounts:
        mp = m.mountpoint.rstrip("/") or "/"
        if (path == mp or path.startswith(mp.rstrip("/") + "/")) and (
            best is None or len(mp) >= len(best.mountpoint)
        ):
            best = m
    return best


def trace_block(
    root: SysfsRoot, mounts: Sequence[Mount], name: str, seen: frozenset[str] = frozenset()
) -> list[tuple[str, list[str]]]:
    """(PCI address, chain of block devices) for every PCI function beneath block device `name`."""
    if name in seen or len(seen) > 32:
        return []
    seen = seen | {name}
    here = _block_display(root, name)
    path = root.resolve(root.sys("class", "block", name))
    if "/devices/virtual/" not in path:
        address = _last_pci_address(path)
        return [(address, [here])] if address else []
    found: list[tuple[str, list[str]]] = []
    if "/nvme-subsystem/" in path:
        # Native NVMe multipath: the namespace hangs off a virtual subsystem whose `nvmeN` entries are links to
        # the controllers (PCI functions) that reach it.
        head, _, tail = path.partition("/nvme-subsystem/")
        subsystem = f"{head}/nvme-subsystem/{tail.split('/')[0]}"
        for ctrl in root.children(subsystem):
            if _NVME_CTRL.match(ctrl) and root.is_link(f"{subsystem}/{ctrl}"):
                address = _last_pci_address(root.resolve(f"{subsystem}/{ctrl}"))
                if address:
                    found.append((address, [here, ctrl]))
        return found
    backing = root.try_read_attr(root.sys("class", "block", name, "loop", "backing_file"))
    if backing:
        holder = _mount_holding(mounts, backing)
        below = _block_of_mount(root, holder) if holder else None
        if below:
            found += [(a, [f"{here} ({backing})", *chain]) for a, chain in trace_block(root, mounts, below, seen)]
    for slave in root.children(root.sys("class", "block", name, "slaves")):
        found += [(a, [here, *chain]) for a, chain in trace_block(root, mounts, slave, seen)]
    return found


def _add_storage(root: SysfsRoot, result: HostCritical) -> None:
    mounts = read_mounts(root)
    per_device: dict[tuple[str, tuple[str, ...]], list[str]] = {}
    for m in mounts:
        try:
            name = _block_of_mount(root, m)
            traced = trace_block(root, mounts, name, frozenset()) if name else []
        except SysfsError as e:
            log.warning("cannot trace mount to a device", extra={"mountpoint": m.mountpoint, "error": str(e)})
            continue
        for address, chain in traced:
            per_device.setdefault((address, tuple(chain)), []).append(m.mountpoint)
            if m.mountpoint == "/":
                result.root_traced = True
    for (holder, via), points in per_device.items():
        points.sort(key=lambda p: (len(p), p))
        more = f" (and {len(points) - 1} more mounts)" if len(points) > 1 else ""
        result.add(holder, f"holds {points[0]} via {_ARROW.join(via)}{more}")
    raw = root.try_read_all(root.proc("swaps")) or b""
    for line in raw.decode("utf-8", "replace").splitlines()[1:]:
        fields = line.split()
        if len(fields) < 2:
            continue
        filename, kind = _unescape(fields[0]), fields[1]
        try:
            if kind == "partition":
                name = _block_name_from_dev(root, filename)
                traced = trace_block(root, mounts, name) if name else []
            else:
                holding = _mount_holding(mounts, filename)
                below = _block_of_mount(root, holding) if holding else None
                traced = [(a, [filename, *c]) for a, c in trace_block(root, mounts, below)] if below else []
        except SysfsError as e:
            log.warning("cannot trace swap to a device", extra={"swap": filename, "error": str(e)})
            continue
        for address, chain in traced:
            result.add(address, f"holds swap {filename} via {_ARROW.join(chain)}")


# -- network --------------------------------------------------------------------------------------------------


def _lowers(root: SysfsRoot, iface: str) -> list[str]:
    base = root.sys("class", "net", iface)
    lowers = set(root.children(base + "/brif"))
    slaves = root.try_read_attr(base + "/bonding/slaves")
    if slaves:
        lowers.update(slaves.split())
    lowers.update(c[len("lower_") :] for c in root.children(base) if c.startswith("lower_"))
    return sorted(lowers)


def _net_address(root: SysfsRoot, iface: str) -> str | None:
    device = root.sys("class", "net", iface, "device")
    if not root.exists(device):
        return None
    return _last_pci_address(root.resolve(device))


def trace_net(root: SysfsRoot, iface: str, seen: frozenset[str] = frozenset()) -> list[tuple[str, list[str]]]:
    """(PCI address, chain of interfaces) for every physical NIC beneath `iface` (bridges, bonds, VLANs)."""
    if iface in seen or len(seen) > 32 or "/" in iface or iface in (".", ".."):
        return []
    seen = seen | {iface}
    address = _net_address(root, iface)
    if address:
        return [(address, [iface])]
    found: list[tuple[str, list[str]]] = []
    for low in _lowers(root, iface):
        found += [(a, [iface, *chain]) for a, chain in trace_net(root, low, seen)]
    return found


def default_route_interfaces(root: SysfsRoot) -> list[str]:
    ifaces: list[str] = []
    raw = root.try_read_all(root.proc("net", "route")) or b""
    for line in raw.decode().splitlines()[1:]:
        f = line.split()
        if len(f) >= 8 and f[1] == "00000000" and f[7] == "00000000" and int(f[3], 16) & 0x0001:
            ifaces.append(f[0])
    raw6 = root.try_read_all(root.proc("net", "ipv6_route")) or b""
    for line in raw6.decode().splitlines():
        f = line.split()
        if len(f) >= 10 and f[0] == "0" * 32 and f[1] == "00" and f[9] != "lo" and not int(f[8], 16) & 0x0200:
            ifaces.append(f[9])
    return list(dict.fromkeys(ifaces))


def node_ip_interfaces(root: SysfsRoot, node_ip: str) -> list[str]:
    ip = ipaddress.ip_address(node_ip)
    found: list[str] = []
    if ip.version == 4:
        raw = root.try_read_all(root.proc("net", "route")) or b""
        best = -1
        for line in raw.decode().splitlines()[1:]:
            f = line.split()
            if len(f) < 8 or int(f[3], 16) & 0x0002 or f[7] == "00000000":
                continue  # gateway routes and the default route do not say where an address lives
            dest = ipaddress.IPv4Address(int.from_bytes(bytes.fromhex(f[1]), "little"))
            mask = int.from_bytes(bytes.fromhex(f[7]), "little")
            net = ipaddress.IPv4Network(f"{dest}/{bin(mask).count('1')}", strict=False)
            if ip in net and net.prefixlen >= best:
                found = [f[0]] if net.prefixlen > best else [*found, f[0]]
                best = net.prefixlen
    else:
        raw = root.try_read_all(root.proc("net", "if_inet6")) or b""
        for line in raw.decode().splitlines():
            f = line.split()
            if len(f) >= 6 and ipaddress.IPv6Address(int(f[0], 16)) == ip:
                found.append(f[5])
    return list(dict.fromkeys(found))


def _add_network(root: SysfsRoot, node_ip: str | None, result: HostCritical) -> None:
    for iface in default_route_interfaces(root):
        for address, chain in trace_net(root, iface):
            result.add(address, f"carries the default route via {_ARROW.join(chain)}")
    if node_ip:
        for iface in node_ip_interfaces(root, node_ip):
            for address, chain in trace_net(root, iface):
                result.add(address, f"carries the node IP {node_ip} via {_ARROW.join(chain)}")
    for iface in root.children(root.sys("class", "net")):
        base = root.sys("class", "net", iface)
        master = root.try_link_name(base + "/master")
        if not master:
            continue
        nic = _net_address(root, iface)
        if not nic:
            continue
        mbase = root.sys("class", "net", master)
        if root.exists(mbase + "/bridge"):
            result.add(nic, f"is a port of bridge {master} ({iface})")
        elif root.exists(mbase + "/bonding"):
            result.add(nic, f"is a slave of bond {master} ({iface})")
        else:
            result.add(nic, f"is enslaved to {master} ({iface})")


# -- functions by what they are ------------------------------------------------------------------------------


def _add_functions(functions: Iterable[HostPCIFunction], result: HostCritical) -> None:
    for fn in functions:
        if fn.class_id == CLASS_ISA_BRIDGE:
            result.add(fn.address, "is the LPC/ISA bridge (firmware, TPM and legacy I/O sit behind it)")
        elif fn.class_id == CLASS_SMBUS:
            result.add(fn.address, "is an SMBus controller (sensors and memory configuration)")
        if fn.sriov_numvfs > 0:
            result.add(fn.address, f"is an SR-IOV physical function with {fn.sriov_numvfs} active VFs")
        if fn.boot_vga:
            result.warn(fn.address, "is the boot VGA device (the host console is lost if it is passed through)")


def scan_host_critical(
    root: SysfsRoot, functions: Sequence[HostPCIFunction], node_ip: str | None = None
) -> HostCritical:
    """Every host-critical function with its reasons; a failing source is logged and the others still count."""
    result = HostCritical()
    _add_functions(functions, result)
    try:
        _add_storage(root, result)
    except (SysfsError, ValueError, OSError) as e:
        log.error("host-critical detection failed for storage", extra={"error": str(e)})
    try:
        _add_network(root, node_ip, result)
    except (SysfsError, ValueError, OSError) as e:
        log.error("host-critical detection failed for the network", extra={"error": str(e)})
    return result
