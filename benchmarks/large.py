"""The large-message benchmark: streaming 64 MiB to 2 GiB, counted or saved into a file, beside raw TCP.

``python -m cellnet.benchmarks.large [--config FILE] [--quick] [--out DIR]
[--drivers tcp,http] [--topologies client-server,relayed] [--sinks discard,file]
[--sizes 64MiB,512MiB] [--repetitions N] [--tmp DIR] [--keep] [--no-progress]``, also
``cellnet bench --large [--config FILE] [--quick] [--out DIR]``.

Why it exists
    ``cellnet bench`` measures echoes up to 64 MiB, where a payload is held in
    memory on both ends. A payload of any size is streamed instead: cut into
    ``[limits] chunk`` pieces and sent as far as the receiver grants credit
    (``[limits] window``), so every process should hold about one window,
    however large the payload. This benchmark checks that claim where it
    matters (the throughput of a relay, and how much memory it needs) with
    payloads far larger than a window.

What it runs
    For each driver (``tcp`` and ``http``, the WebSocket driver) it writes
    the cell configs :func:`cellnet.benchmarks.bench_config.cell_configs` writes
    for ``cellnet bench`` (free loopback ports) and starts three OS
    processes of this module's ``worker`` mode: ``server`` (listens),
    ``site-2`` (dials the server) and the sender ``site-1`` (dials the
    server; no direct policy, so site to site traffic goes through the
    server). Topologies:

    * ``client-server``: ``site-1 -> server``; the server is the receiver;
    * ``relayed``: ``site-1 -> server -> site-2``; the server relays every
      chunk, site-2 is the receiver.

    Every measurement sends one request whose payload is an async iterable
    of ``block``-sized blocks, cycled from a pool of ``blocks`` seeded
    random blocks generated before the measurement (so no process ever holds
    the payload as one bytes object), to one of the receiver's two stream
    handlers (topics), one per sink:

    * ``discard``: the handler iterates the stream and only counts the bytes
      (like the raw baseline's sink), then answers with the count. The
      benchmark checks the count against the size sent. This is the
      like-for-like comparison with the raw baseline: the transport alone.
    * ``file``: the handler writes the payload into a file in a temporary
      folder with ``Stream.save`` (which writes ``<name>.partial``, fsyncs it
      and renames it), then answers with the byte count. The benchmark checks
      the count and the file's size on disk against the size sent and deletes
      the file. This is the transport plus writing and fsyncing the file.

    Every (size, repetition, topology) is measured with each sink of
    ``sinks``, one after the other, over the same linked cells.

    Before each measurement the benchmark reads ``VmRSS`` of every process
    (the baseline) and resets its peak (``/proc/PID/clear_refs``); after it,
    it reads ``VmHWM`` (the peak). Growth = peak - baseline: the memory the
    transfer needed on top of what the process already held.

    In the same run, first, the raw baseline :mod:`cellnet.benchmarks.raw_stream`
    (one asyncio TCP connection between two processes, a counting sink)
    moves the same number of bytes in 1 MiB messages, once per repetition.

Figures (per measurement; then median and min-max over the repetitions
of every driver, topology, sink and size)
    MB/s = payload bytes / wall time from the start of the request to its
    reply (1 MB = 10^6 bytes; the payload is counted once), the ratio to the
    raw baseline of the same size (``x raw``, for both sinks: ``discard`` is
    the like-for-like ratio, ``file`` includes writing and fsyncing the
    file), the receiver's time in ``Stream.save`` (``file`` only; "-" for
    ``discard``), and per role (sender, relay, receiver) the baseline, peak
    and growth of the resident set in KiB. Every record (JSON) and table row
    (Markdown, column ``sink`` after ``path``) names its sink.

Output (into ``--out DIR``, default ``bench-results``)
    ``large.json`` (every figure of every repetition, the config, the
    machine: Python, platform, CPUs, package versions) and ``large.md`` (the
    Markdown tables, also printed on stdout). A rich progress bar shows the
    run on stderr. The exit code is 1 when a measurement failed or a byte
    count was wrong.

Config file (TOML; table ``[large]``, every key optional; ``[large.quick]``
is applied over it with ``--quick``, and checked without it too; ``benchmarks/bench.toml`` has an example)

    ``drivers``             from tcp, http (default: both)
    ``topologies``          from client-server, relayed (default: both)
    ``sinks``               from discard, file: what the receiver does with the
                            stream, see above (default: both, ["discard", "file"])
    ``sizes``               payload sizes, bytes or units like "512MiB"
                            (default: 64MiB, 512MiB, 2GiB)
    ``repetitions``         repetitions of every measurement (default: 3)
    ``repetitions_by_size`` a table size -> repetitions overriding it
                            (default: {"2GiB" = 1})
    ``seed``                seed of the payload blocks (default: 1)
    ``block``               bytes per block the sender yields (default: "1MiB")
    ``blocks``              blocks in the sender's pool (default: 8)
    ``chunk``, ``window``   ``[limits]`` of the cells (default: the cell defaults)
    ``timeout``             seconds each request may take (default: 600)
    ``baselines``           run the raw TCP baseline (default: true)
    ``ready_timeout``       seconds the cells may take to link (default: 60)
    ``tmp``                 folder for the received files of the ``file`` sink,
                            an existing, writable folder
                            (default: ``/dev/shm`` when it is a writable
                            folder, else the system's temporary folder).
                            A memory-backed folder keeps the
                            disk out of the figures: ``Stream.save`` fsyncs the
                            file, and on a disk that flush dominates the time.
                            Give a disk folder to measure transport and disk.

    ``--quick`` defaults to sizes ["64MiB"], 1 repetition, both sinks (about 10-20 s).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from ._worker import reset_peak
from .bench_config import apply_tables, read_config
from .drivers import machine_info
from .procs import BenchError, Interrupts, Procs, print_failure, progress_bar, tail
from .paths import check_writable_dir, checked_config
from .report import fmt_size

KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30
DRIVERS = ("tcp", "http")
TOPOLOGIES = ("client-server", "relayed")
TOPOLOGY_LABELS = {"client-server": "client->server", "relayed": "site->server->site relayed"}
#: topology -> (receiver cell, relay cell or None); the sender is always site-1
PATHS: dict[str, tuple[str, str | None]] = {
    "client-server": ("server", None),
    "relayed": ("site-2", "server"),
}
EXPECTED_ROUTES = {
    "client-server": ["site-1", "server"],
    "relayed": ["site-1", "server", "site-2"],
}
ROLES = ("sender", "relay", "receiver")
SINKS = ("discard", "file")
CHANNEL = "bench"
#: sink -> the topic of the stream handler that receives into it
TOPICS = {"file": "large", "discard": "large-discard"}


def _size(value: Any, key: str) -> int:
    from cellnet.errors import ConfigError
    from cellnet.sizes import parse_size

    try:
        return parse_size(value, key=key)
    except ConfigError as exc:
        raise BenchError(str(exc)) from None


def _positive_int(value: Any, ctx: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise BenchError(f"{ctx}: expected an integer >= 1, got {value!r}")
    return value


def _names(value: Any, ctx: str, known: tuple[str, ...]) -> list[str]:
    if not isinstance(value, list) or not value:
        raise BenchError(f"{ctx}: expected a non-empty list, got {value!r}")
    names = [str(v) for v in value]
    bad = [v for v in names if v not in known]
    if bad:
        raise BenchError(f"{ctx}: unknown {bad}; choose from {', '.join(known)}")
    return names


@dataclass
class LargeConfig:
    drivers: list[str] = field(default_factory=lambda: list(DRIVERS))
    topologies: list[str] = field(default_factory=lambda: list(TOPOLOGIES))
    sinks: list[str] = field(default_factory=lambda: list(SINKS))
    sizes: list[int] = field(default_factory=lambda: [64 * MIB, 512 * MIB, 2 * GIB])
    repetitions: int = 3
    repetitions_by_size: dict[int, int] = field(default_factory=lambda: {2 * GIB: 1})
    seed: int = 1
    block: int = MIB
    blocks: int = 8
    chunk: int | None = None
    window: int | None = None
    timeout: float = 600.0
    baselines: bool = True
    ready_timeout: float = 60.0
    tmp: str | None = None

    QUICK = {"sinks": list(SINKS), "sizes": ["64MiB"], "repetitions": 1}

    def apply(self, table: dict[str, Any], where: str, options: bool = False) -> None:
        """Validate ``table`` and set its keys; errors name ``where.key``, or ``--key`` with ``options``
        (the table holds command-line options)."""
        names = {f.name for f in dataclasses.fields(self)}
        for key, value in table.items():
            ctx = f"--{key}" if options else f"{where}.{key}"
            if key == "quick" and isinstance(value, dict):
                continue  # the [large.quick] sub-table, applied separately
            if key not in names:
                raise BenchError(f"{where}: unknown key {key!r}; known: {', '.join(sorted(names))}")
            if key == "drivers":
                value = _names(value, ctx, DRIVERS)
            elif key == "topologies":
                value = _names(value, ctx, TOPOLOGIES)
            elif key == "sinks":
                value = list(dict.fromkeys(_names(value, ctx, SINKS)))
            elif key == "sizes":
                if not isinstance(value, list) or not value:
                    raise BenchError(f"{ctx}: expected a non-empty list, got {value!r}")
                value = sorted({_size(v, ctx) for v in value})
            elif key == "repetitions_by_size":
                if not isinstance(value, dict):
                    raise BenchError(f"{ctx}: expected a table of size = repetitions, got {value!r}")
                value = {_size(k, ctx): _positive_int(v, ctx) for k, v in value.items()}
            elif key in ("block", "chunk", "window"):
                value = _size(value, ctx)
            elif key in ("timeout", "ready_timeout"):
                if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                    raise BenchError(f"{ctx}: expected a positive number of seconds, got {value!r}")
                value = float(value)
            elif key == "baselines":
                if not isinstance(value, bool):
                    raise BenchError(f"{ctx}: expected true or false, got {value!r}")
            elif key == "tmp":
                value = check_writable_dir(value, ctx)
            elif key == "seed":
                if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                    raise BenchError(f"{ctx}: expected an integer >= 0, got {value!r}")
            else:
                value = _positive_int(value, ctx)
            setattr(self, key, value)

    def reps(self, size: int) -> int:
        """Repetitions of ``size``: fewer for the largest sizes, which take longest."""
        return self.repetitions_by_size.get(size, self.repetitions)

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["repetitions_by_size"] = {str(k): v for k, v in self.repetitions_by_size.items()}
        return data


def load_large_config(path: Path | None, quick: bool) -> LargeConfig:
    """The config from ``[large]`` (and with ``quick``, ``[large.quick]``) of ``path``."""
    cfg = LargeConfig()
    table = read_config(path).get("large", {})
    return apply_tables(cfg, path, (table, "large"), (table.get("quick", LargeConfig.QUICK), "large.quick"), quick)


def files_folder(tmp: str | None) -> str | None:
    """The parent folder of the received files: ``tmp``, else ``/dev/shm`` if usable, else None."""
    if tmp is not None:
        return tmp
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
        return "/dev/shm"
    return None


def filesystem_of(path: Path) -> str | None:
    """The type of the file system ``path`` is on (``tmpfs``, ``ext4``...), from /proc/mounts."""
    best, fstype = "", None
    with contextlib.suppress(OSError):
        real = str(path.resolve())
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) > 2 and (real == parts[1] or real.startswith(parts[1].rstrip("/") + "/")):
                if len(parts[1]) > len(best):
                    best, fstype = parts[1], parts[2]
    return fstype


# -- /proc ---------------------------------------------------------------------


def proc_kib(pid: int | str, key: str) -> int | None:
    """A ``kB`` field of ``/proc/PID/status`` (``VmRSS``, ``VmHWM``), or None."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


