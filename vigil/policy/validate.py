"""Semantic checks of a loaded policy (after structural conversion and macro merging)."""
from __future__ import annotations

import re

from . import enums, limits, values
from .errors import Diagnostics, Loc
from .model import (
    Hook,
    KProbeArg,
    KProbeSpec,
    LsmHookSpec,
    Policy,
    TracepointSpec,
    TracingPolicySpec,
    UProbeSpec,
    UsdtSpec,
)
from .util import enum_message
from .validate_args import INT_BITS
from .validate_selectors import HookCtx, SelectorChecker, check_label_selector

_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_RESOLVE = re.compile(r"^[A-Za-z_]\w*(\[\d+\])*(\.[A-Za-z_]\w*(\[\d+\])*)*$")
_BUF_TYPES = ("char_buf", "char_iovec")
_DATA_TYPES = ("char_buf", "char_iovec", "iov_iter")  # types whose capture maxData enlarges


_TRACEPOINT_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")

def validate_policy(policy: Policy, diag: Diagnostics) -> None:
    """Report every semantic problem of one policy into `diag`."""
    _check_header(policy, diag)
    spec = policy.spec
    _check_spec_selectors(policy, diag)
    _check_lists(spec, diag)
    _check_options(spec, diag)
    _check_enforcers(spec, diag)
    sc = SelectorChecker(diag, spec)
    for m in spec.selectors_macros.values():
        sc.check(m, HookCtx("macro", None))
    hooks = spec.hooks()
    for section, hook in hooks:
        _check_hook(section, hook, spec, diag)
        sc.check_hook_selectors(HookCtx(section, hook))
    if not hooks:
        diag.warn(spec.loc, "the policy has no hooks (kprobes, tracepoints, uprobes, lsmhooks, "
                  "usdts or fentries)")


def _check_header(policy: Policy, diag: Diagnostics) -> None:
    if policy.api_version != enums.API_VERSION:
        diag.error(policy.at("apiVersion"), f'unsupported apiVersion "{policy.api_version}" '
                   f'(expected {enums.API_VERSION})')
    if policy.kind not in enums.KINDS:
        diag.error(policy.at("kind"), enum_message("kind", policy.kind, enums.KINDS))
    meta = policy.metadata
    if len(meta.name) > limits.MAX_NAME_LEN or not _DNS_SUBDOMAIN.match(meta.name):
        diag.error(meta.at("name"), f'invalid name "{meta.name}": use lowercase letters, digits, '
                   f"'-' and '.', starting and ending with a letter or digit (max "
                   f"{limits.MAX_NAME_LEN})")
    if meta.namespace is not None:
        if policy.kind == enums.KIND_CLUSTER:
            diag.warn(meta.at("namespace"), "metadata.namespace is ignored: TracingPolicy is "
                      "cluster-scoped (use TracingPolicyNamespaced)")
        elif len(meta.namespace) > 63 or not _DNS_LABEL.match(meta.namespace):
            diag.error(meta.at("namespace"), f'invalid namespace "{meta.namespace}"')
    if policy.has("status"):
        diag.warn(policy.at("status"), "status is written by the API server and is ignored")


def _check_spec_selectors(policy: Policy, diag: Diagnostics) -> None:
    spec = policy.spec
    for _key, attr in (("podSelector", "pod_selector"), ("containerSelector",
                      "container_selector"), ("nodeSelector", "node_selector"),
                      ("hostSelector", "host_selector")):
        ls = getattr(spec, attr)
        if ls is not None:
            check_label_selector(diag, ls)
    hs = spec.host_selector
    if hs is not None:
        if policy.namespaced:
            diag.error(spec.at("hostSelector"), "hostSelector must be null in a "
                       "TracingPolicyNamespaced")
        elif not hs.empty:
            diag.error(spec.at("hostSelector"), "hostSelector may only be null (no host "
                       "processes) or {} (all host processes)")


