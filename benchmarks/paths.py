"""Checks of the folders the benchmark tools write into, made before any benchmark starts."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from .procs import BenchError

T = TypeVar("T")


def check_out_dir(path: Path, what: str = "--out") -> None:
    """Make sure ``path`` is a writable folder, creating it (and its parents) if needed.

    Raises :class:`BenchError` naming ``what`` (the option or argument), the
    path and the problem: the path, or a folder above it, is a file; or the
    folder cannot be created or written to.
    """
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                where = "is a file" if p == path else f"lies under {p}, which is a file"
                raise BenchError(f"{what} {path}: {where}, not a folder")
            break
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BenchError(f"{what} {path}: cannot create the folder: {exc.strerror or exc}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise BenchError(f"{what} {path}: the folder is not writable")


def check_writable_dir(value: object, ctx: str) -> str:
    """``value`` as the path of an existing, writable folder, else a :class:`BenchError` naming ``ctx``."""
    if not isinstance(value, str) or not value:
        raise BenchError(f"{ctx}: expected the path of a folder, got {value!r}")
    if not os.path.isdir(value):
        problem = "is not a folder" if os.path.exists(value) else "does not exist"
        raise BenchError(f"{ctx}: {value} {problem}; expected an existing, writable folder")
    if not os.access(value, os.W_OK | os.X_OK):
        raise BenchError(f"{ctx}: {value} is not writable; expected an existing, writable folder")
    return value


def checked_config(load: Callable[[Path | None, bool], T], config: Path | None, quick: bool, out: Path) -> T | None:
    """``load(config, quick)``, with ``out`` checked too (:func:`check_out_dir`): what an entry point
    does before a benchmark starts. On a :class:`BenchError`, prints ``error: ...`` and returns None."""
    try:
        cfg = load(config, quick)
        check_out_dir(out)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None
    return cfg
