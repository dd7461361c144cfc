"""Cell names and the tree they form.

Every cell has a hierarchical name: one or more *segments* joined by dots::

    server          the server cell (by convention)
    site-1          a client cell
    site-1.job-7    a child of site-1 (e.g. one job running at that site)
    server.job-a    a child of the server

The rules, checked by :func:`validate_name`:

* a segment is 1 to 64 characters, each an ASCII letter, digit, ``-`` or ``_``;
* ``.`` only separates segments: no leading, trailing or doubled dots;
* the whole name is at most 255 characters.

Names are case-sensitive: ``Site-1`` and ``site-1`` are different cells.

The helpers below (:func:`parent_name`, :func:`is_ancestor`,
:func:`child_toward`, ...) run on the routing hot path. They are plain string
operations and assume their arguments are already valid names; validate names
where they enter the process (config, handshake) and not again on every hop.
"""

from __future__ import annotations

import re
import reprlib
from functools import lru_cache
from typing import Callable

from .errors import InvalidCellName

#: Longest allowed segment, in characters.
MAX_SEGMENT = 64
#: Longest allowed name, in characters.
MAX_NAME = 255

_SEGMENT = rf"[A-Za-z0-9_-]{{1,{MAX_SEGMENT}}}"
_NAME_RE = re.compile(rf"{_SEGMENT}(?:\.{_SEGMENT})*")
_BAD_CHAR_RE = re.compile(r"[^A-Za-z0-9_.-]")

_RULES = "a name is segments of ASCII letters, digits, '-' and '_', joined by single dots"


def validate_name(name: object) -> str:
    """Return *name* unchanged if it is a valid cell name.

    Raises :class:`~cellnet.errors.InvalidCellName` (a
    :class:`~cellnet.errors.ConfigError`) whose message quotes the name and
    says which rule it breaks. Anything that is not a ``str`` is invalid.
    """
    if type(name) is str:
        return _validate_str(name)
    if not isinstance(name, str):
        raise InvalidCellName(
            f"invalid cell name {reprlib.repr(name)}:"
            f" expected a str, got {type(name).__name__}"
        )
    # A str subclass: check it without caching it.
    if len(name) > MAX_NAME or not _NAME_RE.fullmatch(name):
        raise _explain(str(name))
    return name


@lru_cache(maxsize=4096)
def _validate_str(name: str) -> str:
    # Only valid names are cached: lru_cache does not store raised exceptions.
    if len(name) > MAX_NAME or not _NAME_RE.fullmatch(name):
        raise _explain(name)
    return name


def _explain(name: str) -> InvalidCellName:
    """Return the error naming the first rule that the invalid *name* breaks."""
    shown = repr(name) if len(name) <= 80 else repr(name[:77] + "...")
    if not name:
        reason = "a name must not be empty"
    elif len(name) > MAX_NAME:
        reason = f"it is {len(name)} characters long; the limit is {MAX_NAME}"
    elif (bad := _BAD_CHAR_RE.search(name)) is not None:
        reason = f"character {bad.group()!r} is not allowed; {_RULES}"
    elif name.startswith("."):
        reason = f"it starts with '.'; {_RULES}"
    elif name.endswith("."):
        reason = f"it ends with '.'; {_RULES}"
    elif ".." in name:
        reason = f"it has an empty segment ('..'); {_RULES}"
    else:
        long = next(s for s in name.split(".") if len(s) > MAX_SEGMENT)
        reason = (
            f"segment {long[:20] + '...'!r} is {len(long)} characters long;"
            f" the limit is {MAX_SEGMENT}"
        )
    return InvalidCellName(f"invalid cell name {shown}: {reason}")


def is_valid_name(name: object) -> bool:
    """Return whether *name* is a valid cell name (never raises)."""
    try:
        validate_name(name)
    except InvalidCellName:
        return False
    return True


def parent_name(name: str) -> str | None:
    """Return the parent of *name*, or ``None`` for a top-level name.

    ``parent_name("site-1.job-7") == "site-1"``; ``parent_name("site-1") is None``.
    """
    head, dot, _ = name.rpartition(".")
    return head if dot else None


def root_name(name: str) -> str:
    """Return the first segment of *name*: ``root_name("site-1.job-7") == "site-1"``."""
    return name.partition(".")[0]


def is_ancestor(ancestor: str, name: str) -> bool:
    """Return whether *ancestor* is a strict ancestor of *name*.

    ``site-1`` is an ancestor of ``site-1.job-7`` and ``site-1.job-7.x``, but
    not of ``site-10`` and not of itself.
    """
    n = len(ancestor)
    return len(name) > n and name[n] == "." and name.startswith(ancestor)


def child_toward(name: str, dest: str) -> str | None:
    """Return *name*'s direct child on the way down to *dest*.

    If *dest* is below *name*, this is the name of the child of *name* that is
    *dest* or one of its ancestors; otherwise ``None``::

        child_toward("site-1", "site-1.job-7.x") == "site-1.job-7"
        child_toward("site-1", "site-1.job-7") == "site-1.job-7"
        child_toward("site-1", "site-2") is None
    """
    if not is_ancestor(name, dest):
        return None
    end = dest.find(".", len(name) + 1)
    return dest if end < 0 else dest[:end]


def match_pattern(name: str, pattern: str) -> bool:
    """Return whether *name* matches the shell-style *pattern*.

    ``*`` matches any run of characters (including none, and including dots)
    and ``?`` matches exactly one character; every other character matches
    only itself. Matching is case-sensitive and covers the whole name::

        match_pattern("site-1", "site-*")        -> True
        match_pattern("site-1.job-7", "site-*")  -> True   (* crosses dots)
        match_pattern("site-1", "site-?")        -> True
        match_pattern("Site-1", "site-*")        -> False
        match_pattern("x", "*")                  -> True
    """
    return _compile_pattern(pattern)(name) is not None


@lru_cache(maxsize=1024)
def _compile_pattern(pattern: str) -> Callable[[str], re.Match[str] | None]:
    # Only * and ? are special (unlike fnmatch, [...] is literal), so a pattern
    # means the same thing whatever characters it contains.
    parts = [".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern]
    return re.compile("".join(parts), re.DOTALL).fullmatch


__all__ = [
    "MAX_NAME",
    "MAX_SEGMENT",
    "child_toward",
    "is_ancestor",
    "is_valid_name",
    "match_pattern",
    "parent_name",
    "root_name",
    "validate_name",
]
