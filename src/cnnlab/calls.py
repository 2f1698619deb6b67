"""Calls written `name(a, b, key=value)`: the syntax of spec layers, teaching steps and augmentation items.

A call is a name, then optionally arguments in parentheses separated by commas; an argument is
a value (positional) or `key=value`. Names and keys are case-insensitive. `parse_call` reads the
form; what the arguments mean is left to the caller. `Arg.value` reads a value as the spec
language writes it: an integer, a float, `true`/`false`, a word (`same`) or a pair (`3x5`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cnnlab.errors import UsageError

Value = int | float | bool | str | tuple[int, int]

_CALL = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?:\((.*)\))?\s*", re.S)


@dataclass(frozen=True)
class Arg:
    """One argument of a call."""

    key: str | None  # lowercased; None for a positional argument
    text: str  # the value as written, without surrounding spaces
    source: str  # the whole argument as written ("stride=2"), for error messages

    @property
    def value(self) -> Value:
        """The value read as the spec language writes it; a UsageError if it is none of its forms."""
        text = self.text
        if len(text) > 100 and re.fullmatch(r"[+-]?\d+|\d+x\d+", text):  # int() refuses 4,301 digits or more
            raise UsageError(f"the number {text[:20]}... has {len(text):,} characters; no argument needs that many")
        if re.fullmatch(r"[+-]?\d+", text):
            return int(text)
        if re.fullmatch(r"\d+x\d+", text):
            a, b = text.split("x")
            return (int(a), int(b))
        if text.lower() in ("true", "false"):
            return text.lower() == "true"
        try:
            return float(text)
        except ValueError:
            pass
        if re.fullmatch(r"[A-Za-z_]+", text):
            return text.lower()
        raise UsageError(f"cannot read the value {text!r}: use a number, true/false, a word or a pair like 3x5")


@dataclass(frozen=True)
class Call:
    """`name(args)` as read: the name lowercased, the arguments in the order written."""

    name: str
    args: tuple[Arg, ...] = ()


def parse_call(text: str, what: str = "call", example: str = "name(1, key=2)") -> Call:
    """Read `name`, `name()` or `name(a, key=b, ...)`.

    Arguments are split at every comma, so a value holds no comma (there is no quoting or
    nesting in either language). Text of another form is a UsageError that quotes it and shows
    `what` it should be with an `example`.
    """
    m = _CALL.fullmatch(text)
    if not m:
        raise UsageError(f"cannot read the {what} {text!r}: write it as name or name(arguments), e.g. {example}")
    body = (m.group(2) or "").strip()
    args = []
    for part in body.split(",") if body else []:
        key, eq, value = (s.strip() for s in part.partition("="))
        args.append(Arg(key.lower(), value, part.strip()) if eq else Arg(None, part.strip(), part.strip()))
    return Call(m.group(1).lower(), tuple(args))
