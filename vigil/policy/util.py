"""Small helpers shared by the validators."""
from __future__ import annotations

import difflib
from collections.abc import Iterable

# Spellings seen in docs or accepted by Tetragon's looser Go parser, mapped to the CRD spelling.
_ALIASES = {
    "SubStringIgnoreCase": "SubStringIgnCase",
    "NotSPortPriv": "NotSportPriv",
    "eq": "Equal", "neq": "NotEqual", "gt": "GT", "lt": "LT", "mask": "Mask",
    "prefix": "Prefix", "postfix": "Postfix", "saddr": "SAddr", "daddr": "DAddr",
    "sport": "SPort", "dport": "DPort", "protocol": "Protocol", "family": "Family",
    "state": "State",
}


def suggest(word: str, choices: Iterable[str]) -> str | None:
    choices = list(choices)
    if word in _ALIASES and _ALIASES[word] in choices:
        return _ALIASES[word]
    for c in choices:  # a case slip is the most common mistake
        if c.lower() == word.lower():
            return c
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return close[0] if close else None


def enum_message(what: str, value: str, choices: Iterable[str]) -> str:
    choices = list(choices)
    msg = f'unknown {what} "{value}" (expected one of {", ".join(choices)})'
    hint = suggest(value, choices)
    return f'{msg}; did you mean "{hint}"?' if hint else msg
