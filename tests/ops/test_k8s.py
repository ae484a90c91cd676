"""deploy/k8s: every rendered manifest validates against the Kubernetes schemas (kubernetes-validate,
strict), and the product's requirements hold: GPU resources, probes, PDB, PriorityClass, HPA 3 -> 12 on
latency through prometheus-adapter."""
from __future__ import annotations

import shutil
import subprocess

import kubernetes_validate
import pytest
import yaml

from shared.ops_cli import APPS
from tests.ops.kustomize_lite import render

K8S_VERSION = "1.32"
TARGETS = ["overlays/production", "overlays/cpu-dev", "monitoring"]


@pytest.fixture(scope="module")
def rendered(repo) -> dict[str, list[dict]]:
    return {target: render(repo / "deploy/k8s" / target) for target in TARGETS}


def by_kind(docs, kind, name=None):
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert found, f"no {kind} {name or ''}"
    return found if name is None else found[0]


@pytest.mark.parametrize("target", TARGETS)
def test_every_manifest_validates_strictly(rendered, target):
    errors = []
    for doc in rendered[target]:
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{doc['kind']}/{doc['metadata']['name']}: {exc.message}")
    assert not errors, "\n".join(errors)


def test_validation_catches_a_broken_manifest(rendered):
    deployment = yaml.safe_load(yaml.safe_dump(by_kind(rendered["overlays/production"], "Deployment", "model-server")))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProb"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="no kubectl: kustomize_lite alone renders")
@pytest.mark.parametrize("target", TARGETS)
def test_lite_renderer_matches_kubectl_kustomize(repo, rendered, target):
    out = subprocess.run(["kubectl", "kustomize", str(repo / "deploy/k8s" / target)], capture_output=True,
                         text=True, timeout=60, check=True).stdout
    key = lambda d: (d["kind"], d["metadata"]["name"])  # noqa: E731
    assert sorted(yaml.safe_load_all(out), key=key) == sorted(rendered[target], key=key)


def test_model_server_resources_probes_and_priority(rendered):
    docs = rendered["overlays/production"]
    deployment = by_kind(docs, "Deployment", "model-server")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert container["resources"]["requests"]["memory"] == "16Gi"
    assert container["resources"]["limits"] == {"nvidia.com/gpu": 1, "memory": "32Gi"}
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["args"][0] == "serve"
    assert pod["priorityClassName"] == "dsv-core"
    assert by_kind(docs, "PriorityClass", "dsv-core")["value"] > by_kind(docs, "PriorityClass", "dsv-standard")["value"]
    assert "topology.kubernetes.io/zone" in {c["topologyKey"] for c in pod["topologySpreadConstraints"]}
    # Recovery levels 2/3: evicted from a failed node after 30 s (default 300 s would break the 90 s RTO).
    evict = {t["key"]: t.get("tolerationSeconds") for t in pod["tolerations"] if t["effect"] == "NoExecute"}
    assert evict == {"node.kubernetes.io/unreachable": 30, "node.kubernetes.io/not-ready": 30}
    pdb = by_kind(docs, "PodDisruptionBudget", "model-server")
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert 1 <= pdb["spec"]["minAvailable"] < deployment["spec"]["replicas"]
    assert container["image"].startswith("registry.example.com/dsv/model-server:")


def test_hpa_scales_3_to_12_on_300ms_latency_from_the_adapter_rule(rendered, repo):
    hpa = by_kind(rendered["overlays/production"], "HorizontalPodAutoscaler", "model-server")
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 12)
    assert hpa["spec"]["scaleTargetRef"]["name"] == "model-server"
    metric = hpa["spec"]["metrics"][0]["pods"]
    assert metric["target"] == {"type": "AverageValue", "averageValue": "300m"}
    rules = yaml.safe_load((repo / "deploy/prometheus/adapter-rules.yml").read_text())["rules"]
    assert metric["metric"]["name"] in {r["name"]["as"] for r in rules}
    # The in-cluster ConfigMap carries the same rule as deploy/prometheus/adapter-rules.yml.
    config_map = by_kind(rendered["monitoring"], "ConfigMap", "dsv-prometheus-adapter")
    assert yaml.safe_load(config_map["data"]["config.yaml"]) == {"rules": rules}
    assert config_map["metadata"]["namespace"] == "monitoring"


def test_apps_have_service_and_dashboard_with_probes(rendered):
    docs = rendered["overlays/production"]
    for app in APPS:
        pod = by_kind(docs, "Deployment", app)["spec"]["template"]["spec"]
        containers = {c["name"]: c for c in pod["containers"]}
        assert containers["service"]["args"][:2] == [app, "service"]
        assert containers["dashboard"]["args"][:2] == ["run", f"apps/{app}/dashboard.py"]
        for container in containers.values():
            assert "readinessProbe" in container and "livenessProbe" in container
    assert by_kind(docs, "Deployment", "finance")["spec"]["template"]["spec"]["priorityClassName"] == "dsv-core"


def test_every_container_command_exists_in_the_project(rendered, check_command):
    problems = []
    for doc in rendered["overlays/production"]:
        for container in doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
            why = check_command(container["command"] + container.get("args", []))
            if why:
                problems.append(f"{doc['metadata']['name']}/{container['name']}: {why}")
    assert not problems, "\n".join(problems)


def test_cpu_overlay_drops_the_gpu(rendered):
    docs = rendered["overlays/cpu-dev"]
    container = by_kind(docs, "Deployment", "model-server")["spec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in container["resources"]["requests"]
    pod = by_kind(docs, "Deployment", "model-server")["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in {t["key"] for t in pod["tolerations"]}
    assert by_kind(docs, "HorizontalPodAutoscaler", "model-server")["spec"]["maxReplicas"] == 2
    assert all(d["metadata"].get("namespace") == "dsv" for d in docs
               if d["kind"] not in ("Namespace", "PriorityClass"))
