"""LightningModule, callbacks (checkpoints, parity plot, throughput, summary, attention maps), W&B logger, prediction."""

from sagnn_lightning.lit.attention_logger import AttentionMapsLogger
from sagnn_lightning.lit.callbacks import BestAndLastCheckpoint, ParityPlot, PredictionsCSV, RunSummary, Throughput
from sagnn_lightning.lit.deadline import Deadline
from sagnn_lightning.lit.history import EpochHistory
from sagnn_lightning.lit.inference import predict_structures
from sagnn_lightning.lit.loading import load_checkpoint
from sagnn_lightning.lit.module import SAGNNModule
from sagnn_lightning.lit.wandb import WandbLogger

__all__ = [
    "AttentionMapsLogger",
    "BestAndLastCheckpoint",
    "Deadline",
    "EpochHistory",
    "ParityPlot",
    "PredictionsCSV",
    "RunSummary",
    "SAGNNModule",
    "Throughput",
    "WandbLogger",
    "load_checkpoint",
    "predict_structures",
]
