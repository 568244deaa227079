from __future__ import annotations

import io
import json
from pathlib import Path

import yaml

from nodeagent.__main__ import main
from tests.support.sysfs_tree import SysfsTree


def _tree(tmp_path: Path) -> SysfsTree:
    tree = SysfsTree(tmp_path / "host")
    tree.pci("0000:00:1f.0", vendor="8086", device="8d44", cls="060100", driver="lpc_ich")
    tree.pci("0000:3b:00.0", vendor="10de", device="20b0", cls="030200", driver="nvidia", iommu_group=45)
    tree.pci("0000:00:14.0", vendor="8086", device="a36d", cls="0c0330", driver="xhci_hcd")
    tree.usb("1-2", vendor="0951", product="1666", devnum=4, controller="0000:00:14.0")
    return tree


def _run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    rc = main(list(argv), out=out, err=err)
    return rc, out.getvalue(), err.getvalue()


def test_json_output_holds_complete_objects(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    rc, out, _ = _run("discover", "--root", str(tree.base), "--node-name", "n1", "-o", "json")
    assert rc == 0
    doc = json.loads(out)
    assert set(doc) == {"pciDevices", "usbDevices"}
    names = [o["metadata"]["name"] for o in doc["pciDevices"]]
    assert names == ["n1-000000140", "n1-0000001f0", "n1-00003b000"]
    gpu = next(o for o in doc["pciDevices"] if o["status"]["address"] == "0000:3b:00.0")
    assert gpu["apiVersion"] == "devices.harvesterhci.io/v1beta1" and gpu["kind"] == "PCIDevice"
    assert gpu["metadata"]["labels"] == {"nodename": "n1"}
    assert doc["usbDevices"][0]["metadata"]["name"] == "n1-0951-1666-001004"


def test_table_output_looks_like_kubectl_get(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    rc, out, _ = _run("discover", "--root", str(tree.base), "--node-name", "n1")
    assert rc == 0
    lines = out.splitlines()
    assert lines[0].startswith("NAME ")
    for column in ("ADDRESS", "VENDOR ID", "DEVICE ID", "NODE NAME", "DESCRIPTION", "KERNEL DRIVER IN USE"):
        assert column in lines[0]
    lpc = next(line for line in lines if "0000:00:1f.0" in line)
    assert lpc.rstrip().endswith("yes")
    assert any(line.startswith("NAME") and "DEVICE PATH" in line for line in lines)
    assert "IOMMU GROUP" not in out


def test_wide_output_adds_iommu_group_resource_name_and_reasons(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    rc, out, _ = _run("discover", "--root", str(tree.base), "--node-name", "n1", "-o", "wide")
    assert rc == 0
    assert "IOMMU GROUP" in out and "RESOURCE NAME" in out and "REASONS" in out
    assert "nvidia.com/GA100_A100_SXM4_40GB" in out
    assert "is the LPC/ISA bridge" in out


def test_yaml_output_parses_to_the_json_document(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    _, as_json, _ = _run("discover", "--root", str(tree.base), "--node-name", "n1", "-o", "json")
    _, as_yaml, _ = _run("discover", "--root", str(tree.base), "--node-name", "n1", "-o", "yaml")
    assert yaml.safe_load(as_yaml) == json.loads(as_json)


def test_node_ip_marks_the_nic_that_carries_it(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    tree.pci("0000:18:00.0", vendor="8086", device="1572", cls="020000", driver="i40e")
    tree.net("ens5", pci="0000:18:00.0")
    tree.route("ens5", destination="172.16.0.0", mask="255.255.0.0")
    _, out, _ = _run("discover", "--root", str(tree.base), "--node-name", "n", "--node-ip", "172.16.1.2", "-o", "json")
    nic = next(o for o in json.loads(out)["pciDevices"] if o["status"]["address"] == "0000:18:00.0")
    assert nic["status"]["hostCriticalReasons"] == ["carries the node IP 172.16.1.2 via ens5"]


def test_a_missing_root_is_a_clear_error_with_status_2(tmp_path: Path) -> None:
    rc, out, err = _run("discover", "--root", str(tmp_path / "nope"))
    assert rc == 2 and out == ""
    assert "--root" in err and "nope" in err


def test_a_root_that_is_a_file_or_has_no_pci_bus_is_status_2(tmp_path: Path) -> None:
    afile = tmp_path / "file"
    afile.write_text("")
    assert _run("discover", "--root", str(afile))[0] == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, _, err = _run("discover", "--root", str(empty))
    assert rc == 2 and "/sys/bus/pci/devices" in err


def test_a_bad_node_ip_is_status_2(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    rc, _, err = _run("discover", "--root", str(tree.base), "--node-ip", "not-an-ip")
    assert rc == 2 and "--node-ip" in err


def test_the_node_name_defaults_to_the_host_name(tmp_path: Path) -> None:
    import socket

    tree = _tree(tmp_path)
    _, out, _ = _run("discover", "--root", str(tree.base), "-o", "json")
    assert json.loads(out)["pciDevices"][0]["status"]["nodeName"] == socket.gethostname()
