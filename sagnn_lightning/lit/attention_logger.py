"""``AttentionMapsLogger``: attention heatmaps of a few validation crystals at the end of training.

Off by default (not among the CLI's callbacks); add it with
``--trainer.callbacks+=sagnn_lightning.lit.attention_logger.AttentionMapsLogger`` (and e.g.
``--trainer.callbacks.num_crystals=8``). With a W&B logger attached the pictures go to W&B (``val/attention_maps``,
one ``wandb.Image`` per crystal, captioned with its id); without one they are written as
``<run dir>/attention_maps/<id>.png``. The pictures are those of ``attention-plots``
(:func:`~sagnn_lightning.lit.attention_plots.crystal_figure`), with the validation target beside the prediction.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import WandbLogger as _LightningWandbLogger
from pytorch_lightning.utilities import rank_zero_only, rank_zero_warn

from sagnn_lightning.lit.attention_export import crystal_arrays, file_stem
from sagnn_lightning.lit.attention_plots import crystal_figure, figure_rgb, save_png


def validation_loader(trainer: pl.Trainer) -> Any:
    """The (first) validation dataloader of ``fit``, else the DataModule's, else ``None``."""
    loaders = trainer.val_dataloaders
    datamodule = getattr(trainer, "datamodule", None)
    if loaders is None and datamodule is not None and hasattr(datamodule, "val_dataloader"):
        loaders = datamodule.val_dataloader()
    if isinstance(loaders, dict):
        loaders = list(loaders.values())
    if isinstance(loaders, (list, tuple)):
        loaders = loaders[0] if loaders else None
    return loaders


class AttentionMapsLogger(Callback):
    """At the end of ``fit``: attention heatmaps of the first ``num_crystals`` validation crystals (rank 0 only).

    The network is the one at the end of training (not reloaded from the best checkpoint), run in eval mode with
    ``return_attention=True`` (:class:`~sagnn_lightning.models.SAGNN`). A model without attention layers or a run
    without validation data gets a warning and no pictures.

    Args:
        num_crystals: how many validation crystals (default 4), in the validation loader's order.
        max_atoms: skip crystals with more atoms than this (their heatmaps are unreadable; default 64).
        key: the W&B key of the images (default ``val/attention_maps``).
    """

    def __init__(self, num_crystals: int = 4, max_atoms: int = 64, key: str = "val/attention_maps") -> None:
        if num_crystals < 1:
            raise ValueError(f"AttentionMapsLogger: num_crystals must be >= 1, got {num_crystals}")
        if max_atoms < 1:
            raise ValueError(f"AttentionMapsLogger: max_atoms must be >= 1, got {max_atoms}")
        self.num_crystals, self.max_atoms, self.key = num_crystals, max_atoms, key
        self.paths: list[Path] = []

    def collect(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> list[dict[str, Any]]:
        """The export arrays (:func:`~sagnn_lightning.lit.attention_export.crystal_arrays`) of the first
        ``num_crystals`` validation crystals, with the validation target as ``target``."""
        loader = validation_loader(trainer)
        model = getattr(pl_module, "model", None)
        if loader is None or model is None or not len(getattr(model, "attention_layers", ())):
            return []
        names = list(getattr(pl_module, "target_names", ["target"]))
        records: list[dict[str, Any]] = []
        was_training = pl_module.training
        pl_module.eval()
        try:
            with torch.no_grad():
                for batch_idx, batch in enumerate(loader):
                    batch = batch.to(pl_module.device)
                    outputs = pl_module.predict_step(batch, batch_idx)
                    _, maps = model(batch, return_attention=True)
                    targets = getattr(batch, "y", None)
                    for b, arrays in enumerate(crystal_arrays(batch, maps, outputs, names)):
                        if targets is not None:
                            arrays["target"] = targets[b].detach().double().cpu().numpy()
                        if len(arrays["atomic_numbers"]) <= self.max_atoms:
                            records.append(arrays)
                    if len(records) >= self.num_crystals:
                        break
        finally:
            pl_module.train(was_training)
        return records[: self.num_crystals]

    @rank_zero_only
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        records = self.collect(trainer, pl_module)
        if not records:
            rank_zero_warn(
                "AttentionMapsLogger: no attention maps (no validation data, no crystal with at most "
                f"{self.max_atoms} atoms, or a model without attention layers)"
            )
            return
        wandb_loggers = [lg for lg in trainer.loggers if isinstance(lg, _LightningWandbLogger)]
        if wandb_loggers:
            images = [figure_rgb(crystal_figure(arrays)) for arrays in records]
            captions = [str(arrays["id"]) for arrays in records]
            for logger in wandb_loggers:
                logger.log_image(key=self.key, images=images, caption=captions)
            return
        folder = Path(trainer.default_root_dir) / "attention_maps"
        self.paths = [
            save_png(crystal_figure(arrays), folder / f"{file_stem(str(arrays['id']))}.png") for arrays in records
        ]
