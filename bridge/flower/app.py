"""A Flower app and the Flower install, as a federation run needs them.

:func:`load_app` reads and checks an app folder; :func:`find_flower` finds the
Flower commands next to an interpreter; :func:`resolve_run_config` turns
``--rounds``, ``--run-config KEY=VALUE`` and the number of clients into the
overrides passed to ``flwr run``.

Conventions applied to the app's ``[tool.flwr.app.config]``: ``rounds``
sets ``num-server-rounds``; if the app declares ``min-nodes``, it is set to
the number of clients unless given explicitly, so that every node takes part
in every round. Other keys can be overridden through ``run_config``.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import math
import shutil
import sys
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

from .errors import FlowerNotInstalled, InvalidRunConfig, NotAFlowerApp

RunConfigValue: TypeAlias = bool | int | float | str


@dataclass(frozen=True)
class FlowerApp:
    """A Flower app folder, as read from its ``pyproject.toml``."""

    path: Path
    name: str
    version: str
    publisher: str
    config: Mapping[str, Any]
    """Defaults of ``[tool.flwr.app.config]`` (the keys ``run_config`` may set)."""


def load_app(app_dir: str | Path) -> FlowerApp:
    """Read and check an app folder; :class:`~.errors.NotAFlowerApp` if it is not one."""
    path = Path(app_dir).expanduser().resolve()
    pyproject = path / "pyproject.toml"
    if not path.is_dir():
        raise NotAFlowerApp(f"{path}: not a folder")
    if not pyproject.is_file():
        raise NotAFlowerApp(f"{path}: no pyproject.toml, so not a Flower app")
    try:
        data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise NotAFlowerApp(f"{pyproject}: cannot be read as TOML: {exc}") from exc
    app = data.get("tool", {}).get("flwr", {}).get("app")
    if not isinstance(app, dict):
        raise NotAFlowerApp(f"{pyproject}: no [tool.flwr.app] section, so not a Flower app")
    components = app.get("components", {})
    missing = [c for c in ("serverapp", "clientapp") if c not in components]
    if missing:
        raise NotAFlowerApp(f"{pyproject}: [tool.flwr.app.components] lacks {', '.join(missing)}")
    project = data.get("project", {})
    return FlowerApp(
        path=path,
        name=str(project.get("name", path.name)),
        version=str(project.get("version", "")),
        publisher=str(app.get("publisher", "")),
        config=dict(app.get("config", {})),
    )


@dataclass(frozen=True)
class FlowerInstall:
    """Where the Flower commands are, and which version they are."""

    version: str
    bin_dir: Path

    def command(self, name: str) -> str:
        return str(self.bin_dir / name)


def find_flower(python: str | Path | None = None) -> FlowerInstall:
    """Locate Flower next to ``python`` (default: this interpreter).

    Raises :class:`~.errors.FlowerNotInstalled` with the install hint.
    """
    if importlib.util.find_spec("flwr") is None:
        raise FlowerNotInstalled("Flower (flwr) is not installed")
    try:
        version = importlib.metadata.version("flwr")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    bin_dir = Path(python or sys.executable).parent
    for command in ("flower-superlink", "flower-supernode", "flower-superexec", "flwr"):
        if not (bin_dir / command).exists():
            found = shutil.which(command)
            if found is None:
                raise FlowerNotInstalled(f"the Flower command {command!r} was not found")
            bin_dir = Path(found).parent
    return FlowerInstall(version=version, bin_dir=bin_dir)


def parse_run_config_items(items: Iterable[str]) -> dict[str, RunConfigValue]:
    """Parse ``KEY=VALUE`` strings (as on a command line) into a run config.

    Values are read as TOML (``3``, ``0.5``, ``true``, ``"text"``); a value
    that is not valid TOML is taken as a plain string.
    """
    result: dict[str, RunConfigValue] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key, raw = key.strip(), raw.strip()
        if not sep or not key:
            raise InvalidRunConfig(f"run config {item!r}: expected KEY=VALUE")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        if not isinstance(value, bool | int | float | str):
            raise InvalidRunConfig(f"run config {item!r}: only numbers, booleans, strings")
        result[key] = value
    return result


def resolve_run_config(
    app: FlowerApp,
    *,
    clients: int,
    rounds: int | None,
    run_config: Mapping[str, RunConfigValue] | Sequence[str] | None,
) -> dict[str, RunConfigValue]:
    """The overrides passed to ``flwr run --run-config`` (see the module docstring)."""
    if run_config is None:
        overrides: dict[str, RunConfigValue] = {}
    elif isinstance(run_config, Mapping):
        overrides = dict(run_config)
    else:
        overrides = parse_run_config_items(run_config)
    if rounds is not None:
        if rounds < 1:
            raise InvalidRunConfig(f"rounds must be >= 1, got {rounds}")
        overrides["num-server-rounds"] = rounds
    if "min-nodes" in app.config and "min-nodes" not in overrides:
        overrides["min-nodes"] = clients
    unknown = sorted(set(overrides) - set(app.config))
    if unknown:
        known = ", ".join(sorted(app.config)) or "none"
        raise InvalidRunConfig(
            f"{app.name}: run config key(s) {', '.join(unknown)} not in "
            f"[tool.flwr.app.config] (known: {known})"
        )
    return overrides


def format_run_config(overrides: Mapping[str, RunConfigValue]) -> list[str]:
    """``--run-config`` arguments, one per key so values may contain spaces."""
    args: list[str] = []
    for key, value in overrides.items():
        args += ["--run-config", f"{key}={_toml_value(value)}"]
    return args


def _toml_value(value: RunConfigValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    return json.dumps(value)  # a TOML basic string


__all__ = [
    "FlowerApp",
    "FlowerInstall",
    "RunConfigValue",
    "find_flower",
    "format_run_config",
    "load_app",
    "parse_run_config_items",
    "resolve_run_config",
]
