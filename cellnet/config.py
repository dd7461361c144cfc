"""The configuration of one cell.

Each cell reads one file, written in TOML (``cell.toml``) or JSON
(``cell.json``), into a frozen, typed, validated :class:`Config`::

    from cellnet.config import load_config

    config = load_config("cell.toml")
    config.cell.name          # "site-1"
    config.limits.max_message # 67108864

To build a configuration in code, pass the same structure as a mapping to
:func:`config_from_mapping`; it is validated exactly like a file.

Reference
=========

Every key, with its default. Only ``cell.name`` and one of ``cell.parent`` /
``cell.listen`` are required; everything else may be left out. The values in
``[cell]`` and ``[flower]`` are examples; all other values shown are the
defaults::

    [cell]
    # This cell's name: segments of ASCII letters, digits, "-" and "_" joined
    # by dots, e.g. "server", "site-1", "site-1.job-7". Required.
    name = "site-1"

    # Where to reach the parent cell: a URL, or a list of URLs tried in order
    # until one connects (e.g. grpc first, then a WebSocket on 443). The URL
    # scheme selects the driver. Default: no parent.
    parent = ["grpc://server.example.org:8002", "wss://server.example.org:443"]

    # URLs to accept links on: a list (a single string is accepted too).
    # Port 0 picks a free port. Default: none.
    # The server cell is the one with `listen` and no `parent`; any cell may
    # have both (a site that accepts direct links or child cells).
    listen = ["tcp://0.0.0.0:8003"]

    # URLs other cells should dial to reach this one, when they differ from
    # `listen` (a 0.0.0.0 listener, NAT, a proxy). Used for direct links.
    # Default: none (the bound `listen` URLs).
    advertise = ["tcp://10.0.0.5:8003"]

    [limits]
    # Sizes are integers (bytes) or strings such as "64KiB", "1.5MiB",
    # "10MB" (see cellnet.sizes for every accepted unit).
    max_message = "8GiB"   # largest message payload this cell sends or accepts,
                           # on every hop; larger payloads fail at the sender
    max_header = "64KiB"   # largest message header (at least 1KiB)
    chunk = "1MiB"         # payloads larger than this travel in chunks of this
                           # size (at most 16MiB), with flow control and resume
    window = "16MiB"       # credit per chunked transfer: bytes a sender may have
                           # in flight, and what a receiver buffers at most;
                           # must be >= chunk
    max_transfers = 32     # chunked transfers received at once; one more is
                           # refused (TransferFailed), so a receiver buffers at
                           # most max_transfers x window
    send_queue = 64        # frames buffered per link before senders wait

    [timeouts]
    # Seconds, as an integer or a float, always > 0.
    connect = 5.0              # to dial a URL
    handshake = 5.0            # for a new link to complete its handshake
    heartbeat_interval = 5.0   # between heartbeats on an idle link
    heartbeat_timeout = 15.0   # silence after which a peer is lost;
                               # must be > heartbeat_interval
    request = 30.0             # time budget of a request that sets none
    backoff_initial = 0.1      # first wait before reconnecting
    backoff_max = 5.0          # longest wait between reconnects;
                               # must be >= backoff_initial
    direct_retry = 2.0         # first wait before a failed or broken direct
                               # link is tried again (doubles while it fails)
    direct_retry_max = 300.0   # longest wait between direct-link attempts
    transfer_resume = 30.0     # how long a chunked transfer whose path broke
                               # waits for the other side before it fails

    [policy]
    # Name patterns of the cells this cell may link to directly instead of
    # through the server: "*" matches any characters (dots included), "?"
    # one character, e.g. ["site-*"]. Default: none (everything is relayed).
    # Both cells must name each other, and the one that is dialed needs a
    # listen URL (see cellnet.direct). A cell with a parent accepts links
    # only from the cells named here and from cells below it.
    direct = []

    [tls]
    # Optional: certificates for secure URL schemes (tls://, grpcs://,
    # https:// or wss://, rediss://); see cellnet.tls. PEM files.
    ca = "kit/ca.pem"      # verifies peers; a listener with a CA requires
                           # client certificates (mutual TLS)
    cert = "kit/site-1.pem"
    key = "kit/site-1.key"

    [flower]
    # Optional: the Flower bridge. Leave the table out when not used.
    # In a client cell: the host:port of the local server its SuperNode
    # connects to. Default: not set.
    listen = "127.0.0.1:9201"
    # In the server cell: the host:port of the SuperLink's Fleet API.
    # Default: not set.
    superlink = "127.0.0.1:9092"
    # In a client cell: the cell that forwards calls to the SuperLink.
    server = "server"
    # Largest message body the bridge forwards.
    max_body = "64MiB"

Rules
-----

* Unknown tables and keys are errors, with a "did you mean" suggestion.
* Wrong types are errors; nothing is silently converted (a ``str`` where a
  list of URLs is expected counts as a list of one).
* Every error is a :class:`~cellnet.errors.ConfigError` whose message names
  the file, the dotted key and what was expected, e.g.::

      cell.toml: timeouts.heartbeat_timeout: expected a number of seconds > 0, got "abc"

* URLs must have the form ``scheme://...``; the scheme is lowercased here and
  checked against the installed drivers when the cell starts.
* Relative file paths resolve from the folder of the config file (from the
  working directory for :func:`config_from_mapping` without ``base_dir``).
* JSON files have the same structure: ``{"cell": {"name": "site-1", ...}}``.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from .errors import CellnetError, ConfigError, DriverUnavailable, InvalidCellName, UnknownScheme
from .names import match_pattern, validate_name
from .sizes import GiB, KiB, MiB, parse_size
from .sizes import _show  # one spelling of values in every error
from .tls import SECURE_SCHEMES, TlsSettings

#: bounds of ``limits.chunk``; every link accepts frames of MAX_CHUNK bytes
MIN_CHUNK = 4 * KiB
#: the smallest ``limits.max_header``: room for the routing fields and a short route
MIN_HEADER = 1 * KiB
MAX_CHUNK = 16 * MiB

# -- parsing one value -------------------------------------------------------
#
# Each key names a parser ``(value, dotted_key, ctx) -> parsed value`` in its
# dataclass field's metadata; a parser raises ConfigError through ctx.error.


@dataclass(frozen=True, slots=True)
class _Ctx:
    source: str
    base_dir: Path | None

    def error(
        self, key: str, expected: str, value: object, reason: str = ""
    ) -> ConfigError:
        why = f" ({reason})" if reason else ""
        return ConfigError(
            f"{self.source}: {key}: expected {expected}, got {_show(value)}{why}"
        )


_Parser = Callable[[Any, str, _Ctx], Any]


def _name(value: object, key: str, ctx: _Ctx) -> str:
    try:
        return validate_name(value)
    except InvalidCellName as e:
        raise InvalidCellName(f"{ctx.source}: {key}: {e}") from None


_URL_EXPECTED = 'a URL like "tcp://host:port"'


def _url(value: object, key: str, ctx: _Ctx) -> str:
    if not isinstance(value, str):
        raise ctx.error(key, _URL_EXPECTED, value)
    if any(c.isspace() or not c.isprintable() for c in value):
        raise ctx.error(key, _URL_EXPECTED, value, "URLs contain no spaces")
    scheme, sep, rest = value.partition("://")
    if not sep or not scheme:
        raise ctx.error(key, _URL_EXPECTED, value, "no scheme://")
    if not rest:
        raise ctx.error(key, _URL_EXPECTED, value, "nothing after scheme://")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 -- raises ValueError for a bad port
    except ValueError as e:
        raise ctx.error(key, _URL_EXPECTED, value, str(e).lower()) from None
    if parts.scheme.lower() != scheme.lower():
        raise ctx.error(key, _URL_EXPECTED, value, f'invalid scheme "{scheme}"')
    url = scheme.lower() + value[len(scheme) :]
    _check_with_driver(url, key, ctx)
    return url


def _check_with_driver(url: str, key: str, ctx: _Ctx) -> None:
    """The URL's driver checks the rest (port, path, query); an unknown
    scheme names the known ones. A driver whose extra is not installed is
    reported when the cell starts, with the command that installs it."""
    from .registry import default_registry

    try:
        default_registry().for_url(url).check_url(url)
    except DriverUnavailable:
        return
    except UnknownScheme as exc:  # the URL is fine, the scheme is what is unknown
        raise ctx.error(key, "a URL with a known scheme", url, str(exc)) from None
    except CellnetError as exc:
        text = str(exc)
        prefix = f"{url!r}: "
        raise ctx.error(key, _URL_EXPECTED, url, text[len(prefix):] if text.startswith(prefix) else text) from None


def _urls(value: object, key: str, ctx: _Ctx) -> tuple[str, ...]:
    if isinstance(value, str):
        return (_url(value, key, ctx),)
    if not isinstance(value, (list, tuple)):
        raise ctx.error(key, f"{_URL_EXPECTED} or a list of URLs", value)
    return tuple(_url(v, f"{key}[{i}]", ctx) for i, v in enumerate(value))


def _seconds(value: object, key: str, ctx: _Ctx) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ctx.error(key, "a number of seconds > 0", value)
    return float(value)


def _size(value: object, key: str, ctx: _Ctx) -> int:
    size = parse_size(value, key=f"{ctx.source}: {key}")  # type: ignore[arg-type]
    if size == 0:
        raise ctx.error(key, "a size > 0", value)
    return size


def _count(value: object, key: str, ctx: _Ctx) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ctx.error(key, "an integer >= 1", value)
    return value


_PATTERN_RE = re.compile(r"[A-Za-z0-9_.*?-]{1,255}")
_PATTERN_EXPECTED = (
    'a cell name pattern like "site-*" (letters, digits, "-", "_", "."'
    ' and the wildcards "*" and "?")'
)


def _patterns(value: object, key: str, ctx: _Ctx) -> tuple[str, ...]:
    if isinstance(value, str):
        keyed = [(key, value)]
    elif isinstance(value, (list, tuple)):
        keyed = [(f"{key}[{i}]", item) for i, item in enumerate(value)]
    else:
        raise ctx.error(key, f"a list of {_PATTERN_EXPECTED}", value)
    for item_key, item in keyed:
        if not isinstance(item, str) or not _PATTERN_RE.fullmatch(item):
            raise ctx.error(item_key, _PATTERN_EXPECTED, item)
    return tuple(item for _, item in keyed)


_HOST_PORT_EXPECTED = 'an address "host:port" with a port 1..65535'


def _host_port(value: object, key: str, ctx: _Ctx) -> str:
    if not isinstance(value, str):
        raise ctx.error(key, _HOST_PORT_EXPECTED, value)
    host, sep, port = value.rpartition(":")
    if "://" in value:
        reason = "no scheme:// here"
    elif any(c.isspace() or not c.isprintable() for c in value):
        reason = "no spaces"
    elif not sep or not host:
        reason = "no host:port"
    elif host.startswith("[") != host.endswith("]") or host == "[]":
        reason = "unbalanced brackets"
    elif ":" in host and not host.startswith("["):
        reason = 'write an IPv6 host in brackets: "[::1]:9201"'
    elif not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        reason = "bad port"
    else:
        return value
    raise ctx.error(key, _HOST_PORT_EXPECTED, value, reason)


def _resolve_path(value: str | os.PathLike[str], base_dir: Path | None) -> Path:
    """Return *value* as a path; a relative one is taken from *base_dir*.

    ``~`` is expanded. *base_dir* is the folder of the config file; without
    one, relative paths are taken from the current working directory, made
    absolute now so that a later ``chdir`` does not change their meaning.
    """
    path = Path(value).expanduser()
    if path.is_absolute():
        return path
    return (base_dir if base_dir is not None else Path.cwd()) / path


def _path(value: object, key: str, ctx: _Ctx) -> Path:
    # For file keys (TLS certificates, keys): resolved from the config's folder.
    if not isinstance(value, str) or not value:
        raise ctx.error(key, "a file path", value)
    return _resolve_path(value, ctx.base_dir)


def _key(default: Any = MISSING, *, parse: _Parser, expected: str = "") -> Any:
    """A config key: its default (none = required) and its parser."""
    return field(default=default, metadata={"parse": parse, "expected": expected})


# -- the sections ------------------------------------------------------------
#
# The field defaults below are the one place where defaults live; the module
# docstring documents them (a test checks the two agree).


@dataclass(frozen=True, slots=True)
class CellSection:
    """``[cell]``: who this cell is and where it connects."""

    name: str = _key(parse=_name, expected='a cell name like "site-1"')
    #: URLs of the parent cell, tried in order.
    parent: tuple[str, ...] = _key((), parse=_urls)
    #: URLs this cell accepts links on.
    listen: tuple[str, ...] = _key((), parse=_urls)
    #: URLs other cells should dial to reach this one.
    advertise: tuple[str, ...] = _key((), parse=_urls)

    @property
    def is_server(self) -> bool:
        """Whether this is the server cell: it listens and has no parent."""
        return bool(self.listen) and not self.parent


@dataclass(frozen=True, slots=True)
class Limits:
    """``[limits]``: sizes in bytes and queue lengths."""

    max_message: int = _key(8 * GiB, parse=_size)
    max_header: int = _key(64 * KiB, parse=_size)
    send_queue: int = _key(64, parse=_count)
    #: payloads larger than this travel in chunks of this size
    chunk: int = _key(1 * MiB, parse=_size)
    #: credit per chunked transfer (bytes in flight, and buffered at the receiver)
    window: int = _key(16 * MiB, parse=_size)
    #: chunked transfers this cell receives at once (each holds at most a window)
    max_transfers: int = _key(32, parse=_count)

    @property
    def max_frame(self) -> int:
        """The largest frame payload a link accepts: one chunk, or a whole
        message when messages are smaller than the largest chunk."""
        return min(self.max_message, MAX_CHUNK)

    def check(self, source: str = "limits") -> None:
        """Raise :class:`ConfigError` when the sizes do not fit together."""
        if self.max_header < MIN_HEADER:
            raise ConfigError(
                f"{source}: limits.max_header: expected a size >= {MIN_HEADER} bytes (a message's"
                f" routing fields need that much), got {self.max_header}"
            )
        if not MIN_CHUNK <= self.chunk <= MAX_CHUNK:
            raise ConfigError(
                f"{source}: limits.chunk: expected a size from {MIN_CHUNK} to {MAX_CHUNK} bytes,"
                f" got {self.chunk}"
            )
        if self.window < self.chunk:
            raise ConfigError(
                f"{source}: limits.window: expected a size >= limits.chunk ({self.chunk}),"
                f" got {self.window}"
            )


@dataclass(frozen=True, slots=True)
class Timeouts:
    """``[timeouts]``: durations in seconds."""

    connect: float = _key(5.0, parse=_seconds)
    handshake: float = _key(5.0, parse=_seconds)
    heartbeat_interval: float = _key(5.0, parse=_seconds)
    heartbeat_timeout: float = _key(15.0, parse=_seconds)
    request: float = _key(30.0, parse=_seconds)
    backoff_initial: float = _key(0.1, parse=_seconds)
    backoff_max: float = _key(5.0, parse=_seconds)
    #: first wait before a direct link is tried again (doubles while it fails)
    direct_retry: float = _key(2.0, parse=_seconds)
    direct_retry_max: float = _key(300.0, parse=_seconds)
    #: how long a broken chunked transfer waits for the other side
    transfer_resume: float = _key(30.0, parse=_seconds)


@dataclass(frozen=True, slots=True)
class Policy:
    """``[policy]``: what this cell is allowed to do."""

    #: Name patterns of cells this cell may link to directly.
    direct: tuple[str, ...] = _key((), parse=_patterns)

    def allows_direct(self, name: str) -> bool:
        """Whether a direct link to the cell *name* is allowed."""
        return any(match_pattern(name, pattern) for pattern in self.direct)


@dataclass(frozen=True, slots=True)
class TlsSection:
    """``[tls]``: PEM files for secure URL schemes (see :mod:`cellnet.tls`)."""

    ca: Path | None = _key(None, parse=_path)
    cert: Path | None = _key(None, parse=_path)
    key: Path | None = _key(None, parse=_path)

    def settings(self) -> TlsSettings:
        return TlsSettings(self.ca, self.cert, self.key)


@dataclass(frozen=True, slots=True)
class FlowerSection:
    """``[flower]``: the Flower bridge."""

    #: In a client cell: host:port of the local server the SuperNode uses.
    listen: str | None = _key(None, parse=_host_port)
    #: In the server cell: host:port of the SuperLink's Fleet API.
    superlink: str | None = _key(None, parse=_host_port)
    #: In a client cell: the name of the cell that runs next to the SuperLink.
    server: str = _key("server", parse=_name, expected='a cell name like "server"')
    max_body: int = _key(64 * MiB, parse=_size)


@dataclass(frozen=True, slots=True)
class Config:
    """A cell's whole configuration. Build it with :func:`load_config` or
    :func:`config_from_mapping`, which validate every value."""

    cell: CellSection
    limits: Limits = field(default_factory=Limits)
    timeouts: Timeouts = field(default_factory=Timeouts)
    policy: Policy = field(default_factory=Policy)
    tls: TlsSection | None = None
    flower: FlowerSection | None = None
    #: Where the configuration came from (a file path), for messages.
    source: str = "<mapping>"

    @property
    def name(self) -> str:
        """The cell's name (``cell.name``)."""
        return self.cell.name

    def with_name(self, new_name: str) -> Config:
        """Return a copy for a cell called *new_name* (validated).

        CLI tools use it to join as ``<name>-cli-<pid>`` next to a live cell.
        """
        cell = dataclasses.replace(self.cell, name=validate_name(new_name))
        return dataclasses.replace(self, cell=cell)


