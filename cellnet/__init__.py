"""cellnet: a cell-addressed message bus for federated systems."""

__version__ = "0.1.0"
