"""TracingPolicy texts the kernel tests share: a kprobe on sys_openat (a syscall: its tracepoint
on this host) whose selectors match the path it opens."""
from __future__ import annotations

from pathlib import Path


def openat_selector(path: str | Path, binary: str | Path | None = None, label: str | None = None,
                    action: str | None = None, index: int = 1) -> str:
    """One selector: the path Equal `path`, and optionally a label, matchBinaries In [`binary`]
    and one action (`action` is the action's mapping without braces: "action: Sigkill").
    `index`: the argument matchArgs names (another than the path's 1: a policy to refuse)."""
    lines = [f"label: {label}"] if label else []
    lines.append(f'matchArgs: [{{index: {index}, operator: Equal, values: ["{path}"]}}]')
    if binary is not None:
        lines.append(f'matchBinaries: [{{operator: In, values: ["{binary}"]}}]')
    if action is not None:
        lines.append(f"matchActions: [{{{action}}}]")
    return "    - " + "".join(ln + "\n" for ln in lines).replace("\n", "\n      ").rstrip(" ")


def openat_policy(name: str, *selectors: str, more: str = "") -> str:
    """A TracingPolicy `name`: sys_openat with its path (index 1) as a string, these selectors
    (openat_selector), then `more` (further hooks under spec, indented by two)."""
    return (f"apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata: {{name: {name}}}\nspec:\n"
            "  kprobes:\n  - call: sys_openat\n    syscall: true\n    args: [{index: 1, type: string}]\n"
            "    selectors:\n" + "".join(selectors) + more)
