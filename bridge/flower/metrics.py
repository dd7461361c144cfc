"""Round metrics from the output of ``flwr run --stream``.

``flwr run --stream`` relays the ServerApp's log. Flower's message-API
strategies (``flwr.serverapp.strategy``: FedAvg, FedAdam, ...) all log each
round in the same shape, which this module turns into events and a summary::

    [ROUND 2/3]
    aggregate_train: Received 2 results and 0 failures
        └──> Aggregated MetricRecord: {'train_loss': 0.394...}
    aggregate_evaluate: Received 2 results and 0 failures
        └──> Aggregated MetricRecord: {'eval_loss': 0.454..., 'eval_acc': 0.877...}
    Global evaluation
        └──> MetricRecord: {'central_loss': 0.454..., 'central_acc': 0.877...}

The records are printed with Python's ``repr``, which round-trips floats
exactly, so parsed values are bit-identical to the ServerApp's (the summary
table Flower prints at the end is rounded and is not used). The parser is
sans-I/O: feed it lines, get events; it never blocks.

JSON document written by ``--out``
----------------------------------

The runner (:mod:`cellnet.bridge.flower.federation`) writes one object;
the keys marked *metrics* come from :meth:`RunMetrics.to_dict`::

    {
      "schema": "cellnet.flower.metrics/1",
      "app": "digits-app",                # [project].name of the app
      "mode": "direct",                   # "direct" or "bus"
      "driver": null,                     # bus driver scheme, e.g. "tcp"; null if direct
      "clients": 2,                       # number of SuperNodes
      "run_config": {"num-server-rounds": 3, ...},   # overrides passed to flwr run
      "flwr_version": "1.42.0",
      "wall_time_s": 58.1,                # start of the first process to last stop
      "run_id": "7371649234307620570",    # metrics; null if not seen
      "num_rounds": 3,                    # metrics; R of the last "[ROUND r/R]"
      "strategy_time_s": 46.58,           # metrics; "Strategy execution finished in"
      "error": null,                      # metrics; the ServerApp's error line, if it failed
      "initial": {"central": {...}},      # metrics; round-0 central evaluation, or null
      "rounds": [                         # metrics; one entry per round, in order
        {
          "round": 1,
          "train": {"train_loss": 0.95},          # aggregated train metrics, or null
          "evaluate": {"eval_loss": 0.83, ...},   # aggregated evaluate metrics, or null
          "central": {"central_acc": 0.78, ...},  # server-side evaluation, or null
          "replies": {                            # per phase; absent phases omitted
            "train": {"received": 2, "failed": 0},
            "evaluate": {"received": 2, "failed": 0}
          }
        }
      ]
    }

Metric values are numbers or lists of numbers, as in a Flower
``MetricRecord``. A NaN or infinite metric is written as ``NaN`` /
``Infinity`` (Python's ``json`` extension), the only non-standard JSON.
"""

from __future__ import annotations

import ast
import io
import math
import re
import tokenize
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

SCHEMA = "cellnet.flower.metrics/1"

Phase: TypeAlias = Literal["train", "evaluate", "central"]
MetricValue: TypeAlias = int | float | list[int | float]
Metrics: TypeAlias = dict[str, MetricValue]

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
_RUN_ID = re.compile(r"Successfully started run (\d+)")
_ROUND = re.compile(r"\[ROUND (\d+)/(\d+)\]")
_REPLIES = re.compile(r"aggregate_(train|evaluate): Received (\d+) results and (\d+) failures")
_GLOBAL_EVAL = re.compile(r"(?:^|\s)Global evaluation\s*$")
_RECORD = re.compile(r"└──> (Aggregated )?MetricRecord: (.*)$")
_INITIAL = re.compile(r"Initial global evaluation results: (.*)$")
_FINISHED = re.compile(r"Strategy execution finished in ([0-9.]+)s")
_FINAL_RESULTS = re.compile(r"Final results:\s*$")
_SERVER_ERROR = re.compile(r"ServerApp raised an exception|Exit Code: (\d+)")


# -- data ----------------------------------------------------------------------


@dataclass(frozen=True)
class Replies:
    """How many replies a phase of a round got and how many were errors."""

    received: int
    failed: int

    def to_dict(self) -> dict[str, int]:
        return {"received": self.received, "failed": self.failed}