# table name -> (section class, required)
_SECTIONS: dict[str, tuple[type[Any], bool]] = {
    "cell": (CellSection, True),
    "limits": (Limits, False),
    "timeouts": (Timeouts, False),
    "policy": (Policy, False),
    "tls": (TlsSection, False),
    "flower": (FlowerSection, False),
}

# key -> the first table that has it, to point misplaced keys to their table
_HOME = {
    f.name: table
    for table, (cls, _) in reversed(_SECTIONS.items())
    for f in dataclasses.fields(cls)
}


# -- loading -----------------------------------------------------------------


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate the config file at *path*.

    A ``.json`` file is read as JSON, any other file as TOML. Relative paths
    inside the file resolve from the file's folder. Raises
    :class:`~cellnet.errors.ConfigError` when the file is missing, unreadable,
    not valid TOML/JSON or not a valid configuration.
    """
    source = os.fspath(path)
    file = Path(path)
    try:
        raw = file.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{source}: config file not found") from None
    except OSError as e:
        raise ConfigError(f"{source}: cannot read config file: {e.strerror or e}") from None
    data = _decode(raw, source, json_file=file.suffix.lower() == ".json")
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected an object of tables, got {_show(data)}")
    return config_from_mapping(data, source=source, base_dir=file.absolute().parent)


def _decode(raw: bytes, source: str, *, json_file: bool) -> object:
    try:
        if json_file:
            return json.loads(raw)
        return tomllib.loads(raw.decode("utf-8-sig"))
    except json.JSONDecodeError as e:
        where = f"at line {e.lineno}, column {e.colno}"
        raise ConfigError(f"{source}: invalid JSON: {e.msg} ({where})") from None
    except tomllib.TOMLDecodeError as e:  # its message ends with the line
        raise ConfigError(f"{source}: invalid TOML: {e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{source}: not UTF-8 text (bad byte at offset {e.start})") from None


def config_from_mapping(
    data: Mapping[str, Any], *, source: str = "<mapping>", base_dir: Path | None = None
) -> Config:
    """Validate *data* (the structure of a config file) into a :class:`Config`.

    *source* names the origin in error messages; *base_dir* is the folder
    relative paths resolve from (default: the current working directory).
    """
    ctx = _Ctx(source, base_dir)
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a mapping of tables, got {_show(data)}")
    for table in data:
        if table not in _SECTIONS:
            raise _unknown(str(table), "", _SECTIONS, ctx)
    sections: dict[str, Any] = {}
    for table, (cls, required) in _SECTIONS.items():
        if table in data:
            sections[table] = _section(cls, data[table], table, ctx)
        elif required:
            raise ConfigError(
                f"{source}: {table}: expected a [{table}] table, but it is missing"
            )
    config = Config(**sections, source=source)
    _check(config, ctx)
    return config


_T = TypeVar("_T")


def _section(cls: type[_T], table: object, prefix: str, ctx: _Ctx) -> _T:
    if not isinstance(table, Mapping):
        raise ctx.error(prefix, f"a table [{prefix}]", table)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key in table:
        if key not in fields:
            raise _unknown(str(key), prefix, fields, ctx)
    values: dict[str, Any] = {}
    for name, f in fields.items():
        key = f"{prefix}.{name}"
        if name in table:
            values[name] = f.metadata["parse"](table[name], key, ctx)
        elif f.default is MISSING:
            expected = f.metadata["expected"]
            raise ConfigError(f"{ctx.source}: {key}: expected {expected}, but it is missing")
    return cls(**values)


def _unknown(name: str, prefix: str, known: Mapping[str, Any], ctx: _Ctx) -> ConfigError:
    what, key = ("key", f"{prefix}.{name}") if prefix else ("table", name)
    home = _HOME.get(name)
    close = difflib.get_close_matches(name, list(known), n=1)
    if home is not None and home != prefix:
        hint = f' (did you mean "{home}.{name}"? it is a key of [{home}])'
    elif close:
        hint = f' (did you mean "{close[0]}"?)'
    else:
        hint = ""
    return ConfigError(
        f"{ctx.source}: {key}: unknown {what}{hint}; expected one of: {', '.join(known)}"
    )


def _check(config: Config, ctx: _Ctx) -> None:
    """Rules that involve more than one key."""
    cell, t = config.cell, config.timeouts
    if not cell.parent and not cell.listen:
        raise ConfigError(
            f"{ctx.source}: cell: expected cell.parent (a client cell) or"
            " cell.listen (the server cell), got neither"
        )
    tls = config.tls
    if tls is not None and (tls.cert is None) != (tls.key is None):
        missing = "tls.key" if tls.key is None else "tls.cert"
        raise ConfigError(
            f"{ctx.source}: {missing}: expected a file path, but it is missing"
            " (tls.cert and tls.key go together)"
        )
    for url in cell.listen:
        scheme = urlsplit(url).scheme
        if scheme in SECURE_SCHEMES and (tls is None or tls.cert is None):
            raise ConfigError(
                f"{ctx.source}: cell.listen: {url} is a TLS listener and needs"
                " [tls] cert and key"
            )
    config.limits.check(ctx.source)
    if t.heartbeat_timeout <= t.heartbeat_interval:
        raise ctx.error(
            "timeouts.heartbeat_timeout",
            f"a number of seconds > timeouts.heartbeat_interval ({t.heartbeat_interval})",
            t.heartbeat_timeout,
        )
    if t.backoff_max < t.backoff_initial:
        raise ctx.error(
            "timeouts.backoff_max",
            f"a number of seconds >= timeouts.backoff_initial ({t.backoff_initial})",
            t.backoff_max,
        )


__all__ = [
    "CellSection",
    "Config",
    "FlowerSection",
    "Limits",
    "Policy",
    "Timeouts",
    "TlsSection",
    "config_from_mapping",
    "load_config",
]
