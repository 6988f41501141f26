"""`vigil explain RESOURCE[.FIELD...]`: the fields of the TracingPolicy CRDs, read from their
OpenAPI schema without a cluster (as `tetra explain` / `kubectl explain`)."""
from __future__ import annotations

import json
import os
import re
import textwrap
from pathlib import Path
from typing import Any

import click
import yaml

Schema = dict[str, Any]


def crd_dirs() -> list[Path]:
    env = os.environ.get("VIGIL_CRD_DIR")
    dirs = [Path(env)] if env else []
    dirs.append(Path(__file__).resolve().parents[2] / "install" / "kubernetes" / "vigil" / "crds")
    dirs.append(Path("/usr/share/vigil/crds"))
    return dirs


def load_crds() -> list[dict[str, Any]]:
    for d in crd_dirs():
        files = sorted(d.glob("*.yaml")) if d.is_dir() else []
        crds = []
        for f in files:
            try:
                doc = yaml.safe_load(f.read_text())
            except (OSError, yaml.YAMLError) as e:
                raise click.ClickException(f"cannot read CRD {f}: {e}") from None
            if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
                crds.append(doc)
        if crds:
            return crds
    raise click.ClickException("no CRD definitions found (looked in "
                               + ", ".join(str(d) for d in crd_dirs()) + "; set VIGIL_CRD_DIR)")


def split_path(path: str) -> list[str]:
    """`tracingpolicy.spec.kprobes`, `tracingpolicy[spec][kprobes]` or a mix -> its parts."""
    text = re.sub(r"\[([^\]]*)\]", r".\1", path.strip())
    if not text or text.startswith(".") or text.endswith("."):
        raise click.BadParameter(f"invalid path {path!r}: it cannot be empty, start or end with '.'",
                                 param_hint="RESOURCE")
    return [p.strip() for p in text.split(".") if p.strip()]


def type_name(s: Schema) -> str:
    kind = s.get("type")
    if kind == "array":
        return "[]" + (type_name(s["items"]) if isinstance(s.get("items"), dict) else "object")
    if kind == "object" and isinstance(s.get("additionalProperties"), dict):
        return "map[string]" + type_name(s["additionalProperties"])
    if s.get("x-kubernetes-int-or-string"):
        return "IntOrString"
    return str(kind or "object")


def _object_of(s: Schema) -> Schema:
    return s["items"] if s.get("type") == "array" and isinstance(s.get("items"), dict) else s


def _desc(text: str, pad: str) -> list[str]:
    return [textwrap.indent(text.rstrip("\n"), pad, lambda _: True)] if text else []


def field_lines(s: Schema, depth: int, recursive: bool) -> list[str]:
    s = _object_of(s)
    props, required = s.get("properties") or {}, set(s.get("required") or [])
    out: list[str] = []
    if not props:
        extra = s.get("additionalProperties")
        if depth == 0 and isinstance(extra, dict):
            out += ["FIELDS:", f"   <map[string]{type_name(extra)}>", *_desc(extra.get("description", ""), "     "), ""]
        return out
    if depth == 0:
        out.append("FIELDS:")
    pad = "  " * depth
    for name in sorted(props):
        p = props[name]
        out.append(f"{pad}   {name}\t<{type_name(p)}>" + (" -required-" if name in required else ""))
        out += _desc(p.get("description", ""), pad + "     ")
        if recursive and depth < 5 and (_object_of(p).get("properties")):
            out += field_lines(p, depth + 1, recursive)
        out.append("")
    return out


@click.command("explain")
@click.argument("resource", required=False, metavar="RESOURCE[.FIELD...]")
@click.option("-o", "--output", type=click.Choice(["text", "json", "yaml"]), default="text", show_default=True)
@click.option("-R", "--recursive", is_flag=True, help="Print the fields of fields recursively.")
@click.option("--example", is_flag=True, help="Show the field's example, when the schema has one.")
@click.option("--list", "list_mode", is_flag=True, help="List the resources that can be explained.")
@click.option("--api-version", default="", help="The CRD version to use (default: the last).")
def explain(resource: str | None, output: str, recursive: bool, example: bool, list_mode: bool,
            api_version: str) -> None:
    """Describe the fields of the TracingPolicy CRDs (like kubectl explain, without a cluster)."""
    crds = load_crds()
    if list_mode:
        rows = [("NAME", "SHORTNAMES")] + [
            (c["spec"]["names"]["kind"], ",".join(c["spec"]["names"].get("shortNames", []))) for c in crds]
        width = max(len(r[0]) for r in rows) + 2
        click.echo("\n".join(f"{a:<{width}}{b}".rstrip() for a, b in rows))
        return
    if not resource:
        raise click.UsageError("missing RESOURCE (e.g. tracingpolicy.spec.kprobes), or --list")
    parts = split_path(resource)
    wanted = parts[0].lower()
    crd = next((c for c in crds if c["spec"]["names"]["kind"].lower() == wanted
                or wanted in c["spec"]["names"].get("shortNames", [])
                or wanted in (c["spec"]["names"].get("singular"), c["spec"]["names"].get("plural"))), None)
    if crd is None:
        names = sorted(n for c in crds for n in [c["spec"]["names"]["kind"], *c["spec"]["names"].get("shortNames", [])])
        raise click.ClickException(f"unsupported resource: {parts[0]} (supported resources: {', '.join(names)})")
    versions = crd["spec"].get("versions") or []
    version = next((v for v in versions if v.get("name") == api_version), None) if api_version else \
        (versions[-1] if versions else None)
    if version is None:
        raise click.ClickException(f"version {api_version} not found" if api_version else "no versions found in CRD")
    kind = crd["spec"]["names"]["kind"]
    current: Schema = ((version.get("schema") or {}).get("openAPIV3Schema")) or {}
    for i, part in enumerate(parts[1:], start=2):
        obj = _object_of(current)
        props = obj.get("properties") or {}
        if not props and isinstance(obj.get("additionalProperties"), dict):
            current = obj["additionalProperties"]
            continue
        if not props:
            raise click.ClickException(f"field {'.'.join([kind, *parts[1:i]])!r} does not have properties")
        if part not in props:
            raise click.ClickException(f"field {part!r} not found in {'.'.join(parts[:i - 1])!r} "
                                       f"(available fields: {', '.join(sorted(props))})")
        current = props[part]
    if output == "json":
        click.echo(json.dumps(current, indent=2))
        return
    if output == "yaml":
        click.echo(yaml.safe_dump(current, sort_keys=True), nl=False)
        return
    lines = [f"KIND:     {kind}", f"VERSION:  {version.get('name', '')}", ""]
    if len(parts) == 1:
        lines += ["DESCRIPTION:", *_desc(current.get("description", ""), "     "), ""]
    else:
        lines += [f"FIELD:    {parts[-1]} <{type_name(current)}>", ""]
        if current.get("description"):
            lines += ["DESCRIPTION:", *_desc(current["description"], "     "), ""]
    if example and "example" in current:
        lines += ["EXAMPLE:", *_desc(yaml.safe_dump(current["example"]), "     "), ""]
    lines += field_lines(current, 0, recursive)
    click.echo("\n".join(lines))
