"""The transport benchmark harness: drivers x topologies x sizes x concurrency.

``cellnet bench [--config FILE] [--quick] [--out DIR]``, also
``python -m cellnet.benchmarks [--config FILE] [--quick] [--out DIR]``.
With ``--large`` either runs the large-message benchmark instead
(:mod:`cellnet.benchmarks.large`: 64 MiB to 2 GiB streamed to a receiver that
counts the bytes, and into a file).

What it runs
    For each driver (``tcp``, ``grpc``, ``http``, ``redis``) the harness first
    runs that driver's raw library baseline alone on the machine (``tcp``:
    :mod:`raw_echo` and the one-way :mod:`raw_stream`; ``grpc``:
    :mod:`raw_grpc_echo`; ``http``: :mod:`raw_websocket_echo`; ``redis``:
    :mod:`raw_redis_echo` on the same private ``redis-server`` the cells use),
    once per payload size; the tcp echo :mod:`raw_echo` also once per size at
    every other ``concurrency`` level (that many requests pipelined on its one
    connection, capped by ``max_inflight`` like the bus), because the bus
    also carries its outstanding requests over one link. Then it writes TOML configs and starts, as separate
    OS processes with ``cellnet run -c CONFIG``, a ``server`` cell and a
    ``site-2`` cell (``[policy] direct = ["site-*"]`` and a ``listen`` URL),
    plus one measuring process (:mod:`cellnet.benchmarks._worker`) that joins
    as two client cells: ``site-1`` (no direct policy) and ``site-3`` (direct
    policy and a ``listen`` URL). Topologies:

    * ``client-server``: ``site-1 -> server`` (one link);
    * ``relayed``: ``site-1 -> server -> site-2`` (site to site, relayed by
      the server cell);
    * ``direct``: ``site-3 -> site-2`` over the direct link the two set up
      after their first message. The measuring process waits until the
      recorded route is ``site-3 -> site-2`` before it measures.

    Every measurement sends the echo request every cell answers. Its first
    echo is verified byte for byte and its recorded route is stored (and
    checked against the topology: ``route_ok``). Then ``concurrency``
    requests are kept outstanding for ``duration`` seconds (at least
    ``min_count``, at most ``max_count`` round trips). Before each
    measurement the harness resets the peak RSS of every process
    (``/proc/PID/clear_refs``) and after it reads ``VmHWM`` from
    ``/proc/PID/status`` of the server, site-2, the measuring client and
    (redis) the redis-server.

Figures (per measurement, then median and min-max over the repetitions)
    RTT median and p99 (nearest rank) in microseconds, messages per second
    (round trips completed / wall time), MB/s (payload counted once each way:
    ``2 * size * msgs_per_s / 1e6``, as ``cellnet ping`` counts it), and the
    peak RSS of each process in KiB. Ratios to the raw baseline of the same
    driver and size: at concurrency 1 RTT and MB/s (``rtt_vs_raw``,
    ``mb_per_s_vs_raw``); at the other levels, where only ``raw_echo``
    (tcp) measures the same number of outstanding requests, msg/s and MB/s
    (``msgs_per_s_vs_raw``, ``mb_per_s_vs_raw``, next to ``raw_msgs_per_s``).

Output (into ``--out DIR``, default ``bench-results``)
    ``results.json`` (every figure of every repetition, the config, the
    machine: Python, platform, CPUs, package versions), ``results.md``
    (Markdown tables), ``latency.png`` and ``throughput.png`` (RTT and MB/s
    against payload size, one panel per driver, a line per topology and the
    raw baseline, log-scale axes). A rich progress bar shows the run on
    stderr.

NVIDIA FLARE's CellNet (``compare``)
    When ``nvflare`` is importable (``pip install "cellnet[compare]"``), the
    run ends with :mod:`cellnet.benchmarks.flare`: FLARE's cells in separate
    processes over its TCP driver, echoes of ``compare_sizes`` in every
    topology and concurrency level (its single-frame and its streamed
    request), and one-way relayed transfers of ``compare_large`` with the
    relay's peak RSS. Our side: a second set of tcp cells measures every
    echo right after FLARE's of the same path, size and concurrency (in
    turns, so both see the same state of a shared machine), and our side
    of the large transfers is :mod:`cellnet.benchmarks.large`'s tcp
    relayed measurement, with both sinks: ``discard`` (the receiver counts
    the bytes, as FLARE's does: the ratios use it) and ``file``.
    ``results.json`` gets a ``flare`` object (both sides and ``rows``:
    ours/FLARE ratios) and ``results.md`` a table.
    Without ``nvflare`` the run says the comparison is skipped and how to
    enable it.

Config file (TOML; every key optional; ``benchmarks/bench.toml`` is an example)
    Table ``[bench]``:

    ``drivers``            list of drivers, from tcp, grpc, http, redis (default: all)
    ``topologies``         list, from client-server, relayed, direct (default: all)
    ``sizes``              payload sizes, bytes or units like "64KiB", "1MiB"
                           (default: 100B, 4KiB, 64KiB, 1MiB, 16MiB, 64MiB)
    ``concurrency``        outstanding requests per measurement (default: [1, 32])
    ``repetitions``        repetitions of every measurement (default: 3)
    ``seed``               seed of the payload bytes (default: 1)
    ``duration``           seconds each measurement runs (default: 0.25)
    ``min_count``          round trips at least per measurement (default: 3)
    ``max_count``          round trips at most per measurement (default: 20000)
    ``warmup``             unmeasured requests before each measurement of a
                           size up to 1 MiB; larger sizes only do the one
                           verified echo (default: 5)
    ``max_inflight``       cap on outstanding payload bytes: a measurement
                           keeps ``min(concurrency, max(1, max_inflight // size))``
                           requests outstanding (recorded as
                           ``effective_concurrency``; default: "128MiB")
    ``timeout``            seconds each request may take (default: 300)
    ``max_message``        ``[limits] max_message`` of the generated configs;
                           raised to the largest size if smaller (default: "1GiB")
    ``baselines``          run the raw baselines (default: true)
    ``baseline_bytes``     payload bytes per raw baseline run: count =
                           baseline_bytes // size, clamped to the two keys
                           below (default: "256MiB")
    ``baseline_min_count`` (default: 3)
    ``baseline_max_count`` (default: 2000)
    ``ready_timeout``      seconds the cells may take to link (default: 60)
    ``compare``            run the NVIDIA FLARE comparison when nvflare is
                           importable (default: true)
    ``compare_sizes``      echo sizes of the comparison (default: 100B,
                           1KiB, 64MiB)
    ``compare_large``      sizes of the one-way relayed transfers of the
                           comparison (default: 512MiB; may be empty)
    ``compare_frame``      also send the large transfers as one FLARE frame
                           (default: true)

    Table ``[large]`` (and ``[large.quick]``) configures the large-message
    benchmark, ``cellnet bench --large`` (:mod:`cellnet.benchmarks.large`);
    this harness ignores it.

    Table ``[quick]``: the same keys, applied over ``[bench]`` with
    ``--quick`` (default: sizes 100B, 64KiB, 1MiB; 1 repetition; duration
    0.05; min_count 2; baseline_bytes "16MiB"; baseline_max_count 300;
    compare_sizes 100B, 1KiB; compare_large 64MiB). It is checked without
    ``--quick`` too: a bad config is refused whichever flag is given.

Bad input (a bad config, an ``--out`` that is a file or cannot be created)
stops the run before it starts: one line ``error: ...`` on stderr, exit code 2.
Ctrl-C or SIGTERM stops it: every process it started is stopped (a second
signal meanwhile is ignored), what was measured is written with
``"interrupted": true``, and the exit code is 130 (SIGINT) or 143 (SIGTERM).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from .bench_config import (
    METRICS,
    RAW_MODULES,
    BenchConfig,
    load_bench_config,
)
from .drivers import machine_info
from .procs import Interrupts, Procs, print_failure, progress_bar
from .large import SINKS as LARGE_SINKS
from .paths import checked_config
from .sessions import CellSession, run_driver


# -- summaries ---------------------------------------------------------------------------


def spread(values: list[float]) -> dict[str, float] | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarize(measurements: list[dict[str, Any]], baselines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per matrix cell: the median and min-max over the repetitions, and ratios to raw."""
    cells: dict[tuple[str, str, int, int], list[dict[str, Any]]] = {}
    for m in measurements:
        cells.setdefault((m["driver"], m["topology"], m["size"], m["concurrency"]), []).append(m)
    raw = {(b["driver"], b["size"], b.get("concurrency", 1)): b for b in baselines
           if b.get("module") == RAW_MODULES[b["driver"]][0] and "error" not in b}
    out = []
    for (driver, topo, size, conc), reps in cells.items():
        good = [r for r in reps if "error" not in r]
        entry: dict[str, Any] = {
            "driver": driver, "topology": topo, "size": size, "concurrency": conc,
            "effective_concurrency": reps[0]["effective_concurrency"], "repetitions": len(good),
            "route": good[0]["route"] if good else None,
            "route_ok": bool(good) and all(r["route_ok"] for r in good),
            "errors": [r["error"] for r in reps if "error" in r],
        }
        for key in METRICS:
            entry[key] = spread([r[key] for r in good])
        procs = sorted({p for r in good for p in r["peak_rss_kib"]})
        entry["peak_rss_kib"] = {p: spread([r["peak_rss_kib"].get(p) for r in good]) for p in procs}
        base = raw.get((driver, size, conc))
        if base and entry["rtt_median_us"] and conc == 1:
            entry["rtt_vs_raw"] = entry["rtt_median_us"]["median"] / base["rtt_median_us"]
            entry["mb_per_s_vs_raw"] = entry["mb_per_s"]["median"] / base["mb_per_s"]
        elif base and entry["msgs_per_s"] and "msgs_per_s" in base:
            entry["raw_msgs_per_s"] = base["msgs_per_s"]
            entry["raw_mb_per_s"] = base["mb_per_s"]
            entry["msgs_per_s_vs_raw"] = entry["msgs_per_s"]["median"] / base["msgs_per_s"]
            entry["mb_per_s_vs_raw"] = entry["mb_per_s"]["median"] / base["mb_per_s"]
        out.append(entry)
    return out


