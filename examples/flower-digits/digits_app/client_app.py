"""The ClientApp: local training and evaluation on one partition.

Each SuperNode is started with ``--node-config 'partition-id=I
num-partitions=N'``, which selects its share of the data. Replies carry the
partition id in a ``ConfigRecord`` so that the server can aggregate in a fixed
order (see :mod:`digits_app.strategy`).
"""

from __future__ import annotations

from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    MetricRecordValues,
    RecordDict,
)
from flwr.clientapp import ClientApp

from digits_app import task

app = ClientApp()


def _partition(context: Context) -> tuple[int, int]:
    return (
        int(context.node_config["partition-id"]),
        int(context.node_config["num-partitions"]),
    )


def _params(message: Message) -> task.Params:
    arrays = message.content.array_records["arrays"]
    # Copies: the received buffers are read-only and training updates in place.
    return {name: array.numpy().copy() for name, array in arrays.items()}


def _server_round(message: Message) -> int:
    value = message.content.config_records["config"]["server-round"]
    if not isinstance(value, int):
        raise TypeError(f"server-round must be an int, got {value!r}")
    return value


def _reply(
    message: Message,
    partition_id: int,
    metrics: dict[str, MetricRecordValues],
    params: task.Params | None = None,
) -> Message:
    content = RecordDict(
        {
            "metrics": MetricRecord(metrics),
            task.NODE_RECORD: ConfigRecord({"partition-id": partition_id}),
        }
    )
    if params is not None:
        content["arrays"] = ArrayRecord(
            {name: Array(value) for name, value in params.items()}
        )
    return Message(content=content, reply_to=message)


@app.train()
def train(message: Message, context: Context) -> Message:
    """Train the received model on this partition's training data."""
    partition_id, num_partitions = _partition(context)
    train_data, _ = task.load_partition(partition_id, num_partitions)
    params = _params(message)
    server_round = _server_round(message)
    run = context.run_config
    loss = task.train(
        params,
        train_data,
        epochs=int(run["local-epochs"]),
        batch_size=int(run["batch-size"]),
        learning_rate=float(run["learning-rate"]),
        # A distinct, reproducible shuffle per (seed, partition, round).
        seed=(int(run["seed"]), partition_id, server_round),
    )
    metrics: dict[str, MetricRecordValues] = {
        "train_loss": loss,
        "num-examples": len(train_data),
    }
    return _reply(message, partition_id, metrics, params)


@app.evaluate()
def evaluate(message: Message, context: Context) -> Message:
    """Evaluate the received model on this partition's share of the test split."""
    partition_id, num_partitions = _partition(context)
    _, test_data = task.load_partition(partition_id, num_partitions)
    loss, accuracy = task.evaluate(_params(message), test_data)
    metrics: dict[str, MetricRecordValues] = {
        "eval_loss": loss,
        "eval_acc": accuracy,
        "num-examples": len(test_data),
    }
    return _reply(message, partition_id, metrics)
