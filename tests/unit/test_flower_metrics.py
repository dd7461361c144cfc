"""The parser of ``flwr run --stream`` output, on captured real output.

``data/flwr_run_stream_digits.log`` is the unedited output of ``flwr run
--stream`` (flwr 1.42.0) for ``examples/flower-digits`` with 2 clients and 3
rounds; ``data/flwr_run_stream_serverapp_error.log`` is the same app with a
run config that makes the ServerApp raise.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from cellnet.bridge.flower.metrics import (
    SCHEMA,
    MetricsReported,
    Replies,
    RoundFinished,
    RoundStarted,
    RunMetrics,
    RunStarted,
    ServerAppFailed,
    StrategyFinished,
    StreamParser,
    parse_record,
    parse_stream,
)

DATA = Path(__file__).with_name("data")
DIGITS_LOG = DATA / "flwr_run_stream_digits.log"
ERROR_LOG = DATA / "flwr_run_stream_serverapp_error.log"


@pytest.fixture(scope="module")
def digits() -> RunMetrics:
    return parse_stream(DIGITS_LOG.read_text(encoding="utf-8"))


def test_captured_run_has_three_full_rounds(digits: RunMetrics) -> None:
    assert digits.run_id == "7475261082908412045"
    assert digits.num_rounds == 3
    assert digits.finished and digits.strategy_time_s == pytest.approx(38.01)
    assert digits.error is None
    assert [r.round for r in digits.rounds] == [1, 2, 3]
    for r in digits.rounds:
        assert set(r.train or {}) == {"train_loss"}
        assert set(r.evaluate or {}) == {"eval_loss", "eval_acc"}
        assert set(r.central or {}) == {"central_loss", "central_acc"}
        assert r.replies == {"train": Replies(2, 0), "evaluate": Replies(2, 0)}
    assert digits.initial_central == {
        "central_loss": 2.79640531539917,
        "central_acc": 0.055710306406685235,
    }


def test_values_are_exact_not_the_rounded_summary(digits: RunMetrics) -> None:
    # The summary Flower prints at the end says '2.6158e-01'; the per-round
    # lines carry the full repr, which is what must be compared across runs.
    last = digits.rounds[-1]
    assert last.train == {"train_loss": 0.26157508588943923}
    assert last.evaluate == {"eval_loss": 0.33967086182995426, "eval_acc": 0.9080779944289694}
    assert last.central == {"central_loss": 0.3396708369255066, "central_acc": 0.9080779944289693}


def test_events_arrive_in_order_while_streaming() -> None:
    parser = StreamParser()
    events = []
    for line in DIGITS_LOG.read_text(encoding="utf-8").splitlines(keepends=True):
        events.extend(parser.feed(line))
    events.extend(parser.close())

    kinds = [type(e).__name__ for e in events]
    assert kinds[:3] == ["RunStarted", "MetricsReported", "RoundStarted"]
    assert isinstance(events[0], RunStarted)
    assert events[1] == MetricsReported(0, "central", parser.metrics.initial_central or {})
    per_round = ["RoundStarted", "MetricsReported", "MetricsReported", "MetricsReported", "RoundFinished"]
    assert kinds[2:] == per_round * 3 + ["StrategyFinished"]
    started = [e for e in events if isinstance(e, RoundStarted)]
    assert [(e.round, e.total) for e in started] == [(1, 3), (2, 3), (3, 3)]
    phases = [(e.round, e.phase) for e in events if isinstance(e, MetricsReported)]
    assert phases[1:4] == [(1, "train"), (1, "evaluate"), (1, "central")]
    finished = [e.metrics.round for e in events if isinstance(e, RoundFinished)]
    assert finished == [1, 2, 3]
    assert isinstance(events[-1], StrategyFinished)


def test_json_round_trip_is_exact(digits: RunMetrics) -> None:
    data = json.loads(json.dumps(digits.to_dict()))
    assert set(data) == {"run_id", "num_rounds", "strategy_time_s", "initial", "rounds", "error"}
    assert data["rounds"][0]["replies"]["train"] == {"received": 2, "failed": 0}
    assert RunMetrics.from_dict(data) == digits
    assert SCHEMA.startswith("cellnet.flower.metrics/")


def test_serverapp_failure_is_detected() -> None:
    parser = StreamParser()
    events = parser.feed_all(ERROR_LOG.read_text(encoding="utf-8").splitlines())
    metrics = parser.metrics
    assert metrics.error == "ServerApp raised an exception (Exit Code: 201)"
    assert metrics.rounds == [] and not metrics.finished
    assert metrics.run_id == "10411075923174974352"
    assert any(isinstance(e, ServerAppFailed) for e in events)


def test_cut_short_stream_keeps_the_partial_round(digits: RunMetrics) -> None:
    lines = DIGITS_LOG.read_text(encoding="utf-8").splitlines()
    cut = next(i for i, line in enumerate(lines) if "[ROUND 2/3]" in line) + 4
    metrics = parse_stream("\n".join(lines[:cut]))
    assert not metrics.finished
    assert [r.round for r in metrics.rounds] == [1, 2]
    assert metrics.rounds[1].train == digits.rounds[1].train
    assert metrics.rounds[1].evaluate is None


def test_unrelated_and_coloured_lines_are_ignored() -> None:
    text = "\n".join(
        [
            "noise before anything",
            "\x1b[92mINFO \x1b[0m:      [ROUND 1/1]",
            "\x1b[92mINFO \x1b[0m:      \t└──> Aggregated MetricRecord: {'x': 1.0}",  # no phase yet
            "\x1b[92mINFO \x1b[0m:      aggregate_train: Received 3 results and 1 failures",
            "some print() output of the ServerApp",
            "\x1b[92mINFO \x1b[0m:      \t└──> Aggregated MetricRecord: {'train_loss': 0.5}",
            "\x1b[92mINFO \x1b[0m:      Strategy execution finished in 1.5s",
        ]
    )
    metrics = parse_stream(text)
    assert metrics.finished
    assert len(metrics.rounds) == 1
    assert metrics.rounds[0].train == {"train_loss": 0.5}
    assert metrics.rounds[0].replies == {"train": Replies(3, 1)}


def test_nothing_recognised_gives_empty_metrics() -> None:
    metrics = parse_stream("Using SuperLink: x\nhello\n")
    assert metrics == RunMetrics()
    assert metrics.to_dict()["rounds"] == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{'loss': 0.1, 'n': 3}", {"loss": 0.1, "n": 3}),
        ("{'hist': [1, 2.5]}", {"hist": [1, 2.5]}),
        ("{}", {}),
        ("None", None),
        ("{'name': 'text'}", None),
        ("{'flag': True}", None),
        ("{1: 2.0}", None),
        ("{'a': 1", None),
        ("{'a': __import__('os')}", None),
    ],
)
def test_parse_record(text: str, expected: object) -> None:
    assert parse_record(text) == expected


def test_parse_record_special_floats() -> None:
    record = parse_record("{'a': nan, 'b': inf, 'c': -inf, 'd': [nan, 1.0]}")
    assert record is not None
    assert math.isnan(record["a"])  # type: ignore[arg-type]
    assert record["b"] == math.inf and record["c"] == -math.inf
    assert math.isnan(record["d"][0]) and record["d"][1] == 1.0  # type: ignore[index]