# -- the run -------------------------------------------------------------------------------


def nvflare_note(cfg: BenchConfig | None = None) -> str:
    if importlib.util.find_spec("nvflare") is None:
        return ('NVIDIA FLARE is not installed: the comparison with it is skipped '
                '(to run it: pip install "cellnet[compare]", or pip install -e ".[compare]" in a checkout)')
    if cfg is not None and not cfg.compare:
        return "NVIDIA FLARE is installed, but compare = false: the comparison with it is skipped"
    from .flare import version

    return f"NVIDIA FLARE {version()} is installed: its CellNet is compared with ours (tcp)"


def run_compare(cfg: BenchConfig, folder: Path, advance: Callable[[str], None]) -> dict[str, Any]:
    """FLARE's side of the comparison, then ours for its large transfers (tcp, relayed)."""
    from .flare import run_flare
    from .large import LargeConfig, files_folder, run_driver as run_large_driver

    sub = folder / "flare"
    sub.mkdir()
    # Our tcp cells take turns with FLARE's, echo by echo (see run_flare).
    ours_cfg = dataclasses.replace(cfg, drivers=["tcp"], sizes=list(cfg.compare_sizes))
    (folder / "beside").mkdir()
    procs = Procs(folder / "beside")
    ours_group: dict[str, Any] = {"driver": "tcp"}
    session: CellSession | None = None
    try:
        session = CellSession("tcp", ours_cfg, folder / "beside", procs, None, advance)
    except Exception as exc:  # FLARE is still measured; ours then come from the matrix
        procs.record_failure(ours_group, exc)

    def beside(topo: str, size: int, conc: int, rep: int) -> dict[str, Any] | None:
        if session is None or "error" in ours_group:
            return None
        try:
            return session.measure(topo, size, conc, rep)
        except Exception as exc:
            procs.record_failure(ours_group, exc)
            return None

    try:
        flare = run_flare(cfg, sub, advance, ours=beside if session is not None else None)
        if session is not None and "error" not in ours_group:
            session.quit()
    finally:
        procs.stop_all()
    out: dict[str, Any] = {"flare": flare, "ours_large": [], "beside_group": ours_group}
    if cfg.compare_large:
        large_cfg = LargeConfig(drivers=["tcp"], topologies=["relayed"], sizes=list(cfg.compare_large),
                                repetitions=cfg.repetitions, repetitions_by_size={}, seed=cfg.seed,
                                timeout=max(cfg.timeout, 600.0), ready_timeout=cfg.ready_timeout)
        (folder / "large").mkdir()
        files = Path(tempfile.mkdtemp(prefix="cellnet-bench-files-", dir=files_folder(None)))
        try:
            out["ours_group"] = run_large_driver("tcp", large_cfg, folder / "large", files, advance,
                                                 out["ours_large"])
        finally:
            shutil.rmtree(files, ignore_errors=True)
    return out