# -- one driver -------------------------------------------------------------------------


def _cell_configs(driver: str, cfg: LargeConfig) -> dict[str, str]:
    """The configs ``cellnet bench`` uses, with the message limit and ``[limits]`` of this run."""
    from .bench_config import BenchConfig, cell_configs

    bench = BenchConfig(drivers=[driver], max_message=max(cfg.sizes) + 64 * KIB, timeout=cfg.timeout)
    configs = cell_configs(driver, bench, None)
    extra = "".join(f"{k} = {v}\n" for k, v in (("chunk", cfg.chunk), ("window", cfg.window)) if v)
    return {name: text.replace("[limits]\n", "[limits]\n" + extra, 1) for name, text in configs.items()}


def run_driver(driver: str, cfg: LargeConfig, folder: Path, files: Path, advance: Callable[[str], None],
               measurements: list[dict[str, Any]]) -> dict[str, Any]:
    """Measure one driver; measurements are appended to the list; returns the group's record."""
    from .sessions import LineReader

    group: dict[str, Any] = {"driver": driver}
    procs = Procs(folder)
    py = sys.executable
    files.mkdir(parents=True, exist_ok=True)
    with procs.guard(group):
        advance(f"{driver}: linking cells")
        configs = _cell_configs(driver, cfg)
        for name, text in configs.items():
            (folder / f"{name}.toml").write_text(text)
        worker_args = [py, "-m", "cellnet.benchmarks.large", "worker", "--files", str(files),
                       "--seed", str(cfg.seed), "--block", str(cfg.block), "--blocks", str(cfg.blocks),
                       "--ready-budget", str(cfg.ready_timeout)]
        pids: dict[str, int] = {}
        for name in ("server", "site-2"):
            pids[name] = procs.start(f"{driver}-{name}", [*worker_args, str(folder / f"{name}.toml")]).pid
        log = open(folder / f"{driver}-site-1.log", "wb")
        sender = subprocess.Popen([*worker_args, "--sender", str(folder / "site-1.toml")],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                                  start_new_session=True)
        log.close()
        procs.procs.append((f"{driver}-site-1", sender, folder / f"{driver}-site-1.log"))
        pids["site-1"] = sender.pid
        group["pids"] = dict(pids)
        reader = LineReader(sender.stdout)
        group["routes"] = reader.json(cfg.ready_timeout + 30, f"{driver}: linking")["ready"]["routes"]
        assert sender.stdin is not None
        for size in cfg.sizes:
            for rep in range(cfg.reps(size)):
                for topo in cfg.topologies:
                    for sink in cfg.sinks:
                        measurements.append(_measure(driver, topo, sink, size, rep, cfg, procs, pids,
                                                     sender, reader, group, advance))
        procs.quit_worker(sender)
    return group


