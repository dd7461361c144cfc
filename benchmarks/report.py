"""Reports of the benchmark harness: Markdown tables and matplotlib plots.

:func:`markdown` turns the document :mod:`cellnet.benchmarks.harness` writes
as ``results.json`` into ``results.md``; :func:`plot` draws ``latency.png``
(RTT median against payload size) and ``throughput.png`` (MB/s against
payload size), one panel per driver, a line per topology and the raw
baseline, log-scale axes. Both work from a saved ``results.json`` too:
``python -m cellnet.benchmarks.report results.json [OUT_DIR]``.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

TOPOLOGY_LABELS = {
    "client-server": "client->server",
    "relayed": "site->site relayed",
    "direct": "site->site direct",
}
PROCESS_ORDER = ("server", "site-2", "client", "redis")


def fmt_size(n: int) -> str:
    for unit, div in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= div and n % div == 0:
            return f"{n // div} {unit}"
    return f"{n} B"


def problem_lines(doc: dict[str, Any]) -> list[str]:
    """Markdown lines saying the run was interrupted and which driver groups failed."""
    lines: list[str] = []
    if doc.get("interrupted"):
        lines += ["**The run was interrupted: the tables are incomplete.**", ""]
    for g in doc["groups"]:
        if g.get("error") == "interrupted":
            lines += [f"**{g['driver']}: interrupted** (its rows below are what it measured before)", ""]
        elif "error" in g:
            lines += [f"**{g['driver']} failed:** `{g['error'].splitlines()[0][:300]}`", ""]
    return lines


def _num(x: float) -> str:
    if x >= 100:
        return f"{x:.0f}"
    if x >= 10:
        return f"{x:.1f}"
    if x >= 1:
        return f"{x:.2f}"
    return f"{x:.3f}"


def _spread(s: dict[str, float] | None, scale: float = 1.0, show_range: bool = True) -> str:
    if not s:
        return "-"
    text = _num(s["median"] * scale)
    if show_range and s["max"] > s["min"]:
        text += f" ({_num(s['min'] * scale)}-{_num(s['max'] * scale)})"
    return text


def _index(summary: list[dict[str, Any]]) -> dict[tuple[str, str, int, int], dict[str, Any]]:
    return {(s["driver"], s["topology"], s["size"], s["concurrency"]): s for s in summary}


def markdown(doc: dict[str, Any]) -> str:
    cfg = doc["config"]
    machine = doc["machine"]
    summary = _index(doc["summary"])
    concs: list[int] = cfg["concurrency"]
    c0, others = concs[0], concs[1:]
    lines = [
        "# cellnet transport benchmark",
        "",
        f"Started {doc['started']}, took {doc['seconds']:.0f} s{' (--quick: rough figures)' if doc['quick'] else ''}. "
        f"Python {machine.get('python')} on {machine.get('platform')}, {machine.get('cpu_count')} CPUs"
        f"{' (' + machine['cpu_model'] + ')' if machine.get('cpu_model') else ''}.",
        "Packages: " + ", ".join(f"{k} {v}" for k, v in sorted(machine.get("packages", {}).items())) + ".",
        "",
        f"Matrix: drivers {', '.join(cfg['drivers'])}; topologies {', '.join(cfg['topologies'])}; sizes "
        f"{', '.join(fmt_size(s) for s in cfg['sizes'])}; concurrency {', '.join(map(str, concs))} "
        f"(outstanding bytes capped at {fmt_size(cfg['max_inflight'])}); {cfg['repetitions']} repetition(s) of "
        f"{cfg['duration']:g} s (at least {cfg['min_count']} round trips) each; payload seed {cfg['seed']}.",
        "Figures are the median over the repetitions, with the min-max range in parentheses. MB/s counts the "
        "payload once each way (2 x size x msg/s). RTT/raw and MB/s/raw compare with the driver's raw library "
        "echo of the same size at concurrency 1; at higher concurrency, raw msg/s is the raw tcp echo with as many "
        "requests pipelined on its one connection, and /raw the bus's msg/s over it (tcp only). "
        "Peak RSS is VmHWM, reset before each measurement.",
        "",
        doc.get("nvflare", ""),
        "",
    ]
    lines += problem_lines(doc)

    if doc["baselines"]:
        lines += ["## Raw baselines", "",
                  "| driver | baseline | size | conc | count | RTT median (ms) | RTT p99 (ms) | msg/s | MB/s |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for b in doc["baselines"]:
            conc = b.get("concurrency", 1)
            eff = b.get("effective_concurrency", conc)
            conc_text = f"{conc}" + (f" [x{eff}]" if eff != conc else "")
            if "error" in b:
                lines.append(f"| {b['driver']} | {b['module']} | {fmt_size(b['size'])} | {conc_text} | FAILED: "
                             f"{b['error'][:120].replace('|', '/')} | | | | |")
                continue
            rtt = (f"{b['rtt_median_us'] / 1e3:.3f} | {b['rtt_p99_us'] / 1e3:.3f}" if "rtt_median_us" in b
                   else "- (one-way stream) | -")
            msgs = _num(b["msgs_per_s"]) if "msgs_per_s" in b else "-"
            lines.append(f"| {b['driver']} | {b['module']} | {fmt_size(b['size'])} | {conc_text} | {b['count']} | "
                         f"{rtt} | {msgs} | {b['mb_per_s']:.1f} |")
        lines.append("")

    for driver in cfg["drivers"]:
        rows = [s for s in doc["summary"] if s["driver"] == driver]
        if not rows:
            continue
        head = [f"RTT median ms x{c0}", f"RTT p99 ms x{c0}", f"msg/s x{c0}", f"MB/s x{c0}"]
        if c0 == 1:
            head += ["RTT/raw", "MB/s/raw"]
        raw_c = {c for c in others if any("raw_msgs_per_s" in r for r in rows if r["concurrency"] == c)}
        for c in others:
            head += [f"RTT median ms x{c}", f"msg/s x{c}", f"MB/s x{c}"]
            if c in raw_c:
                head += [f"raw msg/s x{c}", f"msg/s/raw x{c}"]
        head += ["peak RSS MiB " + "/".join(p for p in PROCESS_ORDER if any(p in r["peak_rss_kib"] for r in rows))]
        lines += [f"## {driver}", "", "| path | size | " + " | ".join(head) + " |",
                  "|" + "---|" * (len(head) + 2)]
        for topo in cfg["topologies"]:
            for size in cfg["sizes"]:
                base = summary.get((driver, topo, size, c0))
                if base is None:
                    continue
                cells = [_spread(base["rtt_median_us"], 1e-3), _spread(base["rtt_p99_us"], 1e-3, False),
                         _spread(base["msgs_per_s"], 1.0, False), _spread(base["mb_per_s"])]
                if c0 == 1:
                    cells += [_num(base["rtt_vs_raw"]) if "rtt_vs_raw" in base else "-",
                              _num(base["mb_per_s_vs_raw"]) if "mb_per_s_vs_raw" in base else "-"]
                rss: dict[str, float] = {}
                for c in concs:
                    s = summary.get((driver, topo, size, c))
                    for p, v in (s or {}).get("peak_rss_kib", {}).items():
                        if v:
                            rss[p] = max(rss.get(p, 0.0), v["median"])
                for c in others:
                    s = summary.get((driver, topo, size, c))
                    if s is None:
                        cells += ["-"] * (5 if c in raw_c else 3)
                        continue
                    eff = s["effective_concurrency"]
                    note = f" [x{eff}]" if eff != c else ""
                    cells += [_spread(s["rtt_median_us"], 1e-3, False), _spread(s["msgs_per_s"]) + note,
                              _spread(s["mb_per_s"], 1.0, False)]
                    if c in raw_c:
                        cells += [_num(s["raw_msgs_per_s"]) if "raw_msgs_per_s" in s else "-",
                                  _num(s["msgs_per_s_vs_raw"]) if "msgs_per_s_vs_raw" in s else "-"]
                cells.append("/".join(f"{rss[p] / 1024:.0f}" for p in PROCESS_ORDER if p in rss) or "-")
                path = TOPOLOGY_LABELS.get(topo, topo)
                bad = [s for c in concs if (s := summary.get((driver, topo, size, c)))
                       and (s["errors"] or not s["route_ok"])]
                if bad:
                    path += " (!)"
                lines.append(f"| {path} | {fmt_size(size)} | " + " | ".join(cells) + " |")
        routes = {}
        for s in rows:
            routes.setdefault(s["topology"], s["route"])
        lines += ["", "Recorded routes: " + "; ".join(
            f"{TOPOLOGY_LABELS.get(t, t)}: {' -> '.join(r or ['?'])}" for t, r in routes.items()) + ".", ""]
        problems = [s for s in rows if s["errors"] or not s["route_ok"]]
        for s in problems:
            why = s["errors"][0] if s["errors"] else f"unexpected route {s['route']}"
            lines.append(f"(!) {s['topology']} {fmt_size(s['size'])} x{s['concurrency']}: {why[:200]}")
        if problems:
            lines.append("")
        if any(s["effective_concurrency"] != s["concurrency"] for s in rows):
            lines += [f"[xN]: requests outstanding, capped by max_inflight = {fmt_size(cfg['max_inflight'])}.", ""]
    lines += comparison_markdown(doc)
    return "\n".join(lines).rstrip() + "\n"


#: path names short enough for the terminal table to fit 80 columns
_SHORT_PATHS = {"client-server": "client->server", "relayed": "relayed", "direct": "direct"}


def terminal_summary(doc: dict[str, Any]) -> Any:
    """The headline figures for the terminal (a ``rich`` table), or None without results: per
    driver and path, the RTT of the smallest size one at a time (and over the raw library's),
    its msg/s at the highest concurrency, and the MB/s of the largest size. results.md has all."""
    from rich.table import Table

    cfg = doc["config"]
    summary = _index(doc["summary"])
    small, large = min(cfg["sizes"]), max(cfg["sizes"])
    low, high = min(cfg["concurrency"]), max(cfg["concurrency"])
    table = Table(title=f"headline figures: RTT and msg/s at {fmt_size(small)}, MB/s at {fmt_size(large)} "
                        "(medians; all figures in results.md)", title_justify="left")
    for name in ("driver", "path", f"RTT ms x{low}", "RTT/raw", f"msg/s x{high}", f"MB/s x{low}"):
        table.add_column(name, justify="left" if name in ("driver", "path") else "right", no_wrap=True)
    for driver in cfg["drivers"]:
        for topo in cfg["topologies"]:
            first, busy, big = (summary.get((driver, topo, size, conc)) for size, conc in
                                ((small, low), (small, high), (large, low)))
            if not (first or busy or big):
                continue
            rtt = first and first["rtt_median_us"]
            ratio = first and first.get("rtt_vs_raw")
            rate = busy and busy["msgs_per_s"]
            mbps = big and big["mb_per_s"]
            table.add_row(driver, _SHORT_PATHS.get(topo, topo),
                          _num(rtt["median"] / 1e3) if rtt else "-", f"{ratio:.2f}" if ratio else "-",
                          _num(rate["median"]) if rate else "-", _num(mbps["median"]) if mbps else "-")
    return table if table.row_count else None


def _median(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def comparison_rows(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Our tcp figures beside FLARE's, per path, size and concurrency, with ours/FLARE ratios.

    Echo rows compare RTT median (lower is better), msg/s and MB/s (higher
    is better) for each of FLARE's modes (``frame``: one frame per message;
    ``stream``: its streamed request); large rows compare one-way MB/s and
    the relay's peak RSS. Figures are medians over the repetitions.
    """
    flare = doc.get("flare") or {}
    group = flare.get("flare") or {}
    summary = _index(doc["summary"])
    order = list(TOPOLOGY_LABELS)
    rows: list[dict[str, Any]] = []
    keys = sorted({(m["topology"], m["size"], m["concurrency"]) for m in group.get("echo", [])},
                  key=lambda k: (order.index(k[0]) if k[0] in order else len(order), k[1], k[2]))
    # Ours measured in turns with FLARE's (run_flare's ``ours``), else the matrix's tcp rows.
    beside: dict[tuple[str, int, int], list[dict[str, Any]]] = {}
    for m in group.get("ours_echo", []):
        if "error" not in m:
            beside.setdefault((m["topology"], m["size"], m["concurrency"]), []).append(m)
    metrics = ("rtt_median_us", "msgs_per_s", "mb_per_s")
    for topo, size, conc in keys:
        row: dict[str, Any] = {"kind": "echo", "topology": topo, "size": size, "concurrency": conc}
        reps_ours = beside.get((topo, size, conc))
        if reps_ours:
            row["cellnet"] = {k: _median([m.get(k) for m in reps_ours]) for k in metrics}
            row["cellnet_in_turns"] = True
        else:
            ours = summary.get(("tcp", topo, size, conc))
            row["cellnet"] = {k: ours[k]["median"] if ours and ours.get(k) else None for k in metrics}
            row["cellnet_in_turns"] = False
        for mode in ("frame", "stream"):
            mine = [m for m in group["echo"]
                    if (m["topology"], m["size"], m["concurrency"], m["mode"]) == (topo, size, conc, mode)]
            if not mine:
                continue
            reps = [m for m in mine if "error" not in m]
            theirs = {k: _median([m.get(k) for m in reps]) for k in ("rtt_median_us", "msgs_per_s", "mb_per_s")}
            row[f"flare_{mode}"] = theirs
            row[f"ratio_{mode}"] = {k: _ratio(row["cellnet"][k], theirs[k]) for k in theirs}
            row[f"route_ok_{mode}"] = bool(reps) and all(m["route_ok"] for m in reps)
            errors = [m["error"] for m in mine if "error" in m]
            if errors:
                row[f"errors_{mode}"] = errors
        rows.append(row)
    ours_large = [m for m in flare.get("ours_large", []) if "error" not in m]
    for size in sorted({m["size"] for m in group.get("large", [])}):
        row = {"kind": "large", "topology": "relayed", "size": size}
        # "cellnet": the receiver only counts the bytes, as FLARE's does; "cellnet_file": it saves a file.
        # (Results from before sinks existed were all saved into a file.)
        for key, sink in (("cellnet", "discard"), ("cellnet_file", "file")):
            mine_ours = [m for m in ours_large if m["size"] == size and m["topology"] == "relayed"
                         and m.get("sink", "file") == sink]
            row[key] = {"mb_per_s": _median([m.get("mb_per_s") for m in mine_ours]),
                        "relay_peak_kib": _median([m["rss"].get("relay", {}).get("peak_kib") for m in mine_ours])}
        for mode in ("stream", "frame"):
            mine = [m for m in group["large"] if m["size"] == size and m["mode"] == mode]
            if not mine:
                continue
            reps = [m for m in mine if "error" not in m]
            theirs = {"mb_per_s": _median([m.get("mb_per_s") for m in reps]),
                      "relay_peak_kib": _median([m["peak_rss_kib"].get("server") for m in reps])}
            row[f"flare_{mode}"] = theirs
            row[f"ratio_{mode}"] = {k: _ratio(row["cellnet"][k], theirs[k]) for k in theirs}
            errors = [m["error"] for m in mine if "error" in m]
            if errors:
                row[f"errors_{mode}"] = errors
        rows.append(row)
    return rows


def _opt(x: float | None, scale: float = 1.0) -> str:
    return "-" if x is None else _num(x * scale)


def comparison_markdown(doc: dict[str, Any]) -> list[str]:
    """The "Against NVIDIA FLARE's CellNet" section of results.md (empty without a comparison)."""
    flare = doc.get("flare")
    if not flare:
        return []
    group = flare.get("flare") or {}
    rows = flare.get("rows") or comparison_rows(doc)
    lines = ["## Against NVIDIA FLARE's CellNet", "",
             f"NVIDIA FLARE {group.get('version')}: its cells (server, site-2, and site-1 / site-3 in the measuring "
             "process) over its TCP driver, insecure, each in its own process like ours; cellnet is the tcp "
             "driver. FLARE frame: a request sent as one message (a channel FLARE does not stream); FLARE "
             "stream: `Cell.send_request` on an application channel, which FLARE streams (chunks and acks). "
             "Direct: FLARE's ad-hoc connection between the two client cells. ours/FLARE: RTT below 1 and "
             "msg/s or MB/s above 1 favour cellnet.", ""]
    if any(r.get("cellnet_in_turns") for r in rows if r["kind"] == "echo"):
        lines += ["cellnet's echoes here were measured in turns with FLARE's (each of ours right after FLARE's "
                  "of the same path, size and concurrency, on a second set of our tcp cells), so both sides saw "
                  "the same state of the machine; the tcp table above comes from earlier in the run.", ""]
    for g in (group, flare.get("ours_group") or {}):
        if "error" in g:
            lines += [f"**The comparison failed:** `{g['error'].splitlines()[0][:300]}`", ""]
    echo = [r for r in rows if r["kind"] == "echo"]
    if echo:
        lines += ["| path | size | conc | metric | cellnet | FLARE frame | ours/FLARE | FLARE stream | ours/FLARE |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in echo:
            metrics = [("RTT median ms", "rtt_median_us", 1e-3)] if r["concurrency"] == 1 else []
            metrics += [("msg/s", "msgs_per_s", 1.0)]
            if r["size"] >= 1 << 20:
                metrics += [("MB/s", "mb_per_s", 1.0)]
            for label, key, scale in metrics:
                cells = [_opt(r["cellnet"].get(key), scale)]
                for mode in ("frame", "stream"):
                    theirs = r.get(f"flare_{mode}") or {}
                    ratio = (r.get(f"ratio_{mode}") or {}).get(key)
                    bad = " (!)" if f"errors_{mode}" in r or not r.get(f"route_ok_{mode}", True) else ""
                    cells += [_opt(theirs.get(key), scale) + bad, _opt(ratio)]
                lines.append(f"| {TOPOLOGY_LABELS.get(r['topology'], r['topology'])} | {fmt_size(r['size'])} | "
                             f"{r['concurrency']} | {label} | " + " | ".join(cells) + " |")
        lines.append("")
    large = [r for r in rows if r["kind"] == "large"]
    if large:
        lines += ["One-way relayed transfers (site-1 -> server -> site-2; MB/s = size / time to the receiver's "
                  "answer; relay MiB = peak RSS of the server, VmHWM after a reset). cellnet: "
                  "`cellnet.benchmarks.large`, streamed; its receiver reads the stream and counts the bytes, "
                  "as FLARE's receiver does (FLARE hands its handler the reassembled payload), and ours/FLARE "
                  "compares these. \"into a file\": the same transfer saved with `Stream.save` (fsync included).",
                  "",
                  "| size | cellnet MB/s | relay MiB | cellnet into a file MB/s | FLARE stream MB/s | relay MiB | "
                  "ours/FLARE MB/s | FLARE frame MB/s | relay MiB | ours/FLARE MB/s |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in large:
            cells = [_opt(r["cellnet"]["mb_per_s"]), _opt(r["cellnet"]["relay_peak_kib"], 1 / 1024),
                     _opt((r.get("cellnet_file") or {}).get("mb_per_s"))]
            for mode in ("stream", "frame"):
                theirs = r.get(f"flare_{mode}")
                if theirs is None:
                    cells += ["-", "-", "-"]
                    continue
                bad = " (!)" if f"errors_{mode}" in r else ""
                cells += [_opt(theirs["mb_per_s"]) + bad, _opt(theirs["relay_peak_kib"], 1 / 1024),
                          _opt(r[f"ratio_{mode}"]["mb_per_s"])]
            lines.append(f"| {fmt_size(r['size'])} | " + " | ".join(cells) + " |")
        lines.append("")
    for r in rows:
        for mode in ("frame", "stream"):
            for err in r.get(f"errors_{mode}", [])[:1]:
                lines.append(f"(!) FLARE {mode} {r['topology']} {fmt_size(r['size'])}: {err[:200]}")
    return lines


def plot(doc: dict[str, Any], out: Path) -> list[Path]:
    """Write latency.png and throughput.png into ``out``; return their paths.

    A document without a single measurement (a run interrupted before the
    first one) gives no plots: the list is empty, and plots an earlier run
    left in ``out`` are removed, so that none is taken for this run's.
    """
    paths = []
    for kind in ("latency", "throughput"):
        fig = figure(doc, kind)
        if fig is None:
            for stale in ("latency", "throughput"):
                (out / f"{stale}.png").unlink(missing_ok=True)
            return []
        path = out / f"{kind}.png"
        fig.savefig(path, dpi=100)
        paths.append(path)
    return paths


def _points(doc: dict[str, Any], kind: str, driver: str) -> list[tuple[str, list[tuple[int, float, float, float]],
                                                                      dict[str, Any]]]:
    """The lines of one panel: (label, [(size, median, min, max)], style), bus lines first, then the raw baselines."""
    cfg = doc["config"]
    concs = cfg["concurrency"]
    summary = _index(doc["summary"])
    key, scale = ("rtt_median_us", 1e-3) if kind == "latency" else ("mb_per_s", 1.0)
    colors = {"client-server": "tab:blue", "relayed": "tab:orange", "direct": "tab:green"}
    lines = []
    for topo in cfg["topologies"]:
        for ci, c in enumerate(concs if kind == "throughput" else concs[:1]):
            pts = [(size, s[key]["median"] * scale, s[key]["min"] * scale, s[key]["max"] * scale)
                   for size in cfg["sizes"] if (s := summary.get((driver, topo, size, c))) and s.get(key)]
            if pts:
                lines.append((f"{TOPOLOGY_LABELS.get(topo, topo)} x{c}", pts,
                              {"linestyle": "-" if ci == 0 else "--", "color": colors.get(topo), "marker": "o"}))
    base = [b for b in doc["baselines"] if b["driver"] == driver and "error" not in b and key in b]
    raw_lines = sorted({(b["module"], b.get("concurrency", 1)) for b in base})
    for b_i, (module, c) in enumerate(raw_lines):
        if kind == "latency" and c != concs[0]:
            continue
        mine = sorted((b for b in base if b["module"] == module and b.get("concurrency", 1) == c),
                      key=lambda b: b["size"])
        label = module + (f" x{c}" if c != 1 else "") + ("" if "rtt_median_us" in mine[0] else " (one-way)")
        lines.append((label, [(b["size"], b[key] * scale, b[key] * scale, b[key] * scale) for b in mine],
                      {"linestyle": ":" if c == 1 else "-.", "color": "black" if b_i == 0 else "gray",
                       "marker": "s"}))
    return lines


def figure(doc: dict[str, Any], kind: str) -> Any:
    """The ``latency`` or ``throughput`` figure (a matplotlib ``Figure``), or None without any point to draw."""
    from matplotlib import ticker
    from matplotlib.figure import Figure

    cfg = doc["config"]
    concs = cfg["concurrency"]
    panels = [(d, lines) for d in cfg["drivers"] if (lines := _points(doc, kind, d))]
    if not panels:
        return None
    sizes = sorted({p[0] for _d, lines in panels for _label, pts, _style in lines for p in pts})
    n = len(panels)
    ncols = 2 if n > 1 else 1
    nrows = (n + ncols - 1) // ncols
    fig = Figure(figsize=(6.4 * ncols, 4.2 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax, (driver, lines) in zip(axes.flat, panels):
        for label, pts, style in lines:
            xs = [p[0] for p in pts]
            ys = [p[1] for p in pts]
            if style["marker"] == "o":  # the bus, with its min-max range over the repetitions
                ax.errorbar(xs, ys, yerr=[[y - p[2] for y, p in zip(ys, pts)], [p[3] - y for y, p in zip(ys, pts)]],
                            ms=3, capsize=2, label=label, **style)
            else:
                ax.plot(xs, ys, ms=3, label=label, **style)
        ax.set_xscale("log", base=2)
        ax.set_xlim(sizes[0] / 1.6, sizes[-1] * 1.6)
        mine = sorted({p[0] for _label, pts, _style in lines for p in pts})
        ax.xaxis.set_major_locator(ticker.FixedLocator(mine))  # the sizes measured here, in units: 100 B, 4 KiB
        ax.xaxis.set_major_formatter(ticker.FixedFormatter([_size_label(s) for s in mine]))
        ax.xaxis.set_minor_locator(ticker.NullLocator())
        ax.set_yscale("log")
        low, high = ax.get_ylim()
        if low > 0 and math.log10(high / low) < 1.2:
            ax.set_yscale("linear")  # less than ~a decade: a log axis would have one label or none
            ax.set_ylim(bottom=0)
            ax.yaxis.set_major_locator(ticker.MaxNLocator(nbins=6, steps=[1, 2, 2.5, 5, 10]))
        else:  # plain numbers (0.2, 3, 1000), not 2x10^-1, at least 3 of them
            ax.yaxis.set_major_locator(ticker.FixedLocator(_log_ticks(low, high)))
            ax.yaxis.set_major_formatter(ticker.FuncFormatter(_plain))
            ax.yaxis.set_minor_formatter(ticker.NullFormatter())
            ax.set_ylim(low, high)
        ax.set_title(driver)
        ax.set_xlabel("payload size")
        ax.set_ylabel("RTT median (ms)" if kind == "latency" else "MB/s (payload, both ways)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    if kind == "latency":
        title = "round-trip time vs payload size"
    elif len(concs) == 1:
        title = f"throughput vs payload size (x{concs[0]})"
    else:
        title = (f"throughput vs payload size (solid: x{concs[0]}, dashed: "
                 + ", ".join(f"x{c}" for c in concs[1:]) + ")")
    fig.suptitle("cellnet: " + title)
    fig.tight_layout()
    return fig


def _size_label(n: int) -> str:
    """A payload size on an axis: 100 B, 4 KiB, 64 MiB, or 1.5 MiB when not a whole unit."""
    from cellnet.sizes import format_size

    text = fmt_size(n)
    return format_size(n) if int(text.split()[0]) >= 1024 else text


def _log_ticks(low: float, high: float) -> list[float]:
    """Labelled ticks of a log axis from ``low`` to ``high``: powers of ten when at least 3 of them
    fit (every other one, or fewer, beyond 7), else 1-3 or 1-2-5 steps, whichever first gives 3."""
    first, last = math.floor(math.log10(low)), math.ceil(math.log10(high))
    ticks: list[float] = []
    for steps in ((1,), (1, 3), (1, 2, 5)):
        ticks = [float(f"{m}e{e}") for e in range(first, last + 1) for m in steps
                 if low <= float(f"{m}e{e}") <= high]
        if len(ticks) >= 3:
            break
    if len(ticks) > 7 and steps == (1,):
        step = math.ceil(len(ticks) / 7)
        ticks = [t for t in ticks if round(math.log10(t)) % step == 0]
    return ticks


def _plain(value: float, _pos: int | None = None) -> str:
    """A tick label of a log axis as a plain number: 0.05, 0.2, 3, 1000, 20000."""
    return f"{value:g}" if value < 1e5 else f"{value:.0f}"


#: the keys of results.json that :func:`markdown` and :func:`plot` read
RESULTS_KEYS = ("started", "seconds", "quick", "config", "machine", "groups", "baselines", "summary")


def _load_results(path: Path) -> tuple[dict[str, Any], str]:
    """The document in ``path`` and its Markdown; a :class:`BenchError` says what is wrong with it."""
    from .procs import BenchError

    try:
        doc = json.loads(path.read_text())
    except OSError as exc:
        raise BenchError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise BenchError(f"{path}: not a JSON file ({exc})") from None
    what = f"{path}: not a results.json of the benchmark harness"
    if not isinstance(doc, dict):
        raise BenchError(f"{what} (expected a JSON object, got {type(doc).__name__})")
    missing = [k for k in RESULTS_KEYS if k not in doc]
    if missing:
        raise BenchError(f"{what} (missing keys: {', '.join(missing)})")
    try:
        return doc, markdown(doc)
    except (LookupError, TypeError, ValueError, AttributeError) as exc:
        raise BenchError(f"{what} (malformed: {type(exc).__name__}: {exc})") from None


def main(argv: list[str] | None = None) -> int:
    import argparse

    from .procs import BenchError
    from .paths import check_out_dir

    parser = argparse.ArgumentParser(prog="python -m cellnet.benchmarks.report",
                                     description="Write results.md, latency.png and throughput.png "
                                                 "from a results.json of the benchmark harness.")
    parser.add_argument("results", type=Path, metavar="RESULTS_JSON", help="results.json written by cellnet bench")
    parser.add_argument("out", type=Path, nargs="?", metavar="OUT_DIR",
                        help="folder for results.md and the plots (default: the folder of RESULTS_JSON)")
    args = parser.parse_args(argv)
    out = args.out if args.out is not None else args.results.parent
    try:
        doc, text = _load_results(args.results)
        check_out_dir(out, "OUT_DIR")
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    (out / "results.md").write_text(text)
    print(f"wrote {out / 'results.md'}")
    paths = plot(doc, out)
    for p in paths:
        print(f"wrote {p}")
    if not paths:
        print("no measurements in it: no plots")
    return 0


if __name__ == "__main__":
    sys.exit(main())
