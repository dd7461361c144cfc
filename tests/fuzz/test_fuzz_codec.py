"""Run the atheris codec harness for a bounded number of inputs."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

HARNESS = Path(__file__).with_name("fuzz_codec.py")
RUNS = 20_000

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("atheris") is None,
    reason="atheris is not installed (pip install atheris); the codec fuzz harness needs it",
)


def test_codec_fuzz_harness(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(HARNESS),
            f"-runs={RUNS}",
            "-max_total_time=25",  # a safety net; the runs finish well before
            f"-artifact_prefix={tmp_path}/",
        ],
        cwd=tmp_path,
        capture_output=True,
        check=False,
        text=True,
        timeout=60,
    )
    report = "\n".join(
        line for line in proc.stderr.splitlines() if not line.startswith("INFO: Instrumenting")
    )
    assert proc.returncode == 0, f"fuzzer failed (exit {proc.returncode}):\n{report[-6000:]}"
    assert "Done" in report, report[-2000:]
