from __future__ import annotations

import gzip
from pathlib import Path

from nodeagent.idsdb import IdsDatabase, NamesDatabases, load_ids

PCI_IDS = """\
# comment
0002  Test Vendor
8086  Intel Corporation
\t10fb  82599ES 10-Gigabit SFI/SFP+ Network Connection
\t\t8086 000c  Ethernet Server Adapter X520-T2
\t1572  Ethernet Controller X710 for 10GbE SFP+
10de  NVIDIA Corporation
\t20b0  GA100 [A100 SXM4 40GB]

# List of known device classes, subclasses and programming interfaces
C 02  Network controller
\t00  Ethernet controller
C 03  Display controller
\t00  VGA compatible controller
\t\t00  VGA controller
C 06  Bridge
\t01  ISA bridge
"""

USB_IDS = """\
0951  Kingston Technology
\t1666  DataTraveler 100 G3/G4/SE9 G2/50 Kyson
C 08  Mass Storage
\t06  SCSI
AT 0401  Terminal
HID 00  Undefined
"""


def test_lookups_find_vendors_devices_and_classes() -> None:
    db = IdsDatabase.parse(PCI_IDS)
    assert db.vendor("8086") == "Intel Corporation"
    assert db.device("8086", "1572") == "Ethernet Controller X710 for 10GbE SFP+"
    assert db.device("8086", "000c") is None  # a subsystem line is not a device
    assert db.device("10DE", "20B0") == "GA100 [A100 SXM4 40GB]"
    assert db.class_name("06") == "Bridge"
    assert db.subclass_name("06", "01") == "ISA bridge"


def test_lspci_fallbacks_for_unknown_ids_and_classes() -> None:
    db = IdsDatabase.parse(PCI_IDS)
    assert db.lspci_class("020000") == "Ethernet controller"
    assert db.lspci_class("0277") == "Network controller [0277]"
    assert db.lspci_class("fe01") == "Class fe01"
    assert db.lspci_vendor("abcd") == "Vendor abcd"
    assert db.lspci_device("8086", "ffff") == "Device ffff"
    assert db.lspci_device("abcd", "0001") == "Device 0001"


def test_usb_ids_other_sections_do_not_leak_into_vendors_or_classes() -> None:
    db = IdsDatabase.parse(USB_IDS)
    assert db.device("0951", "1666") == "DataTraveler 100 G3/G4/SE9 G2/50 Kyson"
    assert db.class_name("08") == "Mass Storage"
    assert db.vendor("0401") is None
    assert db.subclass_name("08", "06") == "SCSI"


def test_load_takes_the_first_existing_file_and_reads_gzip(tmp_path: Path) -> None:
    gz = tmp_path / "pci.ids.gz"
    gz.write_bytes(gzip.compress(PCI_IDS.encode()))
    db = load_ids([str(tmp_path / "missing.ids"), str(gz)])
    assert db.source == str(gz) and db.vendor("0002") == "Test Vendor"


def test_without_any_database_every_name_falls_back_to_ids(tmp_path: Path) -> None:
    dbs = NamesDatabases.load(str(tmp_path / "none.ids"), str(tmp_path / "none2.ids"))
    assert dbs.pci.lspci_vendor("8086") == "Vendor 8086"
    assert dbs.usb.vendor("0951") is None


def test_a_vendor_is_read_from_the_file_once_and_its_block_ends_at_the_next_vendor() -> None:
    reads: list[int] = []

    def read() -> str:
        reads.append(1)
        return PCI_IDS

    db = IdsDatabase.parse(PCI_IDS, read=read)
    assert reads == []  # loading keeps only the class tables
    assert db.device("8086", "10fb") == "82599ES 10-Gigabit SFI/SFP+ Network Connection"
    assert db.device("8086", "20b0") is None  # NVIDIA's device, not Intel's
    assert db.vendor("8086") == "Intel Corporation"
    assert db.vendor("abcd") is None and db.vendor("ABCD") is None
    assert db.vendor("../x") is None  # not an id: never looked up
    assert len(reads) == 3  # 8086:10fb, 8086:20b0 and abcd, once each (8086 came with its first device)


def test_an_unreadable_file_falls_back_to_ids_and_is_tried_again() -> None:
    calls: list[int] = []

    def read() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise OSError("gone")
        return PCI_IDS

    db = IdsDatabase.parse(PCI_IDS, read=read)
    assert db.lspci_vendor("8086") == "Vendor 8086"
    assert db.lspci_vendor("8086") == "Intel Corporation"


def test_names_of_a_new_pair_read_the_file_once() -> None:
    reads: list[int] = []

    def read() -> str:
        reads.append(1)
        return PCI_IDS

    db = IdsDatabase.parse(PCI_IDS, read=read)
    assert db.names("10de", "20b0") == ("NVIDIA Corporation", "GA100 [A100 SXM4 40GB]")
    assert db.lspci_vendor("10de") == "NVIDIA Corporation" and db.lspci_device("10de", "20b0").startswith("GA100")
    assert len(reads) == 1
