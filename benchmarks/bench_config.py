"""The benchmark harness's config: the ``[bench]`` and ``[quick]`` tables of a
TOML file (every key is documented in :mod:`cellnet.benchmarks.harness`), and
the cell configs a run writes for one driver."""

from __future__ import annotations

import copy
import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from .drivers import DRIVERS
from .procs import BenchError, free_port

TOPOLOGIES = ("client-server", "relayed", "direct")
EXPECTED_ROUTES = {
    "client-server": ["site-1", "server"],
    "relayed": ["site-1", "server", "site-2"],
    "direct": ["site-3", "site-2"],
}
#: raw baselines that also run at every concurrency level (their ``measure`` takes ``concurrency``)
RAW_CONCURRENT = ("raw_echo",)
#: driver -> raw baseline modules (the first is the echo the ratios use)
RAW_MODULES = {
    "tcp": ("raw_echo", "raw_stream"),
    "grpc": ("raw_grpc_echo",),
    "http": ("raw_websocket_echo",),
    "redis": ("raw_redis_echo",),
}
MIB = 1024 * 1024
METRICS = ("rtt_median_us", "rtt_p99_us", "msgs_per_s", "mb_per_s")


def _size(value: Any, key: str) -> int:
    from cellnet.errors import ConfigError
    from cellnet.sizes import parse_size

    try:
        return parse_size(value, key=key)
    except ConfigError as exc:
        raise BenchError(str(exc)) from None


@dataclass
class BenchConfig:
    drivers: list[str] = field(default_factory=lambda: list(DRIVERS))
    topologies: list[str] = field(default_factory=lambda: list(TOPOLOGIES))
    sizes: list[int] = field(default_factory=lambda: [100, 4096, 64 * 1024, MIB, 16 * MIB, 64 * MIB])
    concurrency: list[int] = field(default_factory=lambda: [1, 32])
    repetitions: int = 3
    seed: int = 1
    duration: float = 0.25
    min_count: int = 3
    max_count: int = 20000
    warmup: int = 5
    max_inflight: int = 128 * MIB
    timeout: float = 300.0
    max_message: int = 1024 * MIB
    baselines: bool = True
    baseline_bytes: int = 256 * MIB
    baseline_min_count: int = 3
    baseline_max_count: int = 2000
    ready_timeout: float = 60.0
    compare: bool = True
    compare_sizes: list[int] = field(default_factory=lambda: [100, 1024, 64 * MIB])
    compare_large: list[int] = field(default_factory=lambda: [512 * MIB])
    compare_frame: bool = True

    QUICK = {
        "sizes": ["100B", "64KiB", "1MiB"], "repetitions": 1, "duration": 0.05, "min_count": 2,
        "baseline_bytes": "16MiB", "baseline_max_count": 300,
        "compare_sizes": ["100B", "1KiB"], "compare_large": ["64MiB"],
    }

    def apply(self, table: dict[str, Any], where: str) -> None:
        names = {f.name for f in dataclasses.fields(self)}
        for key, value in table.items():
            if key not in names:
                raise BenchError(f"{where}: unknown key {key!r}; known: {', '.join(sorted(names))}")
            ctx = f"{where}.{key}"
            if key in ("sizes", "compare_sizes", "compare_large"):
                value = sorted({_size(v, ctx) for v in _list(value, ctx)})
            elif key in ("max_inflight", "max_message", "baseline_bytes"):
                value = _size(value, ctx)
            elif key in ("drivers", "topologies"):
                value = [str(v) for v in _list(value, ctx)]
                known = DRIVERS if key == "drivers" else TOPOLOGIES
                bad = [v for v in value if v not in known]
                if bad:
                    raise BenchError(f"{ctx}: unknown {bad}; choose from {', '.join(known)}")
            elif key == "concurrency":
                value = [_positive_int(v, ctx) for v in _list(value, ctx)]
            elif key in ("baselines", "compare", "compare_frame"):
                if not isinstance(value, bool):
                    raise BenchError(f"{ctx}: expected true or false, got {value!r}")
            elif key in ("duration", "timeout", "ready_timeout"):
                if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                    raise BenchError(f"{ctx}: expected a positive number of seconds, got {value!r}")
                value = float(value)
            else:
                value = _positive_int(value, ctx, zero=key in ("warmup", "seed"))
            setattr(self, key, value)
        if not self.drivers or not self.topologies or not self.sizes or not self.concurrency:
            raise BenchError(f"{where}: drivers, topologies, sizes and concurrency must not be empty")
        if not self.compare_sizes:
            raise BenchError(f"{where}: compare_sizes must not be empty")
        self.sizes = sorted(set(self.sizes))
        self.concurrency = sorted(set(self.concurrency))
        self.max_message = max(self.max_message, max(self.sizes + self.compare_sizes) + 64 * 1024)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _list(value: Any, ctx: str) -> list[Any]:
    if not isinstance(value, list):
        raise BenchError(f"{ctx}: expected a list, got {value!r}")
    return value


