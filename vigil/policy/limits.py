"""Limits the validator enforces. Tetragon's documented limits, plus Vigil's own kernel limits
where Tetragon leaves the number to its BPF side (marked VIGIL)."""
from __future__ import annotations

MAX_SELECTORS = 5  # selectors per hook
MAX_MATCH_ARGS = 5  # matchArgs + matchData entries per selector (kernel >= 5.3)
MAX_MATCH_BINARIES = 1  # matchBinaries entries per selector
MAX_MATCH_PARENT_BINARIES = 1  # matchParentBinaries entries per selector
MAX_MATCH_NAMESPACE_CHANGES = 1  # matchNamespaceChanges entries per selector
MAX_MATCH_NAMESPACES = 10  # matchNamespaces entries per selector
MAX_NAMESPACE_VALUES = 4  # values per matchNamespaces entry
MAX_ACTIONS = 3  # matchActions (and matchReturnActions) per selector
MAX_TAGS = 16
MAX_MESSAGE_LEN = 256
MAX_PREFIX_LEN = 256  # chars of a Prefix/NotPrefix value
MAX_POSTFIX_LEN = 128  # chars of a Postfix/NotPostfix value
MAX_STRING_LEN = 4096  # bytes of an Equal/NotEqual string value
MAX_HOOK_ARGS = 5  # args per hook (event record has 5 argument slots); USDT documents the same
MAX_USDT_ARGS = 5
MAX_ENFORCERS = 1
MAX_SUBSTRINGS = 100  # SubString/SubStringIgnCase values per entry
MAX_SUBSTRING_LEN = 100
MAX_CEL_EXPRS = 8
MAX_SIGNAL = 64
MAX_ERRNO = 4095
MAX_FOLLOW_CHILDREN = 64  # matchBinaries entries with followChildren per policy
MAX_NAME_LEN = 253  # metadata.name is a DNS-1123 subdomain

# VIGIL: values per matchArgs/matchData/matchReturnArgs entry for operators that are compiled
# into fixed-size arrays (Equal, NotEqual, Prefix, Postfix, Mask, InRange, port/addr ops, ...).
# Tetragon's docs say 4; Vigil's selector programs hold 8. InMap/NotInMap use a hash map instead.
MAX_MATCH_VALUES = 8
# VIGIL: values per matchPIDs entry (docs say 4; Vigil's PID filter holds 8).
MAX_PID_VALUES = 8
