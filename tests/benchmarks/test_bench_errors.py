"""Bad input to the benchmark tools: one line ``error: ...``, exit code 2, no traceback.

Every error here happens before a benchmark starts, so each test takes about
the time Python needs to start.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cellnet.benchmarks.bench_config import BenchConfig

pytestmark = pytest.mark.timeout(60)

#: every entry point that writes into ``--out``
OUT_COMMANDS = [
    ["cellnet.benchmarks"],
    ["cellnet", "bench"],
    ["cellnet.benchmarks.large"],
    ["cellnet.benchmarks", "--large"],
]


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python -m ARGS`` in ``cwd``, its temporary folders in ``cwd/tmp`` (to check none is left)."""
    tmp = cwd / "tmp"
    tmp.mkdir(exist_ok=True)
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, check=False, capture_output=True,
                          text=True, timeout=50, env={**os.environ, "TMPDIR": str(tmp)})


def _error(proc: subprocess.CompletedProcess[str], *words: str) -> str:
    """The one error line of ``proc``, once checked: exit code 2, no traceback, every word in it."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


# -- python -m cellnet.benchmarks.report -----------------------------------------------------


def _results(path: Path) -> Path:
    """A results.json with every key the report reads (no measurements)."""
    doc = {"started": "2024-01-01T00:00:00Z", "seconds": 1.0, "quick": True, "interrupted": False,
           "config": BenchConfig(drivers=["tcp"]).to_json(), "machine": {}, "groups": [], "baselines": [],
           "summary": []}
    path.write_text(json.dumps(doc))
    return path


def test_report_help(tmp_path: Path) -> None:
    proc = _run(["cellnet.benchmarks.report", "--help"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "RESULTS_JSON" in proc.stdout and "OUT_DIR" in proc.stdout


def test_report_bad_results_json(tmp_path: Path) -> None:
    _error(_run(["cellnet.benchmarks.report", "missing.json"], tmp_path), "missing.json", "No such file")
    (tmp_path / "text.json").write_text("not json\n")
    _error(_run(["cellnet.benchmarks.report", "text.json"], tmp_path), "text.json", "not a JSON file")
    (tmp_path / "empty.json").write_text("{}\n")
    _error(_run(["cellnet.benchmarks.report", "empty.json"], tmp_path), "empty.json", "missing keys", "config")
    (tmp_path / "list.json").write_text("[1, 2]\n")
    _error(_run(["cellnet.benchmarks.report", "list.json"], tmp_path), "list.json", "expected a JSON object")
    assert not (tmp_path / "results.md").exists()


def test_report_out_dir_is_a_file(tmp_path: Path) -> None:
    _results(tmp_path / "results.json")
    (tmp_path / "afile").write_text("")
    _error(_run(["cellnet.benchmarks.report", "results.json", "afile"], tmp_path), "OUT_DIR afile", "is a file")
    _error(_run(["cellnet.benchmarks.report", "results.json", "afile/sub"], tmp_path), "afile/sub",
           "lies under afile")
    assert not (tmp_path / "results.md").exists()


# -- --out of cellnet bench, python -m cellnet.benchmarks[.large] ---------------------------


@pytest.mark.parametrize("command", OUT_COMMANDS, ids=" ".join)
def test_out_is_a_file(tmp_path: Path, command: list[str]) -> None:
    (tmp_path / "afile").write_text("")
    _error(_run([*command, "--out", "afile"], tmp_path), "--out afile", "is a file, not a folder")
    _error(_run([*command, "--quick", "--out", "afile/x/y"], tmp_path), "--out afile/x/y", "lies under afile")
    assert (tmp_path / "afile").read_text() == ""


@pytest.mark.parametrize("command", OUT_COMMANDS, ids=" ".join)
def test_out_cannot_be_created(tmp_path: Path, command: list[str]) -> None:
    # /proc refuses new folders, even to root
    _error(_run([*command, "--out", "/proc/cellnet-bench-out"], tmp_path), "/proc/cellnet-bench-out",
           "cannot create the folder")


# -- the configs --------------------------------------------------------------------------------


def test_large_tmp_must_be_a_writable_folder(tmp_path: Path) -> None:
    _error(_run(["cellnet.benchmarks.large", "--tmp", "/nonexistent"], tmp_path),
           "--tmp: /nonexistent does not exist", "writable folder")
    (tmp_path / "afile").write_text("")
    _error(_run(["cellnet.benchmarks.large", "--tmp", "afile"], tmp_path), "--tmp: afile is not a folder")
    config = tmp_path / "bench.toml"
    config.write_text('[large]\ntmp = "/nonexistent"\n')
    for command in (["cellnet.benchmarks.large"], ["cellnet.benchmarks", "--large"]):
        _error(_run([*command, "--config", str(config)], tmp_path),
               f"{config}: large.tmp: /nonexistent does not exist")
    assert list((tmp_path / "tmp").iterdir()) == []  # no temporary folder left behind
    assert not (tmp_path / "bench-results").exists()


@pytest.mark.parametrize("quick", [False, True])
def test_bad_quick_table_is_refused_with_or_without_quick(tmp_path: Path, quick: bool) -> None:
    flag = ["--quick"] if quick else []
    config = tmp_path / "bench.toml"
    config.write_text('[quick]\nsizes = ["oops"]\n\n[large.quick]\nrepetitions = 0\n')
    for command in (["cellnet.benchmarks"], ["cellnet", "bench"]):
        _error(_run([*command, *flag, "--config", str(config)], tmp_path), f"{config}: quick.sizes", '"oops"')
    for command in (["cellnet.benchmarks.large"], ["cellnet.benchmarks", "--large"]):
        _error(_run([*command, *flag, "--config", str(config)], tmp_path),
               f"{config}: large.quick.repetitions: expected an integer >= 1, got 0")
    assert not (tmp_path / "bench-results").exists()


def test_messages_name_the_file_and_the_value(tmp_path: Path) -> None:
    config = tmp_path / "bench.toml"
    for text, words in [
        ("[bench]\nrepetitions = -1\n", "bench.repetitions: expected an integer >= 1, got -1"),
        ("[bench]\nwarmup = -2\n", "bench.warmup: expected an integer >= 0, got -2"),
        ("[bench]\nduration = 0\n", "bench.duration: expected a positive number of seconds, got 0"),
        ("[bench]\ncompare = 1\n", "bench.compare: expected true or false, got 1"),
    ]:
        config.write_text(text)
        line = _error(_run(["cellnet.benchmarks", "--config", str(config)], tmp_path), words)
        assert line.startswith(f"error: {config}: ")
    config.write_text("[large]\ntimeout = -5\n")
    line = _error(_run(["cellnet.benchmarks.large", "--config", str(config)], tmp_path),
                  "large.timeout: expected a positive number of seconds, got -5")
    assert line.startswith(f"error: {config}: ")


def test_large_command_line_options_are_named_as_options(tmp_path: Path) -> None:
    large = ["cellnet.benchmarks.large"]
    _error(_run([*large, "--drivers", "udp"], tmp_path), "--drivers: unknown ['udp']")
    _error(_run([*large, "--repetitions", "0"], tmp_path), "--repetitions: expected an integer >= 1, got 0")
    _error(_run([*large, "--sizes", "lots"], tmp_path), "--sizes:", '"lots"')
    proc = _run([*large, "--sinks", "disk"], tmp_path)
    assert "command line" not in _error(proc, "--sinks: unknown ['disk']")


def test_missing_config_file_is_named_in_plain_words(tmp_path: Path) -> None:
    (tmp_path / "afolder").mkdir()
    for command in (["cellnet", "bench"], ["cellnet.benchmarks"], ["cellnet.benchmarks.large"],
                    ["cellnet.benchmarks", "--large"]):
        line = _error(_run([*command, "--config", "nope.toml"], tmp_path), "nope.toml: no such file")
        assert "Errno" not in line
        line = _error(_run([*command, "--config", "afolder"], tmp_path), "afolder: is a folder, not a file")
        assert "Errno" not in line
    assert not (tmp_path / "bench-results").exists()


def test_unreadable_or_malformed_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cellnet.benchmarks.bench_config import load_bench_config, read_toml
    from cellnet.benchmarks.procs import BenchError
    from cellnet.benchmarks.large import load_large_config

    config = tmp_path / "bench.toml"
    config.write_text("[bench\n")
    with pytest.raises(BenchError, match=r"bench.toml: not valid TOML: .*line 1"):
        read_toml(config)
    config.write_bytes(b"[bench]\nseed = 1 # \xff\n")
    with pytest.raises(BenchError, match="bench.toml: not a text file"):
        load_large_config(config, quick=False)

    def denied(*_args: object, **_kwargs: object) -> str:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_text", denied)  # root can read any file: pretend
    for load in (load_bench_config, load_large_config):
        with pytest.raises(BenchError) as info:
            load(config, False)
        assert str(info.value) == f"{config}: cannot read it: Permission denied"


# -- the standalone raw baselines ---------------------------------------------------------------

RAW_TOOLS = ["raw_echo", "raw_stream", "raw_grpc_echo", "raw_websocket_echo", "raw_redis_echo"]


def _usage_error(proc: subprocess.CompletedProcess[str], *words: str) -> str:
    """The argparse error line of ``proc``: exit code 2, no traceback, one ``error:`` line with every word."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr and not proc.stdout, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if "error:" in ln]
    assert len(lines) == 1, proc.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


