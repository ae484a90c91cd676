"""A minimal kustomize renderer for the features deploy/k8s uses (resources, namespace, images,
JSON6902 patches), so the manifests can be validated where no `kubectl`/`kustomize` binary exists.
Where `kubectl` exists, tests/ops/test_k8s.py checks this renderer against `kubectl kustomize`.
"""
from __future__ import annotations

import copy
from pathlib import Path

import yaml

CLUSTER_SCOPED = {"Namespace", "PriorityClass", "ClusterRole", "ClusterRoleBinding",
                  "CustomResourceDefinition", "StorageClass", "PersistentVolume"}
SUPPORTED_KEYS = {"apiVersion", "kind", "namespace", "resources", "images", "patches"}


def render(directory: Path) -> list[dict]:
    directory = Path(directory)
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unsupported = set(kustomization) - SUPPORTED_KEYS
    if unsupported:
        raise NotImplementedError(f"{directory}: kustomize_lite does not support {sorted(unsupported)}")
    docs: list[dict] = []
    for resource in kustomization.get("resources", []):
        path = directory / resource
        if path.is_dir():
            docs += render(path)
        else:
            docs += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    docs = copy.deepcopy(docs)
    namespace = kustomization.get("namespace")
    for doc in docs:
        if namespace and doc["kind"] not in CLUSTER_SCOPED:
            doc["metadata"]["namespace"] = namespace
    for image in kustomization.get("images", []):
        for doc in docs:
            for container in _containers(doc):
                name, _, tag = container["image"].partition(":")
                if name == image["name"]:
                    container["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag)}"
    for patch in kustomization.get("patches", []):
        target = patch["target"]
        matched = [d for d in docs if d["kind"] == target["kind"] and d["metadata"]["name"] == target["name"]]
        if not matched:
            raise ValueError(f"{directory}: patch target {target} matches nothing")
        for doc in matched:
            for op in yaml.safe_load(patch["patch"]):
                _apply(doc, op)
    return docs


def _containers(doc: dict) -> list[dict]:
    spec = doc.get("spec", {}).get("template", {}).get("spec", {})
    return spec.get("containers", []) + spec.get("initContainers", [])


def _apply(doc: dict, op: dict) -> None:
    parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].lstrip("/").split("/")]
    parent = doc
    for part in parts[:-1]:
        parent = parent[int(part)] if isinstance(parent, list) else parent[part]
    last = parts[-1]
    key = int(last) if isinstance(parent, list) and last != "-" else last
    if op["op"] == "remove":
        del parent[key]
    elif op["op"] == "replace":
        if isinstance(parent, dict) and key not in parent:
            raise KeyError(f"replace of missing path {op['path']}")
        parent[key] = op["value"]
    elif op["op"] == "add":
        if isinstance(parent, list):
            parent.append(op["value"]) if key == "-" else parent.insert(key, op["value"])
        else:
            parent[key] = op["value"]
    else:
        raise NotImplementedError(op["op"])