def run(cfg: BenchConfig, out: Path, quick: bool = False, keep: bool = False,
        show_progress: bool = True) -> int:
    """Run the matrix, write results.json, results.md and the plots into ``out``; return an exit code."""
    from rich.console import Console

    console = Console(stderr=True)
    out.mkdir(parents=True, exist_ok=True)
    note = nvflare_note(cfg)
    console.print(note, highlight=False, markup=False, soft_wrap=True)  # one line: a command to copy
    compare = cfg.compare and importlib.util.find_spec("nvflare") is not None
    # the tcp driver is also measured at the comparison's sizes
    tcp_sizes = sorted(set(cfg.sizes) | set(cfg.compare_sizes)) if compare else cfg.sizes
    total = sum(len(cfg.topologies) * len(tcp_sizes if d == "tcp" else cfg.sizes) * len(cfg.concurrency)
                * cfg.repetitions + 1 + (len(RAW_MODULES[d]) if cfg.baselines else 0) for d in cfg.drivers)
    if compare:
        total += 2 + cfg.repetitions * (  # linking FLARE's cells and ours; FLARE's 2 modes and ours
            len(cfg.topologies) * len(cfg.compare_sizes) * len(cfg.concurrency) * 3
            + len(cfg.compare_large) * (2 if cfg.compare_frame else 1))
        total += (1 + len(cfg.compare_large) * cfg.repetitions * len(LARGE_SINKS)) if cfg.compare_large else 0
    state = _RunState()
    # SIGTERM unwinds like Ctrl-C; a second signal cannot cut the cleanup or the writing short.
    with Interrupts() as signals:
        _run_matrix(cfg, state, compare, tcp_sizes, total, keep, console, show_progress)
        return _write_results(cfg, state, out, quick, note, signals.exit_code, console)