@pytest.mark.parametrize("tool", RAW_TOOLS)
def test_raw_tools_refuse_bad_arguments(tmp_path: Path, tool: str) -> None:
    module = [f"cellnet.benchmarks.{tool}"]
    for args, words in [
        (["--size", "100", "--count", "0"], ("--count", "expected a whole number >= 1", "'0'")),
        (["--count", "-3"], ("--count", "'-3'")),
        (["--count", "many"], ("--count", "'many'")),
        (["--size", "-5"], ("--size", "expected a size", "'-5'")),
        (["--size", "0"], ("--size", "'0'")),
        (["--size", "2GiB"], ("--size", "1 GiB", "'2GiB'")),
        (["--size", "64 parsecs"], ("--size", "'64 parsecs'")),
    ]:
        _usage_error(_run([*module, *args], tmp_path), *words)


def test_raw_echo_refuses_zero_concurrency(tmp_path: Path) -> None:
    _usage_error(_run(["cellnet.benchmarks.raw_echo", "--concurrency", "0"], tmp_path),
                 "--concurrency", "expected a whole number >= 1", "'0'")


def test_raw_tools_accept_sizes_with_units() -> None:
    from cellnet.benchmarks._stats import echo_parser

    args = echo_parser(None).parse_args(["--size", "64KiB", "--count", "3"])
    assert (args.size, args.count) == (64 * 1024, 3)
    assert echo_parser(None).parse_args(["--size", "1.5MiB"]).size == 3 << 19
    assert echo_parser(None).parse_args([]).size == 100  # the defaults are unchanged


def test_raw_echo_runs_with_a_size_in_units(tmp_path: Path) -> None:
    proc = _run(["cellnet.benchmarks.raw_echo", "--size", "4KiB", "--count", "3"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["size"] == 4096 and result["count"] == 3 and result["concurrency"] == 1


def test_raw_stream_measure_refuses_an_empty_burst() -> None:
    from cellnet.benchmarks import raw_stream

    with pytest.raises(ValueError, match="count 0"):
        raw_stream.measure(100, 0)  # it used to wait forever for the sink
