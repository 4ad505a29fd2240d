"""SA-GNN for crystal property prediction, as a PyTorch Lightning plugin."""

__version__ = "0.1.0"
