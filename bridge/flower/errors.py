"""Errors of the Flower bridge.

They extend the cellnet tree (:mod:`cellnet.errors`), split by what the
caller can do about them::

    CellnetError
    └── FlowerBridgeError
        ├── NotAFlowerApp          fix the input: no pyproject.toml / [tool.flwr.app]
        ├── InvalidRunConfig       fix the input: bad client count, rounds, run-config
        ├── FlowerNotInstalled     fix the install: pip install "cellnet[flower]"
        ├── ProcessFailed          a process died or never became ready; has its log tail
        │   ├── PortInUse          its port was taken by someone else (retryable)
        │   └── StartupTimeout     it stayed alive but never became ready
        └── RunFailed              the Flower run itself failed or gave no metrics
"""

from __future__ import annotations

from cellnet.errors import CellnetError, ConfigError

INSTALL_HINT = 'pip install "cellnet[flower]"'


class FlowerBridgeError(CellnetError):
    """Base class of errors raised by :mod:`cellnet.bridge.flower`."""


class NotAFlowerApp(FlowerBridgeError, ConfigError):
    """The folder is not a Flower app: no ``pyproject.toml`` with ``[tool.flwr.app]``."""


class InvalidRunConfig(FlowerBridgeError, ConfigError):
    """An argument of a federation run is invalid (e.g. an unknown run-config key)."""


class FlowerNotInstalled(FlowerBridgeError, ImportError):
    """Flower (``flwr``) or one of its commands is missing."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"{detail}; install it with: {INSTALL_HINT}")
        self.detail = detail


class ProcessFailed(FlowerBridgeError):
    """A process exited, or failed to start, when it should be running.

    ``log_tail`` holds the last lines of its log, which usually say why.
    """

    def __init__(self, name: str, reason: str, log_tail: str = "") -> None:
        message = f"{name}: {reason}"
        if log_tail.strip():
            message += f"\n--- last lines of the {name} log ---\n{log_tail.rstrip()}"
        super().__init__(message)
        self.name = name
        self.reason = reason
        self.log_tail = log_tail


class PortInUse(ProcessFailed):
    """The process could not bind its port because another process holds it."""

    def __init__(self, name: str, port: int, log_tail: str = "") -> None:
        super().__init__(name, f"port {port} is already in use", log_tail)
        self.port = port


class StartupTimeout(ProcessFailed):
    """The process stayed alive but did not become ready in time."""


class RunFailed(FlowerBridgeError):
    """``flwr run`` failed, timed out, or its output had no round metrics."""

    def __init__(self, reason: str, log_tail: str = "") -> None:
        message = reason
        if log_tail.strip():
            message += f"\n--- last lines of the flwr run output ---\n{log_tail.rstrip()}"
        super().__init__(message)
        self.reason = reason
        self.log_tail = log_tail


__all__ = [
    "INSTALL_HINT",
    "FlowerBridgeError",
    "FlowerNotInstalled",
    "InvalidRunConfig",
    "NotAFlowerApp",
    "PortInUse",
    "ProcessFailed",
    "RunFailed",
    "StartupTimeout",
]
