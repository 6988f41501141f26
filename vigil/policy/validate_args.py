"""matchArgs / matchData / matchReturnArgs: which argument an entry refers to, whether the
operator fits the argument's type, and whether the values parse."""
from __future__ import annotations

import re
from collections.abc import Callable

from . import enums, limits, values
from .errors import Diagnostics
from .model import ArgSelector, KProbeArg, TracingPolicySpec
from .util import enum_message

INT_BITS = {
    "int8": 8, "sint8": 8, "uint8": 8, "int16": 16, "sint16": 16, "uint16": 16,
    "int": 32, "int32": 32, "sint32": 32, "uint32": 32, "bpf_cmd": 32, "capability": 32,
    "ulong": 64, "uint64": 64, "size_t": 64, "long": 64, "sint64": 64, "int64": 64,
    "syscall64": 64, "kernel_cap_t": 64, "cap_inheritable": 64, "cap_permitted": 64,
    "cap_effective": 64,
}
UNSIGNED = {"uint8", "uint16", "uint32", "ulong", "uint64", "size_t", "kernel_cap_t",
            "cap_inheritable", "cap_permitted", "cap_effective"}


def compares_unsigned(atype: str) -> bool | None:
    """How GT, LT, InRange and NotInRange order the values of integer argument type `atype`, in
    the kernel and in the evaluator: True as unsigned 64-bit values (2^64 - 1 is the largest),
    False as signed (-1 is below 0); None for `auto`, where the kernel's type of the argument
    decides (compile.UNSIGNED_VTYPES)."""
    if atype == "auto":
        return None
    return atype in UNSIGNED or atype in ("syscall64", "unsigned long")


CAP_TYPES = {"kernel_cap_t", "cap_inheritable", "cap_permitted", "cap_effective", "cred"}
STRING_TYPES = {"string", "char_buf", "filename", "fd", "file", "path", "dentry", "linux_binprm",
                "data_loc", "net_device", "kiocb"}
SOCK_TYPES = {"sock", "socket", "skb"}

INT_OPS = {"Equal", "NotEqual", "GT", "LT", "GreaterThan", "LessThan", "Mask", "InRange",
           "NotInRange", "InMap", "NotInMap", "CelExpr"}
STRING_OPS = {"Equal", "NotEqual", "Prefix", "NotPrefix", "Postfix", "NotPostfix", "SubString",
              "SubStringIgnCase"}
FILE_OPS = {"FileType", "NotFileType"}
PORT_OPS = {"SPort", "NotSPort", "DPort", "NotDPort"}
PRIV_OPS = {"SPortPriv", "NotSportPriv", "DPortPriv", "NotDPortPriv"}
ADDR_OPS = {"SAddr", "NotSAddr", "DAddr", "NotDAddr"}
SOCK_OPS = PORT_OPS | PRIV_OPS | ADDR_OPS | {"Protocol", "Family", "State"}
SOCKADDR_OPS = {"SAddr", "SPort", "Family"}
SOCKADDR_UN_OPS = {"Equal", "NotEqual", "Prefix", "NotPrefix", "Family"}
ONE_VALUE_OPS = {"GT", "LT", "GreaterThan", "LessThan"}
NO_VALUE_OPS = PRIV_OPS | {"CapabilitiesGained"}
TEMPLATE = re.compile(r"\$\{[^}]*\}|\$\([^)]*\)|\{\{[^}]*\}\}")


def ops_for_type(t: str) -> set[str] | None:
    """Operators an argument of type `t` supports; None = unknown type (auto): anything goes."""
    if t == "auto":
        return None
    if t in CAP_TYPES:
        return (INT_OPS | {"CapabilitiesGained"}) if t in INT_BITS else {"CapabilitiesGained"}
    if t in INT_BITS:
        return set(INT_OPS)
    if t in STRING_TYPES:
        return STRING_OPS | (FILE_OPS if t in ("file", "path") else set())
    if t in SOCK_TYPES:
        return set(SOCK_OPS)
    if t == "sockaddr":
        return set(SOCKADDR_OPS)
    if t == "sockaddr_un":
        return set(SOCKADDR_UN_OPS)
    return set()