def _positive_int(value: Any, ctx: str, zero: bool = False) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < (0 if zero else 1):
        raise BenchError(f"{ctx}: expected an integer {'>= 0' if zero else '>= 1'}, got {value!r}")
    return value


def read_toml(path: Path) -> dict[str, Any]:
    """The TOML document in the config file ``path``; a :class:`BenchError` in plain words if it
    cannot be read (``nope.toml: no such file``, ``... is a folder, not a file``) or parsed."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise BenchError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise BenchError(f"{path}: is a folder, not a file") from None
    except OSError as exc:
        raise BenchError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise BenchError(f"{path}: not a text file ({exc.reason} at byte {exc.start})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise BenchError(f"{path}: not valid TOML: {exc}") from None


def read_config(path: Path | None) -> dict[str, Any]:
    """The tables of a benchmark config file (none without one). One file serves both
    benchmarks: ``[bench]`` and ``[quick]`` for the harness, ``[large]`` for the
    large-message benchmark; each checks that no other table is there (a misspelt one)."""
    if path is None:
        return {}
    data = read_toml(path)
    unknown = set(data) - {"bench", "quick", "large"}
    if unknown:
        raise BenchError(f"{path}: unknown tables {sorted(unknown)}; expected [bench], [quick] and [large]")
    return data


def load_bench_config(path: Path | None, quick: bool) -> BenchConfig:
    cfg = BenchConfig()
    data = read_config(path)
    return apply_tables(cfg, path, (data.get("bench", {}), "bench"),
                        (data.get("quick", BenchConfig.QUICK), "quick"), quick)


class _Config(Protocol):
    def apply(self, table: dict[str, Any], where: str) -> None: ...


C = TypeVar("C", bound=_Config)


def apply_tables(cfg: C, path: Path | None, table: tuple[dict[str, Any], str],
                 quick_table: tuple[dict[str, Any], str], quick: bool) -> C:
    """``cfg`` with ``table`` applied, then with ``quick``, ``quick_table`` over it. Each is a
    (table, name) pair, the name the start of its errors. The quick table is checked without
    ``quick`` too, so that a bad one is refused whichever flag is given. Errors start with ``path``."""
    try:
        cfg.apply(*table)
        quick_cfg = copy.copy(cfg)  # apply() sets new values, never changes the ones it replaces
        quick_cfg.apply(*quick_table)
    except BenchError as exc:
        raise BenchError(f"{path}: {exc}" if path is not None else str(exc)) from None
    return quick_cfg if quick else cfg


# -- the cells of one driver --------------------------------------------------------------


def cell_configs(driver: str, cfg: BenchConfig, redis_url: str | None) -> dict[str, str]:
    """The TOML configs of server, site-2 (run by ``cellnet run``) and site-1, site-3 (the client)."""
    ns = f"bench-{os.getpid()}"

    def url(cell: str) -> str:
        if driver == "redis":
            assert redis_url is not None
            return f"{redis_url}?ns={ns}&cell={cell}"
        port = free_port()
        return {"tcp": f"tcp://127.0.0.1:{port}", "grpc": f"grpc://127.0.0.1:{port}",
                "http": f"http://127.0.0.1:{port}/cellnet"}[driver]

    server = url("server")
    common = (f'\n[limits]\nmax_message = {cfg.max_message}\n'
              f'\n[timeouts]\nrequest = {cfg.timeout}\nbackoff_max = 0.5\ndirect_retry = 0.2\n')

    def site(name: str, listen: bool, direct: bool) -> str:
        text = f'[cell]\nname = "{name}"\nparent = "{server}"\n'
        if listen:
            text += f'listen = ["{url(name)}"]\n'
        if direct:
            text += '\n[policy]\ndirect = ["site-*"]\n'
        return text + common

    return {
        "server": f'[cell]\nname = "server"\nlisten = ["{server}"]\n' + common,
        "site-2": site("site-2", listen=True, direct=True),
        "site-1": site("site-1", listen=False, direct=False),
        "site-3": site("site-3", listen=True, direct=True),
    }
