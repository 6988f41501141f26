"""Kubernetes label selectors (matchLabels, matchExpressions: In, NotIn, Exists, DoesNotExist).

Takes any object with `match_labels` and `match_expressions` (the policy model's LabelSelector),
so this layer needs nothing from the policy layer. As in Tetragon, keys may carry a `k8s:`
prefix, and a pod's labels include `io.kubernetes.pod.namespace` (its namespace). A container's
labels for containerSelector are `name` (the container name) and `repo` (its image repository,
from the container status's imageID).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

NAMESPACE_LABEL = "io.kubernetes.pod.namespace"


def _key(k: str) -> str:
    return k[4:] if k.startswith("k8s:") else k


def matches(sel: Any, labels: Mapping[str, str]) -> bool:
    """None matches everything; so does an empty selector ({})."""
    if sel is None:
        return True
    for k, v in sel.match_labels.items():
        if labels.get(_key(k)) != v:
            return False
    for r in sel.match_expressions:
        k = _key(r.key)
        if r.operator == "In":
            if labels.get(k) not in r.values:
                return False
        elif r.operator == "NotIn":
            if k in labels and labels[k] in r.values:
                return False
        elif r.operator == "Exists":
            if k not in labels:
                return False
        elif r.operator == "DoesNotExist":
            if k in labels:
                return False
        else:
            return False  # validation refuses other operators before a policy gets here
    return True


def pod_labels(namespace: str, labels: Mapping[str, str]) -> dict[str, str]:
    """A pod's labels for podSelector: its own, and its namespace's label unless the pod has
    that label itself (then its own value stays, as in Tetragon)."""
    return {NAMESPACE_LABEL: namespace, **labels}


def image_repo(image_id: str) -> str:
    """The repository of a container's image, as Tetragon reads it from the container status's
    imageID: `registry/repo@sha256:...` -> `registry/repo`; an imageID without exactly one `@`
    (a bare `sha256:...`, the image ran by its id) has none: ""."""
    parts = image_id.split("@")
    return parts[0] if len(parts) == 2 else ""


def container_labels(name: str, image_id: str) -> dict[str, str]:
    """containerSelector's keys: `name` (the container's name), `repo` (from its imageID)."""
    return {"name": name, "repo": image_repo(image_id)}
