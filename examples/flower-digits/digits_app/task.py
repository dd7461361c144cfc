"""Data partitioning and a NumPy model for the digits app.

The model is a one-hidden-layer ReLU network (or softmax regression when
``hidden_units`` is 0) written with NumPy only, so the app needs no deep
learning framework and trains in seconds on a laptop CPU.

Layers use the NTK parametrisation: weights are drawn from N(0, 1) and each
layer's output is scaled by ``1/sqrt(fan_in)``. With the usual parametrisation
a single learning rate cannot serve both 32 and 80,000 hidden units (the wide
network diverges); with this one it can, which lets the same app double as a
large-model (tens of MB) workload.

Everything is deterministic: the data split uses a fixed seed, and every
source of randomness takes its seed from the run config.

Flower runs every ClientApp task in a fresh process, so start-up cost is paid
per task: the data is read straight from the CSV file that scikit-learn ships
(about 20 ms) instead of importing ``sklearn.datasets`` (about 1 s); the two
give identical arrays, and ``load_digits`` is the fallback.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

NUM_FEATURES = 64
NUM_CLASSES = 10
SPLIT_SEED = 2024
"""Seed of the train/test split and of the partitioning; fixed so every
process of a federation sees the same data layout."""

TEST_FRACTION = 0.2

NODE_RECORD = "node"
"""Name of the ``ConfigRecord`` in which clients report their partition id."""

Params = dict[str, NDArray[np.float32]]


@dataclass(frozen=True)
class Split:
    """Standardised features and integer labels."""

    x: NDArray[np.float32]
    y: NDArray[np.int64]

    def __len__(self) -> int:
        return int(self.y.shape[0])


def load_digits() -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """scikit-learn's handwritten digits: 1797 images of 8x8 pixels, labels 0-9."""
    spec = importlib.util.find_spec("sklearn")  # locates, does not import
    if spec is not None and spec.origin is not None:
        csv = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz"
        if csv.is_file():
            data = np.loadtxt(csv, delimiter=",")
            return data[:, :-1], data[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits as sklearn_load_digits

    x, y = sklearn_load_digits(return_X_y=True)
    return x, y.astype(np.int64)


def _stratified_split(
    y: NDArray[np.int64], test_fraction: float, seed: int
) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """Train and test indices with the same class proportions in both."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == label))
        n_test = int(round(len(members) * test_fraction))
        test.append(members[:n_test])
        train.append(members[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


@lru_cache(maxsize=1)
def _train_test() -> tuple[Split, Split]:
    x, y = load_digits()
    train_idx, test_idx = _stratified_split(y, TEST_FRACTION, SPLIT_SEED)
    x_tr, x_te, y_tr, y_te = x[train_idx], x[test_idx], y[train_idx], y[test_idx]
    # Standardise with the training split's statistics: centred inputs keep
    # plain SGD well conditioned. Constant pixels (std 0) are left at 0.
    mean: NDArray[np.float64] = x_tr.mean(axis=0)
    std: NDArray[np.float64] = x_tr.std(axis=0)
    std[std == 0] = 1.0

    def prep(a: NDArray[np.float64]) -> NDArray[np.float32]:
        return ((a - mean) / std).astype(np.float32)

    return (
        Split(prep(x_tr), y_tr.astype(np.int64)),
        Split(prep(x_te), y_te.astype(np.int64)),
    )


def load_partition(partition_id: int, num_partitions: int) -> tuple[Split, Split]:
    """Return this partition's share of the train split and of the test split.

    Both splits are shuffled with a fixed seed and cut into ``num_partitions``
    near-equal parts (IID), so the union of all partitions is the whole set.
    """
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition-id {partition_id} not in [0, {num_partitions})")
    train, test = _train_test()
    return _shard(train, partition_id, num_partitions), _shard(
        test, partition_id, num_partitions
    )


def load_test() -> Split:
    """The whole held-out test split, for centralised evaluation on the server."""
    return _train_test()[1]


def _shard(split: Split, partition_id: int, num_partitions: int) -> Split:
    order = np.random.default_rng(SPLIT_SEED).permutation(len(split))
    part = np.array_split(order, num_partitions)[partition_id]
    return Split(split.x[part], split.y[part])


def init_params(hidden_units: int, seed: int) -> Params:
    """Fresh parameters; identical for identical ``(hidden_units, seed)``."""
    rng = np.random.default_rng(seed)

    def normal(*shape: int) -> NDArray[np.float32]:
        values: NDArray[np.float32] = rng.standard_normal(shape, dtype=np.float32)
        return values

    if hidden_units <= 0:
        return {
            "w": normal(NUM_FEATURES, NUM_CLASSES),
            "b": np.zeros(NUM_CLASSES, np.float32),
        }
    return {
        "w1": normal(NUM_FEATURES, hidden_units),
        "b1": np.zeros(hidden_units, np.float32),
        "w2": normal(hidden_units, NUM_CLASSES),
        "b2": np.zeros(NUM_CLASSES, np.float32),
    }


def num_bytes(params: Params) -> int:
    return sum(int(p.nbytes) for p in params.values())


def _forward(
    params: Params, x: NDArray[np.float32]
) -> tuple[NDArray[np.float32], NDArray[np.float32] | None]:
    """Logits and, for the MLP, the hidden activations."""
    if "w" in params:
        return (x @ params["w"]) * _scale(NUM_FEATURES) + params["b"], None
    hidden = np.maximum((x @ params["w1"]) * _scale(NUM_FEATURES) + params["b1"], 0)
    hidden_units = params["w1"].shape[1]
    return (hidden @ params["w2"]) * _scale(hidden_units) + params["b2"], hidden


def _scale(fan_in: int) -> np.float32:
    return np.float32(1.0 / np.sqrt(fan_in))


def _softmax_xent(
    logits: NDArray[np.float32], y: NDArray[np.int64]
) -> tuple[float, NDArray[np.float32]]:
    """Mean cross-entropy and its gradient with respect to the logits."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    probs = exp / exp.sum(axis=1, keepdims=True)
    n = y.shape[0]
    loss = float(-np.log(probs[np.arange(n), y] + 1e-12).mean())
    grad = probs
    grad[np.arange(n), y] -= 1.0
    return loss, (grad / np.float32(n)).astype(np.float32)


def _sgd_step(
    params: Params, x: NDArray[np.float32], y: NDArray[np.int64], lr: np.float32
) -> float:
    logits, hidden = _forward(params, x)
    loss, dz = _softmax_xent(logits, y)
    s_in = _scale(NUM_FEATURES)
    if hidden is None:
        params["w"] -= lr * (x.T @ dz) * s_in
        params["b"] -= lr * dz.sum(axis=0)
        return loss
    s_hid = _scale(params["w1"].shape[1])
    dh = (dz @ params["w2"].T) * s_hid
    dh[hidden <= 0] = 0
    params["w2"] -= lr * (hidden.T @ dz) * s_hid
    params["b2"] -= lr * dz.sum(axis=0)
    params["w1"] -= lr * (x.T @ dh) * s_in
    params["b1"] -= lr * dh.sum(axis=0)
    return loss


def train(
    params: Params,
    data: Split,
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    seed: int | Sequence[int],
) -> float:
    """Mini-batch SGD in place; returns the mean training loss of the last epoch.

    ``seed`` drives the batch order only; a sequence such as ``(seed,
    partition, round)`` gives every client and round its own stream.
    """
    rng = np.random.default_rng(seed)
    lr = np.float32(learning_rate)
    last_epoch_loss = 0.0
    for _ in range(epochs):
        order = rng.permutation(len(data))
        losses, sizes = [], []
        for start in range(0, len(data), batch_size):
            batch = order[start : start + batch_size]
            losses.append(_sgd_step(params, data.x[batch], data.y[batch], lr))
            sizes.append(len(batch))
        last_epoch_loss = float(np.average(losses, weights=sizes))
    return last_epoch_loss


def evaluate(params: Params, data: Split) -> tuple[float, float]:
    """Mean cross-entropy loss and accuracy on ``data``."""
    logits, _ = _forward(params, data.x)
    loss, _ = _softmax_xent(logits, data.y)
    accuracy = float((logits.argmax(axis=1) == data.y).mean())
    return loss, accuracy