def _check_lists(spec: TracingPolicySpec, diag: Diagnostics) -> None:
    seen: set[str] = set()
    for ls in spec.lists:
        if ls.name in seen:
            diag.error(ls.at("name"), f'duplicate list name "{ls.name}"')
        seen.add(ls.name)
        if not ls.name or ":" in ls.name:
            diag.error(ls.at("name"), f'invalid list name "{ls.name}"')
        if ls.type not in enums.LIST_TYPES:
            diag.error(ls.at("type"), enum_message("list type", ls.type, enums.LIST_TYPES))
            continue
        if ls.type == "syscalls":
            if not ls.values:
                diag.error(ls.at("values"), "a syscalls list needs values")
            for i, v in enumerate(ls.values):
                if not values.is_syscall(v):
                    diag.error(ls.at(f"values[{i}]"), f'"{v}" is not an x86_64 syscall')
        elif ls.values:
            diag.error(ls.at("values"), f"a {ls.type} list is generated: it takes no values")
        if ls.type == "generated_ftrace":
            if not ls.pattern:
                diag.error(ls.loc.child("pattern"), "a generated_ftrace list needs pattern")
            else:
                try:
                    re.compile(ls.pattern)
                except re.error as e:
                    diag.error(ls.at("pattern"), f"invalid pattern: {e}")
        elif ls.has("pattern"):
            diag.error(ls.at("pattern"), "pattern is only used by generated_ftrace lists")


def _check_options(spec: TracingPolicySpec, diag: Diagnostics) -> None:
    seen: set[str] = set()
    for o in spec.options:
        if o.name not in enums.OPTION_ENUMS:
            diag.error(o.at("name"), enum_message("option", o.name, enums.OPTION_ENUMS))
            continue
        if o.name in seen:
            diag.error(o.at("name"), f'option "{o.name}" is set twice')
        seen.add(o.name)
        allowed = enums.OPTION_ENUMS[o.name]
        try:
            if allowed is not None:
                if o.value not in allowed:
                    raise ValueError(enum_message(f"{o.name} value", o.value, allowed))
            elif o.name in enums.BOOL_OPTIONS:
                values.parse_bool_string(o.value)
            elif o.name == "vigil-finding":
                from .findings import parse_sequence

                parse_sequence(o.value, [sel.label for _s, h in spec.hooks() for sel in h.selectors if sel.label])
            elif o.name == "sleepable-preload-size" and values.parse_int(o.value) < 0:
                raise ValueError("sleepable-preload-size must not be negative")
        except ValueError as e:
            diag.error(o.at("value"), str(e))


def _check_enforcers(spec: TracingPolicySpec, diag: Diagnostics) -> None:
    if len(spec.enforcers) > limits.MAX_ENFORCERS:
        diag.error(spec.enforcers[limits.MAX_ENFORCERS].loc, f"only {limits.MAX_ENFORCERS} "
                   f"enforcer is allowed (got {len(spec.enforcers)})")
    for e in spec.enforcers:
        if not e.calls:
            diag.error(e.at("calls"), "an enforcer needs at least one call")
        for i, c in enumerate(e.calls):
            _check_call_name(c, True, e.at(f"calls[{i}]"), spec, diag)


def _check_call_name(call: str, syscall: bool, loc: Loc, spec: TracingPolicySpec,
                     diag: Diagnostics) -> None:
    if call.startswith("list:"):
        if spec.list_named(call[5:]) is None:
            diag.error(loc, f'list "{call[5:]}" is not defined in spec.lists')
        return
    if not call:
        diag.error(loc, "call must not be empty")
    elif syscall and not values.is_syscall(call, bare_ok=False):
        if values.is_syscall(call):
            diag.error(loc, f'write the syscall as "sys_{call}"')
        else:
            diag.error(loc, f'"{call}" is not an x86_64 syscall (set syscall: false to hook a '
                       "kernel function)")


