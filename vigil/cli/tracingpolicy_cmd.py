"""`vigil tracingpolicy` (alias `tp`): manage tracing policies in a running agent."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import click

from vigil.api.cliutil import client, print_json, server_options, table
from vigil.export.compact import go_quote

COLUMNS = ["ID", "NAME", "DOMAIN", "STATE", "FILTERID", "NAMESPACE", "SENSORS", "KERNELMEMORY",
           "MODE", "NPOST", "NENFORCE", "NMONITOR"]
_ENFORCE = ("signal", "override", "notify_enforcer", "set")
_MONITOR = ("monitor_signal", "monitor_override", "monitor_notify_enforcer", "monitor_set")


def humanize_bytes(b: int) -> str:
    """1234 -> "1.23 kB" (decimal units, as tetra prints them)."""
    if b < 1000:
        return f"{b} B"
    div, exp = 1000, 0
    n = b // 1000
    while n >= 1000:
        div *= 1000
        exp += 1
        n //= 1000
    return f"{b / div:.2f} {'kMGTPE'[exp]}B"


def _hooks(p: dict[str, Any]) -> str:
    return ",".join(f"{h['section']}={h.get('hook_description', '')}" if h.get("section")
                    else h.get("hook_description", "") for h in p.get("hook_statuses", [])) or "-"


def policy_row(p: dict[str, Any], wide: bool = False) -> list[str]:
    """One table row from a TracingPolicyStatus dict (protojson shape)."""
    c = {k: int(v) for k, v in p.get("stats", {}).get("action_counters", {}).items()}
    row = [
        p.get("id", "0"), p.get("name", ""), p.get("domain") or "-",  # where it came from: static, grpc, k8s
        p.get("state", "TP_STATE_UNKNOWN").removeprefix("TP_STATE_").lower(),
        p.get("filter_id", "0"), p.get("namespace") or "(global)",
        ",".join(p.get("sensors", [])), humanize_bytes(int(p.get("kernel_memory_bytes", 0))),
        p.get("mode", "TP_MODE_UNKNOWN").removeprefix("TP_MODE_").lower(),
        c.get("post", 0), sum(c.get(k, 0) for k in _ENFORCE), sum(c.get(k, 0) for k in _MONITOR),
    ]
    return [*row, _hooks(p)] if wide else row


def render_policies(pols: list[dict[str, Any]], wide: bool = False) -> str:
    out = table(COLUMNS + (["HOOKS"] if wide else []), [policy_row(p, wide) for p in pols])
    lines = out.split("\n")
    indent = " " * lines[0].index("NAME")
    result = [lines[0]]
    for line, p in zip(lines[1:], pols):
        result.append(line)
        # A partially loaded policy gets its per-hook table right below it (as tetra does).
        if p.get("state") == "TP_STATE_PARTIALLY_ENABLED" and p.get("hook_statuses"):
            sub = table(["SECTION", "CFGIDX", "DESCRIPTION", "STATUS"], [
                [h.get("section", ""), h.get("hook_idx", 0), h.get("hook_description", ""),
                 h.get("state", "STATUS_UNSPECIFIED").removeprefix("STATUS_").lower()]
                for h in p["hook_statuses"]])
            result.extend(indent + s for s in sub.split("\n"))
    return "\n".join(result)


def with_mode(yaml_text: str, mode: str, filename: str = "<policy>") -> str:
    """Set the `policy-mode` option in each policy document (what tetra's -m does). The YAML is
    read strictly first, as the agent reads it: the documents are written anew here, and what
    that rewriting would hide (a duplicate key, a merge key) must not pass."""
    import yaml

    from vigil.policy import structure_errors

    errors = structure_errors(yaml_text, filename)
    if errors:
        raise click.ClickException("\n".join(str(e) for e in errors))
    docs = list(yaml.safe_load_all(yaml_text))
    for doc in docs:
        if not isinstance(doc, dict) or not str(doc.get("apiVersion", "")).startswith("cilium.io/"):
            continue  # (other objects of a manifest: the agent skips them)
        spec = doc.setdefault("spec", {}) or {}
        doc["spec"] = spec
        opts = [o for o in (spec.get("options") or [])
                if not (isinstance(o, dict) and o.get("name") == "policy-mode")]
        spec["options"] = [*opts, {"name": "policy-mode", "value": mode}]
    return yaml.safe_dump_all([d for d in docs if d is not None], sort_keys=False)


@click.group("tracingpolicy")
def tracingpolicy() -> None:
    """Manage tracing policies in the running agent."""


DOMAINS = ("grpc", "k8s", "static")  # where a policy comes from (Tetragon's domains)


def _check_domain(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    """A domain the agent has no policies in: the agent lists none (tp list printed an empty
    table and exited 0) or finds none; a usage error names the option and the domains."""
    if value not in ("", *DOMAINS):
        raise click.BadParameter(f"{value!r} is not a policy domain: use one of {', '.join(DOMAINS)} "
                                 "(default: grpc; tp list: all)")
    return value


def _domain_opt(fn: Any) -> Any:
    return click.option("--domain", default="", callback=_check_domain, metavar="[" + "|".join(DOMAINS) + "]",
                        help="Domain of the policy: grpc (added over the API), k8s (CRDs), static "
                             "(--tracing-policy-dir); default: grpc (list: all), as tetra's.")(fn)


def _policy_file(_ctx: click.Context, _param: click.Parameter, value: Path) -> Path:
    """click reads an empty FILE as Path('') == '.': 'cannot read .: Is a directory'."""
    if value == Path(""):  # (click has already refused an existing directory such as ".")
        raise click.BadParameter("an empty file name")
    return value


@tracingpolicy.command("add")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path), callback=_policy_file)
@click.option("-m", "--mode", type=click.Choice(["enforce", "monitor"]), default=None,
              help="Load the policy in this mode (sets the policy-mode option).")
@_domain_opt
@server_options
def add(file: Path, mode: str | None, domain: str, server_address: str | None, timeout: float) -> None:
    """Load the policy in FILE (or library:NAME, a policy of the library)."""
    from vigil.policy.library import LibraryError, resolve

    given = str(file)
    try:
        file = resolve(given)
        text = file.read_text()
    except LibraryError as e:
        raise click.ClickException(str(e)) from None
    except OSError as e:
        raise click.ClickException(f"cannot read {file}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise click.ClickException(f"cannot read {file}: not UTF-8 text (byte {e.start}: {e.reason})") from None
    if mode:
        text = with_mode(text, mode, str(file))
    import grpc

    try:
        with client(server_address, timeout) as c:
            c.add_policy(text, domain)
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.UNAVAILABLE:
            raise
        raise click.ClickException(f"{e.code().name}: {refusal_in_file(e.details() or '', str(file), mode)}") from None
    click.echo(f"tracing policy {go_quote(given)} added")  # tetra's words, for scripts


def refusal_in_file(details: str, file: str, mode: str | None) -> str:
    """The agent's refusal of a policy sent over gRPC, with the file's name where the agent
    wrote its own name for the text (`<grpc>:LINE:COL: field: message`). With -m the text
    sent is the file rewritten: its positions are those `tp modify -m MODE FILE` prints."""
    if not re.search(r"(?m)^<grpc>:", details):
        return details
    where = file if mode is None else f"{file} (-m {mode})"
    out = re.sub(r"(?m)^<grpc>:", lambda _: f"{where}:", details)
    if mode is not None:
        out += (f"\n(with -m, lines and columns are those of the policy as "
                f"`vigil tracingpolicy modify -m {mode} {file}` prints it)")
    return out


def _namespace_opt(fn: Any) -> Any:
    return click.option("-n", "--namespace", default="", help="Namespace of a namespaced policy.")(fn)


@tracingpolicy.command("delete")
@click.argument("name")
@_namespace_opt
@_domain_opt
@server_options
def delete(name: str, namespace: str, domain: str, server_address: str | None, timeout: float) -> None:
    """Unload and remove policy NAME."""
    with client(server_address, timeout) as c:
        c.delete_policy(name, namespace, domain)
    click.echo(f"tracing policy {go_quote(name)} deleted")


@tracingpolicy.command("enable")
@click.argument("name")
@_namespace_opt
@_domain_opt
@server_options
def enable(name: str, namespace: str, domain: str, server_address: str | None, timeout: float) -> None:
    """Enable policy NAME."""
    with client(server_address, timeout) as c:
        c.enable_policy(name, namespace, domain)
    click.echo(f"tracing policy {go_quote(name)} enabled")


@tracingpolicy.command("disable")
@click.argument("name")
@_namespace_opt
@_domain_opt
@server_options
def disable(name: str, namespace: str, domain: str, server_address: str | None, timeout: float) -> None:
    """Disable policy NAME (it stays loaded and can be enabled again)."""
    with client(server_address, timeout) as c:
        c.disable_policy(name, namespace, domain)
    click.echo(f"tracing policy {go_quote(name)} disabled")


@tracingpolicy.command("set-mode")
@click.argument("name")
@click.argument("mode", type=click.Choice(["enforce", "monitor"]))
@_namespace_opt
@_domain_opt
@server_options
def set_mode(name: str, mode: str, namespace: str, domain: str, server_address: str | None,
             timeout: float) -> None:
    """Switch policy NAME between enforce and monitor mode."""
    with client(server_address, timeout) as c:
        c.set_policy_mode(name, mode, namespace, domain)
    click.echo(f"tracing policy {go_quote(name)} set to mode {go_quote(mode)}")


@tracingpolicy.command("list")
@click.option("-o", "--output", type=click.Choice(["text", "wide", "json"]), default="text",
              show_default=True, help="wide adds a HOOKS column (where each part is attached).")
@_domain_opt
@server_options
def list_(output: str, domain: str, server_address: str | None, timeout: float) -> None:
    """List loaded policies."""
    with client(server_address, timeout) as c:
        pols = c.list_policies(domain)
    if output == "json":
        print_json({"policies": pols})
    else:
        click.echo(render_policies(pols, wide=output == "wide"))


@tracingpolicy.command("domains")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
@server_options
def domains(output: str, server_address: str | None, timeout: float) -> None:
    """List the domains policies come from (tetra prints them as [grpc k8s static])."""
    with client(server_address, timeout) as c:
        names = c.list_domains()
    if output == "json":
        print_json({"domains": names})
    else:
        click.echo("[" + " ".join(names) + "]")


@tracingpolicy.command("modify")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path), callback=_policy_file)
@click.option("-m", "--mode", type=click.Choice(["enforce", "monitor"]), default=None,
              help="Set the policy-mode option of the policy.")
def modify(file: Path, mode: str | None) -> None:
    """Print the policy YAML in FILE, modified (-m: its mode); the file is not changed."""
    try:
        text = file.read_text()
    except OSError as e:
        raise click.ClickException(f"failed to read yaml file {file}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise click.ClickException(f"failed to read yaml file {file}: not UTF-8 text "
                                   f"(byte {e.start}: {e.reason})") from None
    click.echo(with_mode(text, mode, str(file)) if mode else text, nl=False)


def _add_generate() -> None:
    from vigil.cli.generate_cmd import generate

    tracingpolicy.add_command(generate)


_add_generate()