def _measure(driver: str, topo: str, sink: str, size: int, rep: int, cfg: LargeConfig, procs: Procs,
             pids: dict[str, int], sender: subprocess.Popen[bytes], reader: Any, group: dict[str, Any],
             advance: Callable[[str], None]) -> dict[str, Any]:
    """One transfer of ``size`` bytes over ``topo`` into ``sink``: its record."""
    assert sender.stdin is not None
    advance(f"{driver} {topo} {sink} {fmt_size(size)} rep {rep + 1}")
    procs.check_alive()
    receiver, relay = PATHS[topo]
    roles = {"sender": "site-1", "receiver": receiver, **({"relay": relay} if relay else {})}
    baseline = {name: proc_kib(pid, "VmRSS") for name, pid in pids.items()}
    reset = all([reset_peak(pid) for pid in pids.values()])  # noqa: C419 (reset every one)
    task = {"topology": topo, "sink": sink, "size": size, "timeout": cfg.timeout}
    sender.stdin.write((json.dumps(task) + "\n").encode())
    sender.stdin.flush()
    res = reader.json(cfg.timeout + 60, f"{driver} {topo} {sink} {fmt_size(size)}")
    peak = {name: proc_kib(pid, "VmHWM") for name, pid in pids.items()}
    file_bytes = None
    if "file" in res:
        path = Path(res["file"])
        with contextlib.suppress(OSError):
            file_bytes = path.stat().st_size
        path.unlink(missing_ok=True)
    rss = {}
    for role, name in roles.items():
        b, p = baseline.get(name), peak.get(name)
        rss[role] = {"cell": name, "baseline_kib": b, "peak_kib": p,
                     "growth_kib": p - b if p is not None and b is not None else None}
    return {
        "driver": driver, "topology": topo, "sink": sink, "size": size, "repetition": rep,
        "route": group["routes"].get(topo), "rss": rss, "rss_reset": reset,
        "file_bytes": file_bytes,
        "bytes_ok": res.get("bytes") == size and (sink != "file" or file_bytes == size), **res,
    }


