"""Kubernetes label selectors (matchLabels, matchExpressions: In, NotIn, Exists, DoesNotExist).

Takes any object with `match_labels` and `match_expressions` (the policy model's LabelSelector),
so this layer needs nothing from the policy layer. As in Tetragon, keys are matched as written:
a pod's labels are its own (`app`, never `k8s:app`) plus its namespace under
`k8s:io.kubernetes.pod.namespace` (the only `k8s:` key; without the prefix it is an ordinary
label the pod may or may not have). A container's labels for containerSelector are `name` (the
container name) and `repo` (its image repository, from the container status's imageID).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

NAMESPACE_LABEL = "k8s:io.kubernetes.pod.namespace"


def matches(sel: Any, labels: Mapping[str, str]) -> bool:
    """None matches everything; so does an empty selector ({})."""
    if sel is None:
        return True
    for k, v in sel.match_labels.items():
        if labels.get(k) != v:
            return False
    for r in sel.match_expressions:
        k = r.key
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
    """A pod's labels for podSelector: its own, and its namespace under NAMESPACE_LABEL (unless
    present already, as Tetragon's; a label key cannot hold the `:` anyway)."""
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
