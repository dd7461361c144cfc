"""The summaries and the Markdown tables of the large-message benchmark
(:mod:`cellnet.benchmarks.large`)."""

from __future__ import annotations

import statistics
from typing import Any

from .large import EXPECTED_ROUTES, ROLES, TOPOLOGY_LABELS
from .report import fmt_size, problem_lines


def spread(values: list[float | None]) -> dict[str, float] | None:
    good = [v for v in values if v is not None]
    if not good:
        return None
    return {"median": statistics.median(good), "min": min(good), "max": max(good)}


def summarize(measurements: list[dict[str, Any]], baselines: list[dict[str, Any]]) -> dict[str, Any]:
    """Median and min-max over the repetitions of every (driver, topology, sink, size), and raw per size."""
    raw: dict[int, list[float]] = {}
    for b in baselines:
        if "error" not in b:
            raw.setdefault(b["size"], []).append(b["mb_per_s"])
    raw_summary = {size: spread(v) for size, v in raw.items()}
    cells: dict[tuple[str, str, str, int], list[dict[str, Any]]] = {}
    for m in measurements:
        cells.setdefault((m["driver"], m["topology"], m["sink"], m["size"]), []).append(m)
    rows = []
    for (driver, topo, sink, size), reps in cells.items():
        good = [r for r in reps if "error" not in r]
        entry: dict[str, Any] = {
            "driver": driver, "topology": topo, "sink": sink, "size": size, "repetitions": len(good),
            "errors": [r["error"] for r in reps if "error" in r],
            "bytes_ok": bool(good) and all(r["bytes_ok"] for r in good),
            "route": good[0]["route"] if good else None,
            "route_ok": bool(good) and all(r["route"] == EXPECTED_ROUTES[topo] for r in good),
            "mb_per_s": spread([r["mb_per_s"] for r in good]),
            "elapsed_s": spread([r["elapsed_s"] for r in good]),
            "save_s": spread([r.get("save_s") for r in good]),
            "rss_kib": {},
        }
        for role in ROLES:
            if any(role in r["rss"] for r in good):
                entry["rss_kib"][role] = {k: spread([r["rss"][role][k] for r in good if role in r["rss"]])
                                          for k in ("baseline_kib", "peak_kib", "growth_kib")}
        base = raw_summary.get(size)
        if base and entry["mb_per_s"]:
            entry["vs_raw"] = entry["mb_per_s"]["median"] / base["median"]
        rows.append(entry)
    return {"rows": rows, "raw": {str(k): v for k, v in raw_summary.items()}}


def _mb(s: dict[str, float] | None) -> str:
    if not s:
        return "-"
    lo, mid, hi = (f"{s[k]:.0f}" for k in ("min", "median", "max"))
    return mid if lo == hi else f"{mid} ({lo}-{hi})"


def _mib(s: dict[str, float] | None, sign: bool = False) -> str:
    if not s:
        return "-"
    fmt = "{:+.0f}" if sign else "{:.0f}"
    lo, mid, hi = (fmt.format(s[k] / 1024) for k in ("min", "median", "max"))
    return mid if lo == hi else f"{mid} ({lo}..{hi})"


def markdown(doc: dict[str, Any]) -> str:
    cfg, machine, summary = doc["config"], doc["machine"], doc["summary"]
    limits = ", ".join(f"{k} {fmt_size(cfg[k])}" for k in ("chunk", "window") if cfg.get(k)) or "cell defaults"
    lines = [
        "# cellnet large-message benchmark",
        "",
        f"Started {doc['started']}, took {doc['seconds']:.0f} s{' (--quick)' if doc['quick'] else ''}. "
        f"Python {machine.get('python')} on {machine.get('platform')}, {machine.get('cpu_count')} CPUs"
        f"{' (' + machine['cpu_model'] + ')' if machine.get('cpu_model') else ''}.",
        "Packages: " + ", ".join(f"{k} {v}" for k, v in sorted(machine.get("packages", {}).items())) + ".",
        "",
        f"One request per measurement; the payload is an async iterable of {fmt_size(cfg['block'])} blocks "
        f"(seed {cfg['seed']}). Sink: \"discard\" = the receiver reads the stream and only counts the bytes "
        "(like the raw baseline's sink: the like-for-like comparison with raw TCP); \"file\" = it saves "
        f"the stream into a file in {doc['files']['folder']} ({doc['files']['filesystem']}; Stream.save, "
        "fsync included, so transport plus file write). "
        f"[limits]: {limits}. MB/s = payload bytes / time from request to reply (10^6 bytes); x raw = MB/s "
        "over the raw TCP baseline of the same size. "
        "Median over the repetitions, min-max in parentheses. RSS in MiB: peak (VmHWM, reset just before "
        "the transfer) and growth over the RSS just before it.",
        "",
    ]
    lines += problem_lines(doc)
    lines += ["| driver | path | sink | size | reps | MB/s | x raw | sender peak / growth | relay peak / growth "
              "| receiver peak / growth | save s |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in summary["rows"]:
        path = TOPOLOGY_LABELS.get(r["topology"], r["topology"])
        if r["errors"] or not r["bytes_ok"] or not r["route_ok"]:
            path += " (!)"
        cells = []
        for role in ROLES:
            s = r["rss_kib"].get(role)
            cells.append(f"{_mib(s['peak_kib'])} / {_mib(s['growth_kib'], True)}" if s else "-")
        save = r["save_s"]
        ratio = f"{r['vs_raw']:.2f}" if "vs_raw" in r else "-"
        lines.append(f"| {r['driver']} | {path} | {r['sink']} | {fmt_size(r['size'])} | {r['repetitions']} | "
                     f"{_mb(r['mb_per_s'])} | {ratio} | " + " | ".join(cells)
                     + (f" | {save['median']:.2f} |" if save else " | - |"))
    if summary["raw"]:
        lines += ["", "Raw TCP baseline (raw_stream: one asyncio connection, 1 MiB messages, counting sink):", "",
                  "| size | reps | MB/s |", "|---|---|---|"]
        for size, s in summary["raw"].items():
            n = sum(1 for b in doc["baselines"] if str(b["size"]) == size and "error" not in b)
            lines.append(f"| {fmt_size(int(size))} | {n} | {_mb(s)} |")
    problems = [r for r in summary["rows"] if r["errors"] or not r["bytes_ok"] or not r["route_ok"]]
    if problems:
        lines.append("")
    for r in problems:
        why = r["errors"][0] if r["errors"] else ("byte count differs" if not r["bytes_ok"]
                                                   else f"unexpected route {r['route']}")
        lines.append(f"(!) {r['driver']} {r['topology']} {r['sink']} {fmt_size(r['size'])}: {why[:200]}")
    return "\n".join(lines).rstrip() + "\n"
