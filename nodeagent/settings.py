"""AgentSettings: everything the agent is configured with, read once from the environment by `from_env`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from nodeagent.reconcile.plan import ResourceNameMode

_MODES = ("perDevice", "pooled")
_TRUE = ("true", "1", "yes")
_FALSE = ("false", "0", "no", "")

LABEL_OBSERVE_ONLY = "devices.harvesterhci.io/observe-only"
"""Node label: with value "true" the agent of that node runs in observe mode, whatever its own setting says."""


@dataclass(frozen=True)
class AgentSettings:
    node_name: str
    namespace: str = "harvester-system"
    root: str = "/"
    proc: str | None = None
    node_ip: str | None = None
    kubeconfig: Path | None = None
    kubelet_dir: str = "/var/lib/kubelet"
    resource_names: ResourceNameMode = "perDevice"
    resync_s: float = 300.0
    watch_timeout_s: int = 300
    health_host: str = "0.0.0.0"
    health_port: int = 8089
    pci_ids: str | None = None
    usb_ids: str | None = None
    device_plugins: bool = True
    udev: bool = True
    kubevirt_namespace: str | None = None
    allocations_poll_s: float = 5.0
    observe_only: bool = False
    """Observe mode: discover and publish, never write to sysfs or /dev (no bind, release, chown, modprobe)."""
    dra: bool = False
    """Dynamic Resource Allocation (docs/dra.md): publish claims with spec.offer: DRA in ResourceSlices and prepare
    them for the kubelet through CDI."""
    cdi_dir: str = "/var/run/cdi"

    @property
    def plugin_dir(self) -> str:
        return os.path.join(self.kubelet_dir, "device-plugins")

    @property
    def pod_resources_socket(self) -> str:
        return os.path.join(self.kubelet_dir, "pod-resources", "kubelet.sock")

    @property
    def plugins_registry(self) -> str:
        """Where the kubelet's plugin watcher looks for registration sockets (DRA)."""
        return os.path.join(self.kubelet_dir, "plugins_registry")

    def dra_plugin_dir(self, driver: str) -> str:
        """The folder of one DRA driver's kubelet-facing socket."""
        return os.path.join(self.kubelet_dir, "plugins", driver)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> AgentSettings:
        """NODE_NAME (required), POD_NAMESPACE, HOST_ROOT, HOST_PROC, NODE_IP, KUBECONFIG, KUBELET_DIR,
        RESOURCE_NAMES (perDevice|pooled), RESYNC_SECONDS, HEALTH_PORT, PCI_IDS, USB_IDS, KUBEVIRT_NAMESPACE (default:
        search every namespace), OBSERVE_ONLY (true|false), DRA (true|false), CDI_DIR; ValueError when invalid."""
        node = env.get("NODE_NAME", "").strip()
        if not node:
            raise ValueError("NODE_NAME must be set (the downward API's spec.nodeName)")
        mode = env.get("RESOURCE_NAMES", "perDevice")
        if mode not in _MODES:
            raise ValueError(f"RESOURCE_NAMES must be one of {', '.join(_MODES)}; got {mode!r}")
        observe = env.get("OBSERVE_ONLY", "false").strip().lower()
        if observe not in _TRUE + _FALSE:
            raise ValueError(f"OBSERVE_ONLY must be true or false; got {observe!r}")
        dra = env.get("DRA", "false").strip().lower()
        if dra not in _TRUE + _FALSE:
            raise ValueError(f"DRA must be true or false; got {dra!r}")
        kubeconfig = env.get("KUBECONFIG")
        return cls(
            node_name=node,
            namespace=env.get("POD_NAMESPACE", "harvester-system"),
            root=env.get("HOST_ROOT", "/"),
            proc=env.get("HOST_PROC") or None,
            node_ip=env.get("NODE_IP") or None,
            kubeconfig=Path(kubeconfig) if kubeconfig else None,
            kubelet_dir=env.get("KUBELET_DIR", "/var/lib/kubelet"),
            resource_names=cast(ResourceNameMode, mode),
            resync_s=float(env.get("RESYNC_SECONDS", "300")),
            health_port=int(env.get("HEALTH_PORT", "8089")),
            pci_ids=env.get("PCI_IDS") or None,
            usb_ids=env.get("USB_IDS") or None,
            kubevirt_namespace=env.get("KUBEVIRT_NAMESPACE") or None,
            observe_only=observe in _TRUE,
            dra=dra in _TRUE,
            cdi_dir=env.get("CDI_DIR") or "/var/run/cdi",
        )
