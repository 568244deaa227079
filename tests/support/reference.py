"""Runs the reference tools (lspci, lsusb) and parses their output, so tests compare discovery field by field.

Used by the replay tier (inside one umockdev replay), the live tier and the benchmark.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence

_LSUSB = re.compile(r"^Bus (\d{3}) Device (\d{3}): ID ([0-9a-f]{4}):([0-9a-f]{4}) ?(.*)$")


def run(argv: Sequence[str]) -> str:
    """stdout of a reference tool; its stderr (e.g. lspci's libkmod notice) is dropped."""
    return subprocess.run(list(argv), check=True, capture_output=True, text=True).stdout


def parse_vmm(text: str) -> dict[str, dict[str, str]]:
    """`lspci -vmm` records keyed by Slot."""
    records: dict[str, dict[str, str]] = {}
    for block in text.strip().split("\n\n"):
        rec: dict[str, str] = {}
        for line in block.splitlines():
            key, sep, value = line.partition(":\t")
            if sep:
                rec[key] = value
        if "Slot" in rec:
            records[rec["Slot"]] = rec
    return records


def parse_header_types(text: str) -> dict[str, int]:
    """Header type (config byte 0x0e) per function from `lspci -D -x`."""
    result: dict[str, int] = {}
    current: str | None = None
    for line in text.splitlines():
        if line and not line[0].isspace() and not line.startswith("00:") and " " in line and ":" in line[:14]:
            current = line.split(" ", 1)[0]
        elif current and line.startswith("00: "):
            result[current] = int(line.split()[15], 16)
    return result


def parse_lsusb(text: str) -> list[dict[str, str | int]]:
    devices: list[dict[str, str | int]] = []
    for line in text.splitlines():
        m = _LSUSB.match(line.strip())
        if m:
            devices.append(
                {"bus": int(m.group(1)), "devnum": int(m.group(2)), "vendor": m.group(3), "product": m.group(4),
                 "name": m.group(5).strip()}
            )
    return devices
