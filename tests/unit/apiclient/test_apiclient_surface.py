"""The package's public surface: what `import apiclient` offers, and what it costs a process that only names kinds."""

from __future__ import annotations

import subprocess
import sys

import apiclient


def test_every_public_name_exists_and_is_listed_once() -> None:
    assert len(set(apiclient.__all__)) == len(apiclient.__all__)
    assert all(hasattr(apiclient, name) for name in apiclient.__all__)


def test_naming_kinds_imports_no_http_client_or_yaml() -> None:
    probe = "import sys, apiclient; print(sorted(m for m in sys.modules if m.split('.')[0] in ('urllib3', 'yaml')))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_resource_knows_its_paths() -> None:
    assert apiclient.LEASES.path("l", "ns") == "/apis/coordination.k8s.io/v1/namespaces/ns/leases/l"
    assert apiclient.PCIDEVICECLAIMS.path("c", subresource="status").endswith("/pcideviceclaims/c/status")
    assert apiclient.Resource.of("v1", "secrets", namespaced=True).path(None, "ns") == "/api/v1/namespaces/ns/secrets"