@dataclasses.dataclass
class _RunState:
    """What a run has measured so far."""

    started: float = dataclasses.field(default_factory=time.time)
    baselines: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    measurements: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    groups: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    flare: dict[str, Any] | None = None


def _run_matrix(cfg: BenchConfig, state: _RunState, compare: bool, tcp_sizes: list[int], total: int, keep: bool,
                console: Any, show_progress: bool) -> None:
    """Every driver's group, then the comparison, into ``state``; stops at the first interrupt."""
    folder = Path(tempfile.mkdtemp(prefix="cellnet-bench-"))
    groups = state.groups
    interrupted = False
    progress = progress_bar(console, show_progress)
    try:
        with progress:
            task = progress.add_task("starting", total=total)
            first = [True]

            def advance(what: str) -> None:
                if not first[0]:
                    progress.advance(task)
                first[0] = False
                progress.update(task, description=what)

            current = "starting"
            try:
                for driver in cfg.drivers:
                    current = driver
                    sub = folder / driver
                    sub.mkdir()
                    t0 = time.monotonic()
                    dcfg = dataclasses.replace(cfg, sizes=tcp_sizes) if driver == "tcp" else cfg
                    group = run_driver(driver, dcfg, sub, advance, state.baselines, state.measurements)
                    group["seconds"] = time.monotonic() - t0
                    groups.append(group)
                    current = "between drivers"
                    print_failure(progress.console, f"{driver} failed", group)
                if compare:
                    current = "comparison"
                    t0 = time.monotonic()
                    flare = state.flare = run_compare(cfg, folder, advance)
                    flare["seconds"] = time.monotonic() - t0
                    for g in (flare["flare"], flare.get("ours_group", {})):
                        print_failure(progress.console, "comparison failed", g)
            except KeyboardInterrupt:
                interrupted = True
                if current in cfg.drivers:
                    groups.append({"driver": current, "error": "interrupted"})
            if interrupted:
                progress.update(task, description="interrupted: stopping")
            else:
                progress.update(task, completed=total, description="done")
    finally:
        if keep:
            console.print(f"configs and logs kept in {folder}", highlight=False)
        else:
            shutil.rmtree(folder, ignore_errors=True)
    if interrupted:
        console.print("interrupted: the processes it started are stopped; the results written are incomplete",
                      highlight=False, soft_wrap=True)