class ArgChecker:
    def __init__(self, diag: Diagnostics, spec: TracingPolicySpec) -> None:
        self.diag = diag
        self.spec = spec
        self.section = ""  # hook section being checked (set by SelectorChecker)

    def check(self, m: ArgSelector, field: str, targets: tuple[KProbeArg, ...] | None,
              is_return: bool = False) -> int | None:
        """Validate one entry. `targets` is the hook's args/data list (or (returnArg,)), None
        inside a macro (no hook known). Returns the argument index the entry filters on."""
        d = self.diag
        if m.operator not in enums.ARG_OPERATORS:
            d.error(m.at("operator"), enum_message("operator", m.operator, enums.ARG_OPERATORS))
            return None
        arg = self._target(m, field, targets, is_return)
        atype = arg.type if arg is not None else "auto"
        if arg is not None:
            ok = ops_for_type(atype)
            if ok is not None and m.operator not in ok:
                if ok:
                    allowed = ", ".join(o for o in enums.ARG_OPERATORS if o in ok)
                    d.error(m.at("operator"), f'operator {m.operator} does not apply to argument '
                            f'type {atype} (it takes {allowed})')
                else:
                    d.error(m.at("operator"), f"arguments of type {atype} cannot be filtered")
                return m.index
        self._values(m, atype, arg is not None)
        return m.index if not m.args else None

    def _target(self, m: ArgSelector, field: str, targets: tuple[KProbeArg, ...] | None,
                is_return: bool) -> KProbeArg | None:
        if targets is None:
            return None
        what = "data" if field == "matchData" else "args"
        if m.operator == "CapabilitiesGained" and len(m.args) != 2:
            self.diag.error(m.at("args"), "CapabilitiesGained compares two arguments: give their "
                            "positions in args (e.g. args: [0, 1])")
            return None
        if m.args:
            if m.has("index"):
                self.diag.warn(m.at("index"), "index is ignored when args is given")
            found = None
            for i, pos in enumerate(m.args):
                if pos >= len(targets):
                    self.diag.error(m.at(f"args[{i}]"), f"position {pos} is out of range: the "
                                    f"hook has {len(targets)} {what} entries")
                elif found is None:
                    found = targets[pos]
            return found  # multi-position entries (CapabilitiesGained) type-check the first
        if is_return:
            if not targets:
                return None
            ret = targets[0]
            if m.index not in (0, ret.index):
                self.diag.error(m.at("index"), f"matchReturnArgs index must be 0 (the return "
                                f"value), got {m.index}")
            return ret
        if field == "matchData":  # matchData.index is a position in data, not data[].index
            if m.index >= len(targets):
                self.diag.error(m.at("index"), f"matchData index {m.index} is out of range: the "
                                f"hook has {len(targets)} data entries")
                return None
            return targets[m.index]
        for a in targets:
            if a.index == m.index:
                return a
        if self.section == "tracepoints" and m.index < len(targets):
            # Tetragon maps unmatched tracepoint indexes to positions; upstream examples rely on it.
            t = targets[m.index]
            self.diag.warn(m.at("index"), f"index {m.index} is not an args[].index; it is taken as "
                           f"position {m.index} (args[{m.index}].index is {t.index}): write "
                           f"index: {t.index}")
            return t
        known = ", ".join(str(a.index) for a in targets) or "none"
        self.diag.error(m.at("index"), f"index {m.index} does not match any {what}[].index "
                        f"of the hook (defined: {known})")
        return None

    def _values(self, m: ArgSelector, atype: str, typed: bool) -> None:
        d, op, vals = self.diag, m.operator, m.values
        n = len(vals)
        if op in NO_VALUE_OPS:
            if n:
                d.error(m.at("values"), f"operator {op} takes no values")
            return
        if n == 0:
            d.error(m.at("values"), f"operator {op} needs at least one value")
            return
        if op in ONE_VALUE_OPS and n != 1:
            d.error(m.at("values"), f"operator {op} takes exactly one value, got {n}")
            return
        cap, why = self._max_values(op)
        if cap is not None and n > cap:
            d.error(m.at(f"values[{cap}]"), f"too many values for {op}: {n} (max {cap}{why})")
        parse = self._parser(op, atype, typed)
        for i, v in enumerate(vals):
            t = TEMPLATE.search(v)
            if t:
                d.error(m.at(f"values[{i}]"), f'"{v}" looks like an unexpanded template ({t.group(0)}): '
                        "fill it in before applying the policy")
                continue
            if v.startswith("list:") and op not in ("InMap", "NotInMap"):
                d.error(m.at(f"values[{i}]"), f"list references only work with InMap/NotInMap, "
                        f"not {op}")
                continue
            try:
                parse(v)
            except ValueError as e:
                d.error(m.at(f"values[{i}]"), str(e))

    @staticmethod
    def _max_values(op: str) -> tuple[int | None, str]:
        if op in ("SubString", "SubStringIgnCase"):
            return limits.MAX_SUBSTRINGS, ""
        if op == "CelExpr":
            return limits.MAX_CEL_EXPRS, ""
        if op == "Mask":
            # the others go to maps when there are many; Mask tests each value in turn
            return limits.MAX_MATCH_VALUES, (" values per entry: Vigil tests Mask values one by one in the "
                                             "kernel (limit MAX_MATCH_VALUES); split them over entries")
        return None, ""

    def _parser(self, op: str, atype: str, typed: bool) -> Callable[[str], object]:
        is_int = atype in INT_BITS
        if op in ("Equal", "NotEqual"):
            if is_int:
                return lambda v: self._int(v, atype)
            return _string(limits.MAX_STRING_LEN, "bytes", encoded=True)
        if op in ("Prefix", "NotPrefix"):
            return _string(limits.MAX_PREFIX_LEN, "characters")
        if op in ("Postfix", "NotPostfix"):
            return _string(limits.MAX_POSTFIX_LEN, "characters")
        if op in ("SubString", "SubStringIgnCase"):
            return _string(limits.MAX_SUBSTRING_LEN, "characters")
        if op == "Mask":
            return lambda v: self._int(v, atype, bits_only=True)
        if op in ONE_VALUE_OPS:
            return lambda v: self._int(v, atype)
        if op in ("InRange", "NotInRange"):
            return lambda v: self._range(v, atype)
        if op in ("InMap", "NotInMap"):
            return lambda v: self._map_value(v, atype)
        if op in PORT_OPS:
            return values.parse_port
        if op in ADDR_OPS:
            return values.parse_cidr
        if op == "Protocol":
            return values.parse_protocol
        if op == "Family":
            return values.parse_family
        if op == "State":
            return values.parse_tcp_state
        if op in FILE_OPS:
            return _file_type
        if op == "CelExpr":
            return _string(4096, "characters")
        return lambda v: v

    def _int(self, text: str, atype: str, bits_only: bool = False) -> int:
        """A value of an integer argument type: within the type's range (a signed type is read
        sign-extended, so 0xffffff9c of an int is no value it can have: -100 is); `bits_only`
        (Mask): any bit pattern of the type's width."""
        v = values.parse_int(text)
        bits = INT_BITS.get(atype)
        if bits is not None:
            signed = atype not in UNSIGNED and atype != "syscall64"
            lo = -(2 ** (bits - 1)) if signed else 0
            hi = 2 ** (bits - 1) - 1 if signed and not bits_only else 2**bits - 1
            if not lo <= v <= hi:
                raise ValueError(f"{text} does not fit argument type {atype} ({lo}..{hi})")
        return v

    def _range(self, text: str, atype: str) -> tuple[int, int]:
        lo, hi = values.parse_range(text)
        self._int(str(lo), atype)
        self._int(str(hi), atype)
        return lo, hi

    def _map_value(self, text: str, atype: str) -> object:
        if text.startswith("list:"):
            name = text[5:]
            ls = self.spec.list_named(name)
            if ls is None:
                raise ValueError(f'list "{name}" is not defined in spec.lists')
            if ls.type == "generated_ftrace":
                raise ValueError(f'list "{name}" is a generated_ftrace list: it names kernel functions, '
                                 "not values to match")
            return ls
        if atype == "syscall64" and values.is_syscall(text, bare_ok=False):
            return text
        a, b = values.parse_int_or_range(text)
        self._int(str(a), atype)
        self._int(str(b), atype)
        return a, b


def _string(limit: int, unit: str, encoded: bool = False) -> Callable[[str], str]:
    def parse(v: str) -> str:
        size = len(v.encode()) if encoded else len(v)
        if size > limit:
            raise ValueError(f"value is {size} {unit} long (max {limit})")
        return v
    return parse


def _file_type(v: str) -> str:
    if v not in enums.FILE_TYPES:
        raise ValueError(enum_message("file type", v, enums.FILE_TYPES))
    return v
