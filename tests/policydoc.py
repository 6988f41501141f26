"""A TracingPolicy document for tests: its name and its spec, written as YAML at any
indentation (dedented and put under spec:). Host tests, the VM tier and the shared
enforcement cases write their policies with it."""
from __future__ import annotations

import textwrap


def policy(name: str, spec: str) -> str:
    return (f"apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata:\n  name: {name}\nspec:\n"
            + textwrap.indent(textwrap.dedent(spec).strip("\n"), "  ") + "\n")