@dataclass
class RoundMetrics:
    """Everything reported for one round."""

    round: int
    train: Metrics | None = None
    evaluate: Metrics | None = None
    central: Metrics | None = None
    replies: dict[str, Replies] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "train": self.train,
            "evaluate": self.evaluate,
            "central": self.central,
            "replies": {phase: r.to_dict() for phase, r in self.replies.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RoundMetrics:
        return cls(
            round=int(data["round"]),
            train=data.get("train"),
            evaluate=data.get("evaluate"),
            central=data.get("central"),
            replies={k: Replies(**v) for k, v in (data.get("replies") or {}).items()},
        )


@dataclass
class RunMetrics:
    """The metrics of a whole run, as parsed so far."""

    run_id: str | None = None
    num_rounds: int | None = None
    strategy_time_s: float | None = None
    initial_central: Metrics | None = None
    rounds: list[RoundMetrics] = field(default_factory=list)
    error: str | None = None
    """Set if the ServerApp reported a failure ("ServerApp raised an exception",
    "Exit Code: N"); the text of that line."""

    @property
    def finished(self) -> bool:
        """True once the strategy reported the end of its rounds."""
        return self.strategy_time_s is not None

    def final(self) -> RoundMetrics | None:
        return self.rounds[-1] if self.rounds else None

    def to_dict(self) -> dict[str, Any]:
        """The metrics part of the ``--out`` document (see the module docstring)."""
        return {
            "run_id": self.run_id,
            "num_rounds": self.num_rounds,
            "strategy_time_s": self.strategy_time_s,
            "initial": (
                None if self.initial_central is None else {"central": self.initial_central}
            ),
            "rounds": [r.to_dict() for r in self.rounds],
            "error": self.error,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunMetrics:
        initial = data.get("initial") or {}
        return cls(
            run_id=data.get("run_id"),
            num_rounds=data.get("num_rounds"),
            strategy_time_s=data.get("strategy_time_s"),
            initial_central=initial.get("central"),
            rounds=[RoundMetrics.from_dict(r) for r in data.get("rounds", [])],
            error=data.get("error"),
        )


# -- events ----------------------------------------------------------------------


@dataclass(frozen=True)
class RunStarted:
    """The SuperLink accepted the run."""

    run_id: str


@dataclass(frozen=True)
class RoundStarted:
    """``[ROUND r/R]``: round ``round`` of ``total`` begins."""

    round: int
    total: int


@dataclass(frozen=True)
class MetricsReported:
    """A phase of a round reported its aggregated metrics (round 0: initial)."""

    round: int
    phase: Phase
    metrics: Metrics


@dataclass(frozen=True)
class RoundFinished:
    """A round is complete; ``metrics`` holds all it reported."""

    metrics: RoundMetrics


@dataclass(frozen=True)
class StrategyFinished:
    """The strategy ran all its rounds in ``seconds``."""

    seconds: float


@dataclass(frozen=True)
class ServerAppFailed:
    """The ServerApp reported an error; ``line`` is the log line that said so."""

    line: str


StreamEvent: TypeAlias = (
    RunStarted
    | RoundStarted
    | MetricsReported
    | RoundFinished
    | StrategyFinished
    | ServerAppFailed
)


# -- parser --------------------------------------------------------------------


class StreamParser:
    """Incremental parser of ``flwr run --stream`` output.

    Feed it lines in order with :meth:`feed`; it returns the events each line
    completes and keeps the run's :class:`RunMetrics` in :attr:`metrics`.
    Lines it does not recognise are ignored, so other log output is harmless.
    """

    def __init__(self) -> None:
        self.metrics = RunMetrics()
        self._current: RoundMetrics | None = None
        self._phase: Phase | None = None
        self._done = False

    def feed(self, line: str) -> list[StreamEvent]:
        text = _ANSI.sub("", line).rstrip()
        if not text:
            return []
        if _SERVER_ERROR.search(text):
            message = _strip_level(text)
            if self.metrics.error is None:
                self.metrics.error = message
            elif "Exit Code" in message and "Exit Code" not in self.metrics.error:
                self.metrics.error += f" ({message})"
            return [ServerAppFailed(message)]
        if self._done:
            return []
        if match := _RUN_ID.search(text):
            self.metrics.run_id = match.group(1)
            return [RunStarted(match.group(1))]
        if match := _ROUND.search(text):
            events = self._finish_round()
            number, total = int(match.group(1)), int(match.group(2))
            self.metrics.num_rounds = total
            self._current = RoundMetrics(number)
            self._phase = None
            return [*events, RoundStarted(number, total)]
        if match := _REPLIES.search(text):
            phase: Phase = "train" if match.group(1) == "train" else "evaluate"
            self._phase = phase
            if self._current is not None:
                self._current.replies[phase] = Replies(int(match.group(2)), int(match.group(3)))
            return []
        if _GLOBAL_EVAL.search(text):
            self._phase = "central"
            return []
        if match := _INITIAL.search(text):
            record = parse_record(match.group(1))
            if record is None:
                return []
            self.metrics.initial_central = record
            return [MetricsReported(0, "central", record)]
        if match := _RECORD.search(text):
            return self._record(aggregated=bool(match.group(1)), text=match.group(2))
        if match := _FINISHED.search(text):
            events = self._finish_round()
            self.metrics.strategy_time_s = float(match.group(1))
            return [*events, StrategyFinished(self.metrics.strategy_time_s)]
        if _FINAL_RESULTS.search(text):
            # What follows is a rounded summary of what we already have.
            self._done = True
        return []

    def feed_all(self, lines: Iterable[str]) -> list[StreamEvent]:
        events: list[StreamEvent] = []
        for line in lines:
            events.extend(self.feed(line))
        return events

    def close(self) -> list[StreamEvent]:
        """End of output: complete a round that was cut short."""
        events = self._finish_round()
        self._done = True
        return events

    def _record(self, *, aggregated: bool, text: str) -> list[StreamEvent]:
        phase, current = self._phase, self._current
        if current is None or phase is None:
            return []
        if aggregated == (phase == "central"):
            return []  # not the record this phase announced
        record = parse_record(text)
        self._phase = None
        if record is None:
            return []
        setattr(current, phase, record)
        return [MetricsReported(current.round, phase, record)]

    def _finish_round(self) -> list[StreamEvent]:
        current, self._current = self._current, None
        if current is None:
            return []
        self.metrics.rounds.append(current)
        return [RoundFinished(current)]


def _strip_level(text: str) -> str:
    """Drop a leading ``ERROR :`` style log-level prefix."""
    return re.sub(r"^[A-Z]+\s*:\s*", "", text).strip()


def parse_stream(text: str) -> RunMetrics:
    """Parse a complete ``flwr run --stream`` output."""
    parser = StreamParser()
    parser.feed_all(text.splitlines())
    parser.close()
    return parser.metrics


# -- record values -------------------------------------------------------------

_SPECIAL = {"\0nan": math.nan, "\0inf": math.inf, "\0-inf": -math.inf}


def parse_record(text: str) -> Metrics | None:
    """Parse a ``MetricRecord`` as printed by Flower (a dict ``repr``).

    ``None`` for ``None`` or anything that is not a dict of numbers. ``nan``
    and ``inf``, which ``repr`` prints as bare names, are read as floats.
    """
    text = text.strip()
    if not text.startswith("{"):
        return None
    try:
        value = ast.literal_eval(_quote_special_floats(text))
    except (ValueError, SyntaxError, tokenize.TokenError, MemoryError, RecursionError):
        return None
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        return None
    result: Metrics = {}
    for key, item in value.items():
        converted = _number_or_list(item)
        if converted is None:
            return None
        result[key] = converted
    return result


def _quote_special_floats(text: str) -> str:
    """Turn the bare names ``nan``, ``inf`` and ``-inf`` into marker strings."""
    tokens: list[tuple[int, str]] = []
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type == tokenize.NAME and tok.string in ("nan", "inf"):
            name = tok.string
            if tokens and tokens[-1] == (tokenize.OP, "-"):
                tokens.pop()
                name = "-" + name
            tokens.append((tokenize.STRING, repr("\0" + name)))
        else:
            tokens.append((tok.type, tok.string))
    return tokenize.untokenize(tokens)


def _number(value: object) -> int | float | None:
    if isinstance(value, str):
        return _SPECIAL.get(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value


def _number_or_list(value: object) -> MetricValue | None:
    if isinstance(value, list):
        items = [_number(v) for v in value]
        if any(v is None for v in items):
            return None
        return [v for v in items if v is not None]
    return _number(value)


__all__ = [
    "SCHEMA",
    "MetricsReported",
    "Phase",
    "Replies",
    "RoundFinished",
    "RoundMetrics",
    "RoundStarted",
    "RunMetrics",
    "RunStarted",
    "ServerAppFailed",
    "StrategyFinished",
    "StreamEvent",
    "StreamParser",
    "parse_record",
    "parse_stream",
]
