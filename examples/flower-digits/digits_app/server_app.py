"""The ServerApp: FedAvg over every connected node, plus central evaluation.

All nodes take part in every round (fractions 1.0, and ``min-nodes`` nodes
must be connected before a round starts), so a run's metrics depend only on
the seeds and the number of partitions.
"""

from __future__ import annotations

from flwr.app import Array, ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from digits_app import task
from digits_app.strategy import OrderedFedAvg

app = ServerApp()


def central_evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
    """Evaluate the global model on the whole held-out test split."""
    params = {name: array.numpy() for name, array in arrays.items()}
    loss, accuracy = task.evaluate(params, task.load_test())
    return MetricRecord({"central_loss": loss, "central_acc": accuracy})


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run ``num-server-rounds`` rounds of FedAvg."""
    run = context.run_config
    min_nodes = int(run["min-nodes"])
    params = task.init_params(int(run["hidden-units"]), int(run["seed"]))
    initial = ArrayRecord({name: Array(value) for name, value in params.items()})

    strategy = OrderedFedAvg(
        fraction_train=1.0,
        fraction_evaluate=1.0,
        min_train_nodes=min_nodes,
        min_evaluate_nodes=min_nodes,
        min_available_nodes=min_nodes,
    )
    strategy.start(
        grid=grid,
        initial_arrays=initial,
        num_rounds=int(run["num-server-rounds"]),
        evaluate_fn=central_evaluate,
    )
