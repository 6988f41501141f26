"""Check the validator against Tetragon's published CRD schema: `python -m tests.crdcheck CRD.yaml`
(cilium.io_tracingpolicies.yaml from a Tetragon checkout; it is not part of this repository).

For every enum of the schema, each value is put in a minimal policy that is otherwise valid
and run through the front end (parse, validate) and the offline compile (what Vigil cannot do
on any kernel). A value the schema allows must be accepted, or refused by a message that says
Vigil is stricter on purpose and why (it names Vigil). Exit 1 on anything else."""
from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import yaml

from vigil.policy import check_text
from vigil.policy.compile import unsupported

BASE = "apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata:\n  name: crd\nspec:\n"


def enums(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, list[Any]]]:
    if "enum" in schema:
        yield path, schema["enum"]
    for name, sub in schema.get("properties", {}).items():
        yield from enums(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from enums(schema["items"], f"{path}[]")


# a minimal policy around each enum, by the field's path in the schema (spec-relative); a
# value of the operator/type enums gets the argument or hook it needs to be meaningful
ARG_FOR_OPERATOR = {
    "Equal": "string", "NotEqual": "string", "Prefix": "string", "NotPrefix": "string", "Postfix": "string",
    "NotPostfix": "string", "SubString": "string", "SubStringIgnCase": "string", "GreaterThan": "int",
    "LessThan": "int", "GT": "int", "LT": "int", "Mask": "int", "InRange": "int", "NotInRange": "int",
    "InMap": "int", "NotInMap": "int", "CelExpr": "int", "FileType": "file", "NotFileType": "file",
    "CapabilitiesGained": "kernel_cap_t",
}
VALUE_FOR_OPERATOR = {
    "GreaterThan": "1", "LessThan": "1", "GT": "1", "LT": "1", "Mask": "1", "InRange": "1:2",
    "NotInRange": "1:2", "InMap": "1", "NotInMap": "1", "SPort": "80", "NotSPort": "80", "DPort": "80",
    "NotDPort": "80", "SAddr": "10.0.0.0/8", "NotSAddr": "10.0.0.0/8", "DAddr": "10.0.0.0/8",
    "NotDAddr": "10.0.0.0/8", "Protocol": "IPPROTO_TCP", "Family": "AF_INET", "State": "TCP_ESTABLISHED",
    "CelExpr": "arg0 > 1", "FileType": "reg", "NotFileType": "reg",
}
NO_VALUES = {"SPortPriv", "NotSportPriv", "DPortPriv", "NotDPortPriv", "CapabilitiesGained"}


def policy_for(path: str, value: Any) -> str | None:
    leaf = path.rsplit(".", 1)[-1]
    if path.endswith("args[].type") and path.startswith(".spec.kprobes"):
        if value in ("auto", "syscall64", "const_buf", "data_loc"):
            return (BASE + "  tracepoints:\n  - {subsystem: raw_syscalls, event: sys_enter, "
                    f"args: [{{index: 4, type: {value}}}]}}\n")
        return BASE + f"  kprobes:\n  - {{call: fd_install, syscall: false, args: [{{index: 1, type: {value}}}]}}\n"
    if path.endswith("matchArgs[].operator") and path.startswith(".spec.kprobes"):
        t = ARG_FOR_OPERATOR.get(value, "sock")
        if value in ("SAddr", "SPort", "Family") :
            t = "sock"
        vals = "" if value in NO_VALUES else f', values: ["{VALUE_FOR_OPERATOR.get(value, "/x")}"]'
        args = "args: [0, 1], " if value == "CapabilitiesGained" else "index: 0, "
        hookargs = (f"[{{index: 0, type: {t}}}, {{index: 1, type: {t}}}]" if value == "CapabilitiesGained"
                    else f"[{{index: 0, type: {t}}}]")
        return (BASE + f"  kprobes:\n  - call: security_file_open\n    syscall: false\n    args: {hookargs}\n"
                f"    selectors:\n    - matchArgs: [{{{args}operator: {value}{vals}}}]\n")
    if path.endswith("matchActions[].action") and path.startswith(".spec.kprobes"):
        params = {"Signal": ", argSig: 9", "Override": ", argError: -1", "GetUrl": ', argUrl: "http://x"',
                  "DnsLookup": ", argFqdn: example.com", "NotifyEnforcer": ", argSig: 9",
                  "Set": ", argIndex: 0, argValue: 1", "TrackSock": ", argSock: 0",
                  "UntrackSock": ", argSock: 0"}.get(value, "")
        section = ("  usdts:\n  - {path: /bin/true, provider: p, name: n, args: [{index: 0, type: int32}],"
                   if value == "Set" else
                   "  kprobes:\n  - {call: tcp_connect, syscall: false, args: [{index: 0, type: sock}],")
        enf = "  enforcers: [{calls: [sys_dup]}]\n" if value == "NotifyEnforcer" else ""
        return (BASE + enf + section + f"\n      selectors: [{{matchActions: [{{action: {value}{params}}}]}}]}}\n")
    if leaf == "namespace" and "matchNamespaces" in path and path.startswith(".spec.kprobes"):
        return (BASE + "  kprobes:\n  - {call: sys_openat, selectors: [{matchNamespaces: "
                f"[{{namespace: {value}, operator: In, values: [host_ns]}}]}}]}}\n")
    if leaf == "type" and "matchCapabilities[]" in path and path.startswith(".spec.kprobes"):
        return (BASE + "  kprobes:\n  - {call: sys_openat, selectors: [{matchCapabilities: "
                f"[{{type: {value}, operator: In, values: [CAP_SYS_ADMIN]}}]}}]}}\n")
    if leaf == "operator" and "matchBinaries" in path and path.startswith(".spec.kprobes"):
        return (BASE + "  kprobes:\n  - {call: sys_openat, selectors: [{matchBinaries: "
                f"[{{operator: {value}, values: [/usr/bin/x]}}]}}]}}\n")
    if path == ".spec.lists[].type":
        extra = {"syscalls": "values: [sys_dup]", "generated_syscalls": "", "generated_ftrace":
                 'pattern: "^vfs_"'}[value]
        return BASE + f"  lists: [{{name: l, type: {value}{', ' + extra if extra else ''}}}]\n" + \
            "  kprobes: [{call: \"list:l\"}]\n"
    return None


def main(argv: list[str]) -> int:
    crd = yaml.safe_load(open(argv[1]))
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    bad = 0
    tried = 0
    stricter: list[str] = []
    for path, values in enums(schema):
        for v in values:
            text = policy_for(path, v)
            if text is None:
                continue
            tried += 1
            r = check_text(text, "crd.yaml")
            errs = [str(e) for e in r.errors]
            if r.ok:
                errs += [str(e) for p in r.policies for e in unsupported(p)]
            for e in errs:
                if "Tetragon's loader refuses it too" in e:
                    continue  # the schema allows it, the loader does not
                if "Vigil" in e:
                    stricter.append(f"{path} = {v}: {e}")
                else:
                    bad += 1
                    print(f"REJECTED {path} = {v}: {e}")
    print(f"{tried} schema values tried; {bad} rejected without a reason naming Vigil; "
          f"{len(stricter)} refused on purpose:")
    for s in stricter:
        print("  " + s)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