def _check_hook(section: str, hook: Hook, spec: TracingPolicySpec, diag: Diagnostics) -> None:
    if len(hook.message) > limits.MAX_MESSAGE_LEN:
        diag.error(hook.at("message"), f"message is {len(hook.message)} characters long (max "
                   f"{limits.MAX_MESSAGE_LEN})")
    if len(hook.tags) > limits.MAX_TAGS:
        diag.error(hook.at(f"tags[{limits.MAX_TAGS}]"), f"too many tags: {len(hook.tags)} (max "
                   f"{limits.MAX_TAGS})")
    max_args = limits.MAX_USDT_ARGS if section == "usdts" else limits.MAX_HOOK_ARGS
    if len(hook.args) > max_args:
        diag.error(hook.at(f"args[{max_args}]"), f"too many args: {len(hook.args)} (max "
                   f"{max_args})")
    is_return = bool(getattr(hook, "return_", False))
    for i, a in enumerate(hook.args):
        _check_arg(a, section, hook.args, i, is_return, diag, data=False)
    for i, a in enumerate(getattr(hook, "data", ())):
        _check_arg(a, section, hook.data, i, is_return, diag, data=True)
    if isinstance(hook, (KProbeSpec, UProbeSpec)):
        _check_return(hook, section, diag)
    if isinstance(hook, KProbeSpec):
        _check_call_name(hook.call, hook.syscall, hook.at("call"), spec, diag)
        base = values.syscall_base(hook.call)
        if not hook.syscall and hook.call.startswith("sys_") and base and values.is_syscall(base):
            diag.warn(hook.at("syscall"), f"{hook.call} with syscall: false: x86_64 kernels only "
                      f"have __x64_{hook.call}; leave syscall true")
    elif isinstance(hook, TracepointSpec):
        for key in ("subsystem", "event"):
            v = getattr(hook, key)
            if not v:
                diag.error(hook.at(key), f"{key} must not be empty")
            elif not _TRACEPOINT_NAME.fullmatch(v):
                # also keeps the name a single path component of tracefs
                diag.error(hook.at(key), f"{key} {v!r} is not a tracepoint name (letters, digits, _ . -)")
    elif isinstance(hook, UProbeSpec):
        _check_uprobe(hook, diag)
    elif isinstance(hook, UsdtSpec):
        for key in ("path", "provider", "name"):
            if not getattr(hook, key):
                diag.error(hook.at(key), f"{key} must not be empty")
    elif isinstance(hook, LsmHookSpec):
        if not hook.hook:
            diag.error(hook.at("hook"), "hook must not be empty")
        elif hook.hook.startswith("security_"):
            diag.error(hook.at("hook"), f'write the LSM hook without the security_ prefix: '
                       f'"{hook.hook[len("security_"):]}"')


def _check_arg(a: KProbeArg, section: str, siblings: tuple[KProbeArg, ...], pos: int,
               is_return: bool, diag: Diagnostics, *, data: bool) -> None:
    if a.type not in enums.ARG_TYPES:
        diag.error(a.at("type"), enum_message("argument type", a.type, enums.ARG_TYPES))
    elif a.type in ("auto", "syscall64") and section != "tracepoints":
        if a.has("type"):
            diag.error(a.at("type"), f"type {a.type} is only supported on tracepoints")
        else:
            diag.error(a.loc.child("type"), "missing type (the default, auto, is only supported "
                       "on tracepoints)")
    if a.size_arg_index:
        # as Tetragon reads it: the function's argument index + 1 (the placement looks up the
        # captured argument of that index, vigil.policy.placement.size_arg_slots)
        target = next((s for s in siblings if s.index == a.size_arg_index - 1), None)
        if target is None:
            diag.error(a.at("sizeArgIndex"), f"sizeArgIndex {a.size_arg_index} refers to argument index "
                       f"{a.size_arg_index - 1}, which args does not capture (it is the index + 1); add it "
                       "(e.g. as size_t)")
        elif target.index == a.index:
            diag.error(a.at("sizeArgIndex"), "sizeArgIndex refers to the argument itself")
        elif target.type not in (*INT_BITS, "auto"):
            diag.error(a.at("sizeArgIndex"), f"sizeArgIndex {a.size_arg_index} refers to a "
                       f"{target.type} argument, not an integer")
        if a.type not in _BUF_TYPES:
            diag.warn(a.at("sizeArgIndex"), f"sizeArgIndex is only used with {'/'.join(_BUF_TYPES)}")
    if a.return_copy and a.max_data:
        diag.error(a.at("maxData"), "maxData cannot be combined with returnCopy")
    elif a.return_copy and not is_return:
        diag.error(a.at("returnCopy"), "returnCopy reads the buffer at return: the hook needs "
                   "return: true")
    if a.max_data and a.type not in _DATA_TYPES:
        diag.warn(a.at("maxData"), f"maxData only applies to {'/'.join(_DATA_TYPES)} arguments")
    if a.resolve and not _RESOLVE.match(a.resolve):
        diag.error(a.at("resolve"), f'invalid resolve path "{a.resolve}" (expected fields '
                   "separated by '.', with optional [n] indexes)")
    if data and not a.source:
        diag.error(a.loc.child("source"), f"a data entry needs a source ({' or '.join(enums.DATA_SOURCES)})")
    if data and not a.resolve:
        diag.error(a.loc.child("resolve"), "a data entry needs resolve (a register for source pt_regs, a "
                   "task_struct field path for current_task)")
    if a.has("source"):
        if not data:
            diag.error(a.at("source"), "source is only valid in data entries")
        elif a.source not in enums.DATA_SOURCES:
            diag.error(a.at("source"), enum_message("source", a.source, enums.DATA_SOURCES))


