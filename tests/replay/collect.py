"""Runs inside one `umockdev-run -d <recording>`: the agent's discovery and the reference tools, all seen through
the same replayed /sys, dumped to one JSON file that the replay tests compare field by field.

    umockdev-run -d REC -- python tests/replay/collect.py OUT.json

The recording has `driver` links but not the /sys/bus/pci/drivers directories they point to; a real kernel always
has them, and lspci (3.9) ignores a dangling driver link. So before anything runs, the missing driver directories are
created in the testbed (empty), which makes the replayed /sys consistent again without changing any device.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from nodeagent import discovery  # noqa: E402
from nodeagent.idsdb import NamesDatabases  # noqa: E402
from nodeagent.sysfs.root import SysfsRoot  # noqa: E402
from tests.support import reference  # noqa: E402


def complete_driver_directories(testbed: Path) -> None:
    devices = testbed / "sys/bus/pci/devices"
    for dev in devices.iterdir():
        link = dev / "driver"
        if link.is_symlink():
            target = (dev.resolve() / os.readlink(link)).resolve()
            target.mkdir(parents=True, exist_ok=True)


def main(out: str) -> None:
    if os.environ.get("UMOCKDEV_DIR"):
        complete_driver_directories(Path(os.environ["UMOCKDEV_DIR"]))
    inventory = discovery.discover(SysfsRoot("/"), NamesDatabases.load(), "replay")
    doc = {
        "discovery": inventory.to_json(),
        "bridges": [f.address for f in inventory.functions if f.bridge],
        "lspci_numeric": reference.run(["lspci", "-vmm", "-nDk"]),
        "lspci_names": reference.run(["lspci", "-vmm", "-Dk"]),
        "lspci_config": reference.run(["lspci", "-D", "-x"]),
        "lsusb": reference.run(["lsusb"]),
    }
    Path(out).write_text(json.dumps(doc))


if __name__ == "__main__":
    main(sys.argv[1])
