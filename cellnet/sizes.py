"""Byte sizes as people write them: ``100``, ``"64KiB"``, ``"1.5MiB"``, ``"10MB"``.

Every size setting (``limits.max_message``, ``flower.max_body``, ``ping
--size``, ...) goes through :func:`parse_size`, so they all accept the same
forms:

* an integer number of bytes, ``>= 0`` (``True``/``False`` are not numbers
  here); a float is accepted only when it is a whole number (``1e9``);
* a string: a number, optional whitespace, an optional unit. Units are
  case-insensitive:

  - ``B`` or no unit: bytes;
  - ``KB``, ``MB``, ``GB``, ``TB``, ``PB``, ``EB``: powers of 1000 (SI);
  - ``KiB``, ``MiB``, ``GiB``, ``TiB``, ``PiB``, ``EiB``: powers of 1024 (IEC);
  - ``K``, ``M``, ``G``, ``T``, ``P``, ``E`` alone: powers of 1024, as in
    ``java -Xmx8g`` or ``docker run --memory 512m`` (a bare letter is most
    often meant as a buffer size).

  The number may have a fraction (``"1.5MiB"``, ``".5GB"``); the result is
  rounded down to a whole byte. A count of bytes itself must be whole:
  ``"1.5"`` and ``"1.5B"`` are errors, not 1 byte.

Bad values raise :class:`~cellnet.errors.ConfigError` naming the setting, the
value and the accepted forms.
"""

from __future__ import annotations

import json
import math
import re
from fractions import Fraction

from .errors import ConfigError

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
TiB = 1 << 40

_UNITS: dict[str, int] = {"": 1, "b": 1}
for _i, _p in enumerate("kmgtpe", start=1):
    _UNITS[_p] = 1024**_i
    _UNITS[_p + "b"] = 1000**_i
    _UNITS[_p + "ib"] = 1024**_i

_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*", re.ASCII | re.IGNORECASE)

_FORMS = (
    'a size: an integer >= 0 or a string like "100", "64KiB", "1.5MiB" or "10MB"'
    " (KB, MB, GB, TB = powers of 1000; KiB, MiB, GiB, TiB and K, M, G, T"
    " = powers of 1024)"
)


def parse_size(value: int | str, *, key: str = "size") -> int:
    """Return *value* as a number of bytes.

    *key* names the setting in error messages (``"limits.max_message"``).
    Raises :class:`~cellnet.errors.ConfigError` for anything that is not a
    size; see the module docstring for the accepted forms.
    """
    if isinstance(value, bool):
        raise _error(key, value)
    if isinstance(value, int):
        if value < 0:
            raise _error(key, value, "a size cannot be negative")
        return value
    if isinstance(value, float):
        if not (math.isfinite(value) and value.is_integer() and value >= 0):
            raise _error(key, value, "a number of bytes must be a whole number >= 0")
        return int(value)
    if not isinstance(value, str):
        raise _error(key, value)
    match = _SIZE_RE.fullmatch(value)
    if match is None:
        if value.strip().startswith("-"):
            raise _error(key, value, "a size cannot be negative")
        raise _error(key, value)
    number, unit = match.groups()
    scale = _UNITS.get(unit.lower())
    if scale is None:
        raise _error(key, value, f'unknown unit "{unit}"')
    amount = Fraction(number)
    if scale == 1 and amount.denominator != 1:
        raise _error(key, value, "a number of bytes must be a whole number")
    return math.floor(amount * scale)


def format_size(n: int) -> str:
    """Return *n* bytes in a human-readable form with IEC units.

    ``format_size(512) == "512 B"``, ``format_size(64 * MiB) == "64.0 MiB"``,
    ``format_size(1536) == "1.5 KiB"``.
    """
    if n < 0:
        return "-" + format_size(-n)
    if n < KiB:
        return f"{n} B"
    units = ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB")
    for power, unit in enumerate(units, start=1):
        value = n / 1024**power
        # Move up a unit when rounding would print "1024.0".
        if round(value, 1) < 1024 or unit == units[-1]:
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")  # pragma: no cover


def _error(key: str, value: object, reason: str = "") -> ConfigError:
    why = f" ({reason})" if reason else ""
    return ConfigError(f"{key}: expected {_FORMS}, got {_show(value)}{why}")


def _show(value: object) -> str:
    # Spell values the way they are written in a TOML or JSON file.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        if len(value) > 80:
            value = value[:77] + "..."
        return json.dumps(value, ensure_ascii=False)
    if value is None:
        return "null"
    if isinstance(value, (int, float)):
        return repr(value)
    return f"a {type(value).__name__}"


__all__ = ["GiB", "KiB", "MiB", "TiB", "format_size", "parse_size"]