def raw_counts(size: int) -> int:
    """1 MiB messages the raw baseline sends to move about ``size`` bytes."""
    return max(1, math.ceil(size / MIB))


def run_baselines(cfg: LargeConfig, folder: Path, advance: Callable[[str], None], out: list[dict[str, Any]]) -> None:
    """:mod:`raw_stream` moving each size in 1 MiB messages, once per repetition of that size;
    the records appended to ``out`` as each run ends (an interrupt keeps those that ended)."""
    procs = Procs(folder)
    for rep in range(max(cfg.reps(s) for s in cfg.sizes)):
        sizes = [s for s in cfg.sizes if cfg.reps(s) > rep]
        advance(f"raw tcp stream rep {rep + 1}")
        label = f"raw-stream-{rep}"
        args = [sys.executable, "-m", "cellnet.benchmarks._worker", "raw", "raw_stream",
                "--sizes", ",".join([str(MIB)] * len(sizes)),
                "--counts", ",".join(str(raw_counts(s)) for s in sizes)]
        proc = procs.start(label, args, signal.SIGINT)
        procs.wait(proc, cfg.timeout + 120)  # on a timeout, the missing sizes are reported
        lines = [json.loads(ln) for ln in (folder / f"{label}.log").read_text(errors="replace").splitlines()
                 if ln.startswith("{")]
        by_count = {r.get("count"): r for r in lines}
        for size in sizes:
            r = by_count.get(raw_counts(size)) or {"error": f"no result: {tail(folder / f'{label}.log', 5)}"}
            out.append({"size": size, "repetition": rep, "bytes": raw_counts(size) * MIB,
                        **{k: v for k, v in r.items() if k != "size"}})