def _write_results(cfg: BenchConfig, state: _RunState, out: Path, quick: bool, note: str,
                   interrupted_code: int | None, console: Any) -> int:
    """results.json, results.md and the plots; the exit code."""
    from .report import markdown, plot, terminal_summary

    flare, groups, started = state.flare, state.groups, state.started
    summary = summarize(state.measurements, state.baselines)
    machine = machine_info()
    for pkg in ("rich", "typer", "matplotlib", "aiohttp", "grpcio", "redis", "nvflare"):
        with contextlib.suppress(Exception):
            from importlib import metadata

            machine["packages"][pkg] = metadata.version(pkg)
    doc = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "seconds": time.time() - started,
        "quick": quick,
        "interrupted": interrupted_code is not None,
        "config": cfg.to_json(),
        "machine": machine,
        "nvflare": note,
        "groups": groups,
        "baselines": state.baselines,
        "measurements": state.measurements,
        "summary": summary,
    }
    if flare is not None:
        from .report import comparison_rows

        doc["flare"] = flare
        flare["rows"] = comparison_rows(doc)
    (out / "results.json").write_text(json.dumps(doc, indent=2))
    (out / "results.md").write_text(markdown(doc))
    try:
        paths = plot(doc, out)
        for path in paths:
            console.print(f"wrote {path}", highlight=False)
        if not paths:
            console.print("no measurements: no plots", highlight=False)
    except ImportError:
        console.print('matplotlib is missing: no plots (pip install "cellnet[bench]")', highlight=False, markup=False)
    table = terminal_summary(doc)
    if table is not None:
        console.print(table)
    console.print(f"wrote {out / 'results.json'} and {out / 'results.md'} in {doc['seconds']:.0f} s",
                  highlight=False)
    if interrupted_code is not None:
        return interrupted_code
    failed = any("error" in g for g in groups) or any(s["errors"] or not s["route_ok"] for s in summary)
    if flare is not None:
        failed = failed or "error" in flare["flare"] or "error" in flare.get("ours_group", {})
    return 1 if failed else 0


def _run_large(config: Path | None, quick: bool, out: Path, keep: bool, show_progress: bool) -> int:
    """``--large``: the large-message benchmark with the ``[large]`` table of ``config``."""
    from .large import load_large_config, run as run_large

    cfg = checked_config(load_large_config, config, quick, out)
    if cfg is None:
        return 2
    return run_large(cfg, out, quick=quick, keep=keep, show_progress=show_progress)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cellnet.benchmarks",
                                     description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--config", type=Path, help="TOML file with [bench] (and [quick]) tables")
    parser.add_argument("--quick", action="store_true", help="a small matrix that runs in under a minute")
    parser.add_argument("--out", type=Path, default=Path("bench-results"), help="output folder")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (configs, logs)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--large", action="store_true",
                        help="run the large-message benchmark instead (cellnet.benchmarks.large)")
    args = parser.parse_args(argv)
    if args.large:
        return _run_large(args.config, args.quick, args.out, args.keep, not args.no_progress)
    cfg = checked_config(load_bench_config, args.config, args.quick, args.out)
    if cfg is None:
        return 2
    return run(cfg, args.out, quick=args.quick, keep=args.keep, show_progress=not args.no_progress)


def bench_command(
    config: Path | None = typer.Option(None, "--config", "-c", help="TOML config file (see benchmarks/bench.toml)."),
    quick: bool = typer.Option(False, "--quick", help="A small matrix that runs in under a minute."),
    out: Path = typer.Option(Path("bench-results"), "--out", "-o", help="Folder for results.json, results.md, PNGs."),
    keep: bool = typer.Option(False, "--keep", help="Keep the temporary folder with configs and logs."),
    large: bool = typer.Option(False, "--large", help="Run the large-message benchmark instead: 64 MiB to 2 GiB "
                               "streamed, counted and saved into a file (the large table of the config; writes "
                               "large.json, large.md)."),
) -> None:
    """Benchmark every transport: drivers x topologies x payload sizes x concurrency."""
    if large:
        raise typer.Exit(_run_large(config, quick, out, keep, True))
    cfg = checked_config(load_bench_config, config, quick, out)
    if cfg is None:
        raise typer.Exit(2)
    raise typer.Exit(run(cfg, out, quick=quick, keep=keep))


if __name__ == "__main__":
    sys.exit(main())
