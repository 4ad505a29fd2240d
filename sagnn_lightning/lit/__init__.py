"""LightningModule, callbacks (checkpoints, parity plot, throughput, summary), W&B logger, prediction."""

from sagnn_lightning.lit.callbacks import BestAndLastCheckpoint, ParityPlot, PredictionsCSV, RunSummary, Throughput
from sagnn_lightning.lit.module import SAGNNModule
from sagnn_lightning.lit.wandb import WandbLogger

__all__ = [
    "BestAndLastCheckpoint",
    "ParityPlot",
    "PredictionsCSV",
    "RunSummary",
    "SAGNNModule",
    "Throughput",
    "WandbLogger",
]
