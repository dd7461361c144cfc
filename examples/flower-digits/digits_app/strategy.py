"""FedAvg that aggregates in a fixed order.

Floating-point sums depend on their order. The stock ``FedAvg`` adds client
updates in the order replies arrive, so two runs of the same app with three or
more clients can differ in the last bits. Sorting the replies by partition id
before aggregating makes every run with the same seeds bit-identical, whatever
the network timing (a direct run and a run through a relay, for example).
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import FedAvg

from digits_app.task import NODE_RECORD


def reply_order(message: Message) -> tuple[int, int, int]:
    """Sort key: replies with content first, by partition id, then by node id.

    Replies without a partition id (errors, or clients of another app) keep a
    stable place after the ones that have one.
    """
    node_id = message.metadata.src_node_id
    if message.has_error() or NODE_RECORD not in message.content.config_records:
        return (1, 0, node_id)
    partition_id = message.content.config_records[NODE_RECORD].get("partition-id")
    if not isinstance(partition_id, int):
        return (1, 0, node_id)
    return (0, partition_id, node_id)


class OrderedFedAvg(FedAvg):
    """:class:`FedAvg` whose aggregation does not depend on reply arrival order."""

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return super().aggregate_train(server_round, sorted(replies, key=reply_order))

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        return super().aggregate_evaluate(
            server_round, sorted(replies, key=reply_order)
        )
