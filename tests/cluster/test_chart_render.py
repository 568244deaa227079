"""The charts as `helm lint` and `helm template` see them: every certificate mode, the main values, the values schema,
the CRDs (identical to crds/) and the RBAC (every granted verb against a reviewed list).

Needs only the helm binary of the cluster tier (no API server).
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.controlplane import Binaries

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "harvester-pcidevices-controller"
ROLES_CHART = REPO / "charts" / "pcidevices-rancher-roles"
NS = "harvester-system"
GROUP = "devices.harvesterhci.io"

Render = Callable[..., list[dict[str, Any]]]


def _helm(binaries: Binaries, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(binaries.helm), *args], capture_output=True, text=True, check=False, timeout=120)


@pytest.fixture(scope="module")
def render(binaries: Binaries) -> Render:
    def run(*sets: str, chart: Path = CHART) -> list[dict[str, Any]]:
        args = [a for s in sets for a in ("--set", s)]
        proc = _helm(binaries, "template", "pcidevices", str(chart), "--namespace", NS, *args)
        assert proc.returncode == 0, proc.stderr
        return [d for d in yaml.safe_load_all(proc.stdout) if d]

    return run


def _one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind} {name}: {len(found)} rendered"
    return found[0]


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def _rendered_configurations(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    kinds = ("ValidatingWebhookConfiguration", "MutatingWebhookConfiguration")
    return [d for d in docs if d["kind"] in kinds]


# -- lint and schema -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chart", [CHART, ROLES_CHART], ids=lambda p: p.name)
def test_helm_lint_strict_finds_nothing_to_complain_about(binaries: Binaries, chart: Path) -> None:
    proc = _helm(binaries, "lint", "--strict", str(chart))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[WARNING]" not in proc.stdout and "[ERROR]" not in proc.stdout, proc.stdout


@pytest.mark.parametrize(
    ("value", "complaint"),
    [
        ("certificates.mode=letsEncrypt", "/certificates/mode"),
        ("policy.resourceNames=shared", "/policy/resourceNames"),
        ("policy.completeGroups=always", "/policy/completeGroups"),
        ("webhook.replicas=0", "/webhook/replicas"),
        ("webhook.url=http://127.0.0.1:8443", "/webhook/url"),
        ("agent.kubeletDir=var/lib/kubelet", "/agent/kubeletDir"),
        ("imagee.tag=1", "imagee"),
        ("certificates.mode=secret", "/certificates/secret/name"),
    ],
)
def test_a_wrong_value_is_rejected_by_the_schema_with_its_path(binaries: Binaries, value: str, complaint: str) -> None:
    proc = _helm(binaries, "template", "pcidevices", str(CHART), "--namespace", NS, "--set", value)
    assert proc.returncode != 0
    assert "values don't meet the specifications of the schema" in proc.stderr
    assert complaint in proc.stderr, proc.stderr


def test_secret_mode_with_a_secret_name_and_ca_bundle_is_accepted(render: Render) -> None:
    docs = render("certificates.mode=secret", "certificates.secret.name=my-tls", "webhook.caBundle=Q0E=")
    for conf in _rendered_configurations(docs):
        assert {h["clientConfig"]["caBundle"] for h in conf["webhooks"]} == {"Q0E="}


# -- CRDs ------------------------------------------------------------------------------------------------------------


def test_chart_crds_are_the_crds_folder_plus_the_keep_policy(render: Render) -> None:
    rendered = {d["metadata"]["name"]: d for d in render() if d["kind"] == "CustomResourceDefinition"}
    source = {}
    for path in sorted((REPO / "crds").glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        source[doc["metadata"]["name"]] = doc
    assert set(rendered) == set(source) and len(source) == 4
    for name, crd in rendered.items():
        annotations = crd["metadata"].pop("annotations")
        assert annotations.pop("helm.sh/resource-policy") == "keep"
        assert annotations == source[name]["metadata"].get("annotations", {})
        source[name]["metadata"].pop("annotations", None)
        assert crd == source[name], f"{name} differs from crds/"


# -- certificate modes -----------------------------------------------------------------------------------------------


def test_self_signed_mode_lets_the_webhook_manage_its_secret_and_ca_bundle(render: Render) -> None:
    docs = render()
    container = _one(docs, "Deployment", "pcidevices-webhook")["spec"]["template"]["spec"]["containers"][0]
    env = _env(container)
    assert env["PCIDEVICES_WEBHOOK_MANAGE_CERTIFICATES"] == "true"
    assert env["PCIDEVICES_WEBHOOK_SECRET_NAME"] == "pcidevices-webhook-certs"
    assert not [d for d in docs if d["apiVersion"].startswith("cert-manager.io")]
    for conf in _rendered_configurations(docs):
        assert "annotations" not in conf["metadata"]
        assert all("caBundle" not in h["clientConfig"] for h in conf["webhooks"])  # upgrades keep the patched one
    role = _one(docs, "Role", "pcidevices-webhook")
    assert {"get", "update"} == {v for r in role["rules"] if r["resources"] == ["secrets"] for v in r["verbs"]}
    assert _one(docs, "Secret", "pcidevices-webhook-certs").get("data") is None  # the webhook fills it


def test_cert_manager_mode_issues_a_certificate_for_the_service_and_injects_its_ca(render: Render) -> None:
    docs = render("certificates.mode=certManager")
    cert = _one(docs, "Certificate", "pcidevices-webhook")
    assert "pcidevices-webhook.harvester-system.svc" in cert["spec"]["dnsNames"]
    assert cert["spec"]["issuerRef"] == {"kind": "Issuer", "name": "pcidevices-ca"}
    assert _one(docs, "Issuer", "pcidevices-ca")["spec"]["ca"]["secretName"] == "pcidevices-ca"
    for conf in _rendered_configurations(docs):
        assert conf["metadata"]["annotations"] == {"cert-manager.io/inject-ca-from": f"{NS}/pcidevices-webhook"}
    pod = _one(docs, "Deployment", "pcidevices-webhook")["spec"]["template"]["spec"]
    env = _env(pod["containers"][0])
    assert env["PCIDEVICES_WEBHOOK_MANAGE_CERTIFICATES"] == "false"
    assert {"name": "tls", "secret": {"secretName": cert["spec"]["secretName"]}} in pod["volumes"]
    role = _one(docs, "Role", "pcidevices-webhook")  # its device holds only: no Secret to manage
    assert [r["resources"] for r in role["rules"]] == [["leases"]]
    webhook_role = _one(docs, "ClusterRole", "pcidevices-webhook")
    assert not [r for r in webhook_role["rules"] if r["apiGroups"] == ["admissionregistration.k8s.io"]]


def test_cert_manager_mode_uses_a_given_issuer_instead_of_its_own_ca(render: Render) -> None:
    docs = render("certificates.mode=certManager", "certificates.certManager.issuerRef.kind=ClusterIssuer",
                  "certificates.certManager.issuerRef.name=corp-ca")  # fmt: skip
    assert _one(docs, "Certificate", "pcidevices-webhook")["spec"]["issuerRef"]["name"] == "corp-ca"
    assert [d["metadata"]["name"] for d in docs if d["kind"] in ("Issuer", "Certificate")] == ["pcidevices-webhook"]


def test_secret_mode_serves_from_the_given_secret(render: Render) -> None:
    docs = render("certificates.mode=secret", "certificates.secret.name=my-tls", "webhook.caBundle=Q0E=")
    pod = _one(docs, "Deployment", "pcidevices-webhook")["spec"]["template"]["spec"]
    assert {"name": "tls", "secret": {"secretName": "my-tls"}} in pod["volumes"]
    assert _env(pod["containers"][0])["PCIDEVICES_WEBHOOK_CERT_DIR"] == "/etc/pcidevices/tls"


def test_url_mode_points_every_webhook_at_the_url(render: Render) -> None:
    docs = render("webhook.url=https://127.0.0.1:9443")
    urls = {h["clientConfig"]["url"] for c in _rendered_configurations(docs) for h in c["webhooks"]}
    assert urls == {"https://127.0.0.1:9443/validate", "https://127.0.0.1:9443/mutate"}


# -- workloads -------------------------------------------------------------------------------------------------------


def test_the_webhook_runs_two_spread_non_root_replicas_on_a_read_only_root_with_probes(render: Render) -> None:
    docs = render()
    deploy = _one(docs, "Deployment", "pcidevices-webhook")
    pod = deploy["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert deploy["spec"]["replicas"] == 2
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
    assert "emptyDir" in next(v for v in pod["volumes"] if v["name"] == "tmp")
    assert _env(c)["TMPDIR"] == "/tmp"  # gunicorn's worker heartbeat files
    assert c["resources"]["requests"] and c["resources"]["limits"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert pod["topologySpreadConstraints"][0]["topologyKey"] == "kubernetes.io/hostname"
    pdb = _one(docs, "PodDisruptionBudget", "pcidevices-webhook")
    assert pdb["spec"]["selector"]["matchLabels"] == deploy["spec"]["selector"]["matchLabels"]
    assert pdb["spec"]["minAvailable"] == 1


def test_the_webhook_gets_its_connection_deadlines_and_bound_from_values(render: Render) -> None:
    from webhook.settings import WebhookSettings

    env = _env(_one(render(), "Deployment", "pcidevices-webhook")["spec"]["template"]["spec"]["containers"][0])
    defaults = WebhookSettings()
    assert float(env["PCIDEVICES_WEBHOOK_HANDSHAKE_TIMEOUT_S"]) == defaults.handshake_timeout_s
    assert float(env["PCIDEVICES_WEBHOOK_HEADER_TIMEOUT_S"]) == defaults.header_timeout_s
    assert float(env["PCIDEVICES_WEBHOOK_BODY_TIMEOUT_S"]) == defaults.body_timeout_s
    assert int(env["PCIDEVICES_WEBHOOK_MAX_CONNECTIONS"]) == defaults.max_connections
    changed = render("webhook.connections.headerTimeoutSeconds=3", "webhook.connections.maxConnections=512")
    env = _env(_one(changed, "Deployment", "pcidevices-webhook")["spec"]["template"]["spec"]["containers"][0])
    assert env["PCIDEVICES_WEBHOOK_HEADER_TIMEOUT_S"] == "3" and env["PCIDEVICES_WEBHOOK_MAX_CONNECTIONS"] == "512"


def test_the_webhook_network_policy_is_off_by_default_and_admits_only_the_listed_peers_on_its_port(
    render: Render, binaries: Binaries
) -> None:
    assert not [d for d in render() if d["kind"] == "NetworkPolicy"]
    docs = render("webhook.networkPolicy.enabled=true", "webhook.networkPolicy.from[0].ipBlock.cidr=10.0.0.0/24")
    policy = _one(docs, "NetworkPolicy", "pcidevices-webhook")
    deploy = _one(docs, "Deployment", "pcidevices-webhook")
    assert policy["metadata"]["namespace"] == NS
    assert policy["spec"]["podSelector"]["matchLabels"] == deploy["spec"]["selector"]["matchLabels"]
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 8443}]
    assert rule["from"] == [{"ipBlock": {"cidr": "10.0.0.0/24"}}]
    # enabled without peers would admit everyone on the port (an ingress rule without `from`): refused
    proc = _helm(binaries, "template", "p", str(CHART), "-n", NS, "--set", "webhook.networkPolicy.enabled=true")
    assert proc.returncode != 0 and "webhook.networkPolicy.from" in proc.stderr


def test_policy_values_reach_the_webhook_and_the_agent(render: Render) -> None:
    docs = render("policy.enforce.claim=false", "policy.resourceNames=pooled")
    webhook_env = _env(_one(docs, "Deployment", "pcidevices-webhook")["spec"]["template"]["spec"]["containers"][0])
    assert webhook_env["PCIDEVICES_POLICY_ENFORCE_CLAIM"] == "false"
    assert webhook_env["PCIDEVICES_POLICY_AGENT_USERNAMES"] == f"system:serviceaccount:{NS}:pcidevices-agent"
    assert webhook_env["PCIDEVICES_POLICY_CONTROLLER_USERNAMES"] == f"system:serviceaccount:{NS}:pcidevices-controller"
    agent_env = _env(_one(docs, "DaemonSet", "pcidevices-agent")["spec"]["template"]["spec"]["containers"][0])
    assert agent_env["RESOURCE_NAMES"] == "pooled"


def test_the_controller_has_its_own_service_account_and_lease(render: Render) -> None:
    docs = render()
    pod = _one(docs, "Deployment", "pcidevices-controller")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "pcidevices-controller"
    role = _one(docs, "Role", "pcidevices-controller")
    leases = [r for r in role["rules"] if r["resources"] == ["leases"]]
    assert any(r.get("resourceNames") == ["pcidevices-controller"] for r in leases)
    assert not [d for d in render("controller.enabled=false") if "controller" in d["metadata"]["name"]]


def test_the_agent_is_privileged_on_the_host_network_with_only_the_host_paths_it_uses(render: Render) -> None:
    ds = _one(render(), "DaemonSet", "pcidevices-agent")
    pod = ds["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert pod["hostNetwork"] is True and c["securityContext"]["privileged"] is True
    assert pod["priorityClassName"] == "system-node-critical"
    assert {t["key"] for t in pod["tolerations"]} >= {"node-role.kubernetes.io/control-plane"}
    host_paths = sorted(v["hostPath"]["path"] for v in pod["volumes"])
    assert host_paths == sorted(
        ["/proc", "/sys", "/dev", "/lib/modules", "/var/lib/kubelet/device-plugins",
         "/var/lib/kubelet/pod-resources", "/run/udev", "/var/lib/kubelet/plugins_registry",
         "/var/lib/kubelet/plugins/pci.devices.harvesterhci.io", "/var/lib/kubelet/plugins/usb.devices.harvesterhci.io",
         "/var/run/cdi"]
    )  # fmt: skip
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert mounts["host-proc"] == _env(c)["HOST_PROC"] == "/host/proc"
    assert _env(c)["NODE_NAME"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}


def test_the_agent_may_record_events_in_default_and_the_release_namespace_only(render: Render) -> None:
    docs = render("agent.extraEventNamespaces={kubevirt}")
    roles = [d for d in docs if d["kind"] == "Role" and d["metadata"]["name"] == "pcidevices-agent"]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["default", NS, "kubevirt"]
    bindings = [d for d in docs if d["kind"] == "RoleBinding" and d["metadata"]["name"] == "pcidevices-agent"]
    assert {b["subjects"][0]["namespace"] for b in bindings} == {NS}


# -- RBAC ------------------------------------------------------------------------------------------------------------

# Every (role, apiGroup, resource, resourceName, verb) the chart grants, reviewed. A new grant must be added here.
_DEV = ("pcidevices", "usbdevices")
_CLAIMS = ("pcideviceclaims", "usbdeviceclaims")
_READ = ("get", "list", "watch")
_CRUD = ("get", "list", "watch", "create", "update", "patch", "delete")
_WRITE = ("get", "list", "watch", "update", "patch")


def _grants(role: str, group: str, resources: tuple[str, ...], verbs: tuple[str, ...], name: str = "") -> set[Any]:
    return {(role, group, r, name, v) for r in resources for v in verbs}


REVIEWED = (
    # webhook: its cache, SubjectAccessReviews, its Secret and the caBundle of its own configurations
    _grants("ClusterRole/pcidevices-webhook", GROUP, _DEV + _CLAIMS, _READ)
    | _grants("ClusterRole/pcidevices-webhook", "", ("nodes",), _READ)
    | _grants("ClusterRole/pcidevices-webhook", "kubevirt.io",
              ("virtualmachines", "virtualmachineinstances", "virtualmachineinstancereplicasets"), _READ)
    | _grants("ClusterRole/pcidevices-webhook", "pool.kubevirt.io", ("virtualmachinepools",), _READ)
    | _grants("ClusterRole/pcidevices-webhook", "instancetype.kubevirt.io",
              ("virtualmachineinstancetypes", "virtualmachineclusterinstancetypes"), _READ)
    | _grants("ClusterRole/pcidevices-webhook", "snapshot.kubevirt.io",
              ("virtualmachinerestores", "virtualmachinesnapshots", "virtualmachinesnapshotcontents"), _READ)
    | _grants("ClusterRole/pcidevices-webhook", "clone.kubevirt.io", ("virtualmachineclones",), _READ)
    | _grants("ClusterRole/pcidevices-webhook", "authorization.k8s.io", ("subjectaccessreviews",), ("create",))
    | _grants("ClusterRole/pcidevices-webhook", "admissionregistration.k8s.io", ("validatingwebhookconfigurations",),
              ("get", "patch"), "pcidevices-validating")
    | _grants("ClusterRole/pcidevices-webhook", "admissionregistration.k8s.io", ("mutatingwebhookconfigurations",),
              ("get", "patch"), "pcidevices-mutating")
    | _grants("Role/pcidevices-webhook", "", ("secrets",), ("get", "update"), "pcidevices-webhook-certs")
    | _grants("Role/pcidevices-webhook", "coordination.k8s.io", ("leases",), ("get", "create", "update"))
    # agent: device objects, claim finalizers and status, the KubeVirt CR (all node-restricted by the webhook)
    | _grants("ClusterRole/pcidevices-agent", GROUP, _DEV, _CRUD)
    | _grants("ClusterRole/pcidevices-agent", GROUP, tuple(f"{r}/status" for r in _DEV + _CLAIMS), ("update", "patch"))
    | _grants("ClusterRole/pcidevices-agent", GROUP, _CLAIMS, _WRITE)
    | _grants("ClusterRole/pcidevices-agent", "kubevirt.io", ("kubevirts",), _WRITE)
    | _grants("ClusterRole/pcidevices-agent", "", ("nodes",), _READ)
    # agent, read-only: what the offering gate lists and the allocation audit reads (issue 21)
    | _grants("ClusterRole/pcidevices-agent", "", ("pods",), ("get", "list"))
    | _grants("ClusterRole/pcidevices-agent", "kubevirt.io", ("virtualmachineinstances",), ("get", "list"))
    | _grants("ClusterRole/pcidevices-agent", "kubevirt.io",
              ("virtualmachines", "virtualmachineinstancereplicasets"), ("list",))
    | _grants("ClusterRole/pcidevices-agent", "pool.kubevirt.io", ("virtualmachinepools",), ("list",))
    | _grants("ClusterRole/pcidevices-agent", "instancetype.kubevirt.io",
              ("virtualmachineinstancetypes", "virtualmachineclusterinstancetypes"), ("list",))
    | _grants("Role/pcidevices-agent", "", ("events",), ("create", "patch"))
    # DRA (issue 18): the webhook reads DeviceClasses and templates; the agent writes its node's ResourceSlices
    # (node-restricted by the webhook, A10d), reads the claims it prepares and asks the last gate's question
    | _grants("ClusterRole/pcidevices-webhook", "resource.k8s.io", ("deviceclasses", "resourceclaimtemplates"), _READ)
    | _grants("ClusterRole/pcidevices-agent", "resource.k8s.io", ("resourceslices",), _CRUD)
    | _grants("ClusterRole/pcidevices-agent", "resource.k8s.io", ("resourceclaims",), ("get",))
    | _grants("ClusterRole/pcidevices-agent", "authorization.k8s.io", ("subjectaccessreviews",), ("create",))
    # cluster controller: claims, reads, its Lease, Events
    | _grants("ClusterRole/pcidevices-controller", GROUP, _CLAIMS, _CRUD)
    | _grants("ClusterRole/pcidevices-controller", GROUP, _DEV, _READ)
    | _grants("ClusterRole/pcidevices-controller", "", ("nodes",), _READ)
    | _grants("Role/pcidevices-controller", "coordination.k8s.io", ("leases",), ("create",))
    | _grants("Role/pcidevices-controller", "coordination.k8s.io", ("leases",), ("get", "update"),
              "pcidevices-controller")
    | _grants("Role/pcidevices-controller-events", "", ("events",), ("create", "patch"))
    # people
    | _grants("ClusterRole/pcidevices-admin", GROUP, _DEV, _READ + ("update", "claim", "use", "release"))
    | _grants("ClusterRole/pcidevices-admin", GROUP, _CLAIMS, _CRUD)
    | _grants("ClusterRole/pcidevices-user", GROUP, _DEV, _READ + ("use",))
    | _grants("ClusterRole/pcidevices-user", GROUP, _CLAIMS, _READ)
)  # fmt: skip


def _granted(docs: list[dict[str, Any]]) -> set[Any]:
    out = set()
    for d in docs:
        if d["kind"] not in ("ClusterRole", "Role", "RoleTemplate"):
            continue
        for rule in d["rules"]:
            for group in rule["apiGroups"]:
                for res in rule["resources"]:
                    for name in rule.get("resourceNames") or [""]:
                        for verb in rule["verbs"]:
                            out.add((f"{d['kind']}/{d['metadata']['name']}", group, res, name, verb))
    return out


def test_every_granted_verb_is_in_the_reviewed_list_and_none_is_missing(render: Render) -> None:
    granted = _granted(render())
    assert granted - REVIEWED == set(), "grants nobody reviewed"
    assert REVIEWED - granted == set(), "reviewed grants the chart no longer makes"


def test_no_role_uses_wildcards_or_reaches_into_pods(render: Render) -> None:
    for mode in ("selfSigned", "certManager"):
        for role, group, res, name, verb in _granted(render(f"certificates.mode={mode}")):
            assert "*" not in (group, res, name, verb)
            assert not res.startswith("pods/")  # no exec, attach, log, eviction, ...
            if res == "pods":  # only the agent reads them (offering gate, allocation audit), and writes none
                assert role == "ClusterRole/pcidevices-agent" and verb in ("get", "list")
            if res == "secrets":  # only the webhook's own Secret
                assert name == "pcidevices-webhook-certs"


def test_rancher_role_templates_grant_what_the_chart_user_roles_grant(render: Render) -> None:
    templates = {(g[0].split("/")[1], *g[1:]) for g in _granted(render(chart=ROLES_CHART))}
    roles = {(g[0].split("/")[1], *g[1:]) for g in _granted(render())}
    for name in ("pcidevices-admin", "pcidevices-user"):
        assert {g for g in templates if g[0] == name} == {g for g in roles if g[0] == name}
    project = {g[1:] for g in templates if g[0] == "pcidevices-project-user"}
    assert project == {(GROUP, r, "", "use") for r in _DEV}


# -- settings: what the chart passes is what the programs read -------------------------------------------------------


def test_the_chart_defaults_give_the_webhook_exactly_the_policy_defaults(render: Render) -> None:
    from policy.settings import PolicySettings

    # the takeover identity is the one difference: trusted only while the chart runs the takeover
    env = _env(_one(render("takeover.enabled=true"), "Deployment", "pcidevices-webhook")["spec"]["template"]["spec"][
        "containers"][0])  # fmt: skip
    prefix = "PCIDEVICES_POLICY_"
    policy = {k[len(prefix) :]: v for k, v in env.items() if k.startswith(prefix)}
    assert PolicySettings.from_mapping(policy) == PolicySettings()
    assert set(policy) == {f.upper() for f in PolicySettings.__dataclass_fields__}  # every setting is a value


def test_every_setting_the_chart_passes_is_one_the_program_reads(render: Render) -> None:
    from webhook.controller.__main__ import ControllerSettings
    from webhook.settings import WebhookSettings

    docs = render()
    webhook_env = _env(_one(docs, "Deployment", "pcidevices-webhook")["spec"]["template"]["spec"]["containers"][0])
    for name in webhook_env:
        if name.startswith("PCIDEVICES_WEBHOOK_"):
            assert name.removeprefix("PCIDEVICES_WEBHOOK_").lower() in WebhookSettings.__dataclass_fields__, name
    controller = _one(docs, "Deployment", "pcidevices-controller")["spec"]["template"]["spec"]["containers"][0]
    for name in _env(controller):
        if name.startswith("PCIDEVICES_CONTROLLER_"):
            assert name.removeprefix("PCIDEVICES_CONTROLLER_").lower() in ControllerSettings.__dataclass_fields__, name
    agent_source = (REPO / "nodeagent" / "settings.py").read_text()
    agent = _one(docs, "DaemonSet", "pcidevices-agent")["spec"]["template"]["spec"]["containers"][0]
    for name in _env(agent):
        assert f'"{name}"' in agent_source, f"the agent does not read {name}"


def test_the_image_has_the_entry_points_the_chart_runs(render: Render) -> None:
    import tomllib

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    docs = render()
    for kind, name in (("Deployment", "pcidevices-webhook"), ("Deployment", "pcidevices-controller"),
                       ("DaemonSet", "pcidevices-agent")):  # fmt: skip
        command = _one(docs, kind, name)["spec"]["template"]["spec"]["containers"][0]["command"]
        assert command[0] in scripts, f"{kind} {name} runs {command[0]}, which pyproject.toml does not install"
    containerfile = (REPO / "Containerfile").read_text()
    assert "pci.ids" in containerfile and "usb.ids" in containerfile and "USER 65532" in containerfile
    assert 'python -c "import nodeagent.sysfs._pcifast"' in containerfile  # the image's agent scans in C


def test_the_takeover_identity_is_trusted_only_while_the_chart_runs_the_takeover(render: Render) -> None:
    for enabled, trusted in (("false", ""), ("true", "system:serviceaccount:harvester-system:pcidevices-takeover")):
        docs = render(f"takeover.enabled={enabled}")
        for workload in ("pcidevices-webhook", "pcidevices-controller"):
            env = _env(_one(docs, "Deployment", workload)["spec"]["template"]["spec"]["containers"][0])
            assert env["PCIDEVICES_POLICY_MIGRATION_USERNAMES"] == trusted, (workload, enabled)
        accounts = [d["metadata"]["name"] for d in docs if d["kind"] == "ServiceAccount"]
        assert ("pcidevices-takeover" in accounts) == (enabled == "true")