# -- the run ------------------------------------------------------------------------------


def run(cfg: LargeConfig, out: Path, quick: bool = False, keep: bool = False, show_progress: bool = True) -> int:
    """Run the matrix, write large.json and large.md into ``out``, print the table; return an exit code."""
    from rich.console import Console

    console = Console(stderr=True)
    out.mkdir(parents=True, exist_ok=True)
    per_driver = 1 + sum(cfg.reps(s) for s in cfg.sizes) * len(cfg.topologies) * len(cfg.sinks)
    raw_runs = max(cfg.reps(s) for s in cfg.sizes) if cfg.baselines else 0
    total = raw_runs + per_driver * len(cfg.drivers)

    # SIGTERM unwinds like Ctrl-C; a second signal cannot cut the cleanup or the writing short.
    with Interrupts() as signals:
        return _run(cfg, out, quick, keep, console, progress_bar(console, show_progress, remaining=False), total,
                    signals)


def _run(cfg: LargeConfig, out: Path, quick: bool, keep: bool, console: Any, progress: Any, total: int,
         signals: Interrupts) -> int:
    """The matrix of :func:`run`, under its signal handling; writes the results and returns the exit code."""
    files = Path(tempfile.mkdtemp(prefix="cellnet-large-files-", dir=files_folder(cfg.tmp)))
    folder = Path(tempfile.mkdtemp(prefix="cellnet-large-"))
    files_fs = filesystem_of(files)
    baselines: list[dict[str, Any]] = []
    measurements: list[dict[str, Any]] = []
    groups: list[dict[str, Any]] = []
    started = time.time()
    interrupted = False
    try:
        with progress:
            task = progress.add_task("starting", total=total)
            first = [True]

            def advance(what: str) -> None:
                if not first[0]:
                    progress.advance(task)
                first[0] = False
                progress.update(task, description=what)

            try:
                if cfg.baselines:
                    run_baselines(cfg, folder, advance, baselines)
                for driver in cfg.drivers:
                    sub = folder / driver
                    sub.mkdir()
                    t0 = time.monotonic()
                    group = run_driver(driver, cfg, sub, files, advance, measurements)
                    group["seconds"] = time.monotonic() - t0
                    groups.append(group)
                    print_failure(progress.console, f"{driver} failed", group)
            except KeyboardInterrupt:
                interrupted = True
                progress.update(task, description="interrupted: stopping")
            else:
                progress.update(task, completed=total, description="done")
    finally:
        shutil.rmtree(files, ignore_errors=True)
        if keep:
            console.print(f"configs and logs kept in {folder}", highlight=False)
        else:
            shutil.rmtree(folder, ignore_errors=True)
    machine = machine_info()
    for pkg in ("rich", "websockets"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            machine["packages"][pkg] = metadata.version(pkg)
    with contextlib.suppress(OSError):
        machine["load_average"] = list(os.getloadavg())
    doc = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "seconds": time.time() - started,
        "quick": quick,
        "interrupted": interrupted,
        "config": cfg.to_json(),
        "files": {"folder": str(files.parent), "filesystem": files_fs},
        "machine": machine,
        "groups": groups,
        "baselines": baselines,
        "measurements": measurements,
    }
    from .large_report import markdown, summarize

    doc["summary"] = summarize(measurements, baselines)
    text = markdown(doc)
    (out / "large.json").write_text(json.dumps(doc, indent=2))
    (out / "large.md").write_text(text)
    print(text, end="", flush=True)
    console.print(f"wrote {out / 'large.json'} and {out / 'large.md'} in {doc['seconds']:.0f} s", highlight=False)
    if signals.exit_code is not None:
        return signals.exit_code
    rows = doc["summary"]["rows"]
    failed = (any("error" in g for g in groups) or any("error" in b for b in baselines)
              or any(r["errors"] or not r["bytes_ok"] or not r["route_ok"] for r in rows))
    return 1 if failed else 0


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def main(argv: list[str] | None = None) -> int:
    args_list = sys.argv[1:] if argv is None else argv
    if args_list[:1] == ["worker"]:
        from .large_worker import worker_main

        return worker_main(args_list[1:])
    parser = argparse.ArgumentParser(prog="python -m cellnet.benchmarks.large",
                                     description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--config", type=Path, help="TOML file with a [large] (and [large.quick]) table")
    parser.add_argument("--quick", action="store_true", help="64 MiB only, one repetition (about 10-20 s)")
    parser.add_argument("--out", type=Path, default=Path("bench-results"), help="folder for large.json, large.md")
    parser.add_argument("--drivers", type=_csv, help="comma-separated, from tcp, http")
    parser.add_argument("--topologies", type=_csv, help="comma-separated, from client-server, relayed")
    parser.add_argument("--sinks", type=_csv, help="comma-separated, from discard, file")
    parser.add_argument("--sizes", type=_csv, help='comma-separated sizes, e.g. "64MiB,512MiB"')
    parser.add_argument("--repetitions", type=int, help="repetitions of every size (overrides the config)")
    parser.add_argument("--tmp", help="folder for the received files")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (configs, logs)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(args_list)

    def load(config: Path | None, quick: bool) -> LargeConfig:
        cfg = load_large_config(config, quick)
        overrides: dict[str, Any] = {k: v for k in ("drivers", "topologies", "sinks", "sizes", "tmp")
                                     if (v := getattr(args, k)) is not None}
        if args.repetitions is not None:
            overrides.update(repetitions=args.repetitions, repetitions_by_size={})
        cfg.apply(overrides, "command line", options=True)
        return cfg

    cfg = checked_config(load, args.config, args.quick, args.out)
    if cfg is None:
        return 2
    return run(cfg, args.out, quick=args.quick, keep=args.keep, show_progress=not args.no_progress)


if __name__ == "__main__":
    sys.exit(main())