def _check_return(hook: KProbeSpec | UProbeSpec, section: str, diag: Diagnostics) -> None:
    if hook.return_ and hook.return_arg is None:
        diag.error(hook.at("return"), "return: true needs returnArg")
    if not hook.return_ and hook.return_arg is not None:
        diag.warn(hook.at("returnArg"), "returnArg is ignored without return: true")
    if hook.return_arg is not None:
        _check_arg(hook.return_arg, section, (hook.return_arg,), 0, hook.return_, diag, data=False)
    if isinstance(hook, KProbeSpec) and hook.has("returnArgAction"):
        act = hook.return_arg_action
        known = {a.lower(): a for a in (*enums.ACTIONS, *enums.DEPRECATED_ACTIONS)}
        if act.lower() not in known:
            diag.error(hook.at("returnArgAction"), enum_message(
                "returnArgAction", act, enums.RETURN_ARG_ACTIONS))
        elif known[act.lower()] not in enums.RETURN_ARG_ACTIONS:
            # Tetragon's loader took any action name here (older documentation wrote Post);
            # only TrackSock/UntrackSock ever acted on the return value
            diag.warn(hook.at("returnArgAction"), f"returnArgAction {act} has no effect (only TrackSock and "
                      "UntrackSock act on the return value); it is accepted for policies written for older "
                      "Tetragon releases")
        elif not hook.return_:
            diag.error(hook.at("returnArgAction"), "returnArgAction needs return: true")


def _check_uprobe(hook: UProbeSpec, diag: Diagnostics) -> None:
    if not hook.path:
        diag.error(hook.at("path"), "path must not be empty")
    elif not hook.path.startswith("/"):
        diag.warn(hook.at("path"), f'path "{hook.path}" is not absolute: the agent takes it from its working '
                  "directory, as Tetragon does")
    given = [k for k in ("symbols", "offsets", "addrs") if getattr(hook, k)]
    if not given:
        diag.error(hook.loc.child("symbols"), "a uprobe needs one of symbols, offsets or addrs")
    elif len(given) > 1:
        diag.error(hook.at(given[1]), f"use only one of symbols, offsets, addrs (got "
                   f"{' and '.join(given)})")
    for i, s in enumerate(hook.symbols):
        if not s:
            diag.error(hook.at(f"symbols[{i}]"), "symbol must not be empty")
    # Tetragon tries binaryDigests in order at load (placement.digest_verdict): an entry it
    # reaches and cannot read refuses the policy; one after a match is never read. So only the
    # first entry's form refuses here; a later one is refused at load only if reached.
    for i, dg in enumerate(hook.binary_digests):
        where = hook.at(f"binaryDigests[{i}]")
        if dg == "":
            diag.warn(where, "an empty digest matches any binary (Tetragon reads it so): when the "
                      "walk reaches it, the binary is not checked")
            continue
        algo, sep, hexpart = dg.strip().partition(":")  # as Tetragon reads it: trimmed, any case
        algo, hexpart = algo.strip().lower(), hexpart.strip()
        want = enums.DIGEST_ALGOS.get(algo)
        if not sep or not algo or not hexpart or want is None:
            why = (f'invalid digest "{dg}" (expected sha1|sha256|sha384|sha512|build-id:<hex>)')
            if i == 0:
                diag.error(where, why)
                break
            diag.warn(where, f"{why}: the policy is refused at load unless an earlier digest is the binary's "
                      "(Tetragon tries them in order)")
        elif not re.fullmatch(r"[0-9a-fA-F]+", hexpart) or (want and len(hexpart) != want):
            what = "not hex" if not re.fullmatch(r"[0-9a-fA-F]+", hexpart) else f"{algo} is {want} hex digits"
            diag.warn(where, f'digest "{dg}" can never match ({what}): it counts as a mismatch')
