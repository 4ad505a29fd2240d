"""``SAGNNModule``: the LightningModule that trains an :class:`~sagnn_lightning.models.sagnn.SAGNN`.

Regression: the network predicts *standardised* targets ``(y - mean) / std`` (training-split
statistics, linked from the DataModule by the CLI); the loss (L1 or MSE) is computed in those
units, everything returned or logged (predictions, MAE/RMSE/R²) is in real units.

Binary classification: the network predicts logits; the loss is BCE-with-logits; ROC-AUC and
accuracy (threshold 0.5 on the probability) are logged.

Targets may contain NaN (multitask data with missing labels): those entries are left out of the
loss and of the metrics, by masked arithmetic (no device-to-host read per step).

Logged keys (``stage`` in ``train``/``val``/``test``): ``{stage}/loss`` and, per stage,
``{stage}/mae``, ``{stage}/rmse``, ``{stage}/r2`` (regression) or ``{stage}/auroc``,
``{stage}/accuracy`` (classification). With several targets the plain key is the mean over targets
and ``{stage}/<metric>_<target name>`` is logged for each target. Everything is logged per epoch with
``batch_size=num_graphs`` and synchronised across DDP processes: the metrics are logged as torchmetrics
objects (:mod:`sagnn_lightning.lit.metrics`; their states are reduced inside ``compute``), the loss with
``sync_dist=True``. The module itself runs no collective, so every rank reduces the same values in
Lightning's order whatever the callbacks do.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torchmetrics import Metric

from sagnn_lightning.data.targets import TRANSFORMS, TargetTransformer
from sagnn_lightning.data.tasks import TaskType
from sagnn_lightning.errors import UsageError, param
from sagnn_lightning.files import safe_name
from sagnn_lightning.lit import finetune
from sagnn_lightning.lit.checkpoints import graph_settings_from_checkpoint
from sagnn_lightning.lit.inference import predict_items
from sagnn_lightning.lit.lr_multipliers import apply_lr_multipliers, check_lr_multipliers, lr_param_groups
from sagnn_lightning.lit.metrics import labels_with_missing, make_metrics
from sagnn_lightning.lit.schedules import HoldThenLinearDecay
from sagnn_lightning.lit.wandb import CHECKPOINT_RUN_ID_KEY, active_run_id
from sagnn_lightning.models.composition import CompositionSAGNN
from sagnn_lightning.models.sagnn import SAGNN

LossName = Literal["l1", "mse"]
STAGES: tuple[str, ...] = ("train", "val", "test")

#: metric used to pick the best checkpoint, and whether larger is better
MONITOR: dict[str, tuple[str, str]] = {"regression": ("val/mae", "min"), "classification": ("val/auroc", "max")}


class SAGNNModule(pl.LightningModule):
    """Train / evaluate / predict with an SA-GNN.

    Args:
        model: the network, ``forward(batch) -> [B, T]`` (default: ``SAGNN()`` with its defaults): ``SAGNN``
            for crystals, ``CompositionSAGNN`` for compositions.
            From YAML: ``model: {class_path: sagnn_lightning.models.SAGNN, init_args: {...}}``; the CLI
            sets ``num_targets`` from the DataModule.
        task_type: ``"regression"`` or ``"classification"`` (binary, targets 0/1); set by the CLI
            from the DataModule.
        target_mean: per-target training mean ``[T]`` in real units (regression; default 0).
        target_std: per-target training standard deviation ``[T]`` (regression; default 1).
        target_names: ``T`` names used in metric keys and prediction columns (default ``target_<k>``).
        loss: ``"l1"`` (default, matbench's MAE) or ``"mse"``; regression only.
        optimizer: optimizer factory ``params -> Optimizer`` (default ``torch.optim.Adam``, lr 1e-3).
        scheduler: LR scheduler factory ``optimizer -> scheduler`` or ``None`` (constant LR, default).
            ``ReduceLROnPlateau`` monitors ``val/loss``; other schedulers step once per epoch.
        init_from: fine-tuning: a pretrained model's name (:func:`sagnn_lightning.pretrained.available`) or a
            ``.ckpt`` whose *network* weights are loaded when ``fit``/``validate``/``test``/``predict`` sets up
            (a run resumed with ``ckpt_path`` then restores its own). The optimizer starts fresh; target statistics come from the
            new training data. The architecture must match (:func:`~sagnn_lightning.lit.finetune.init_weights`).
        freeze: parameter-name prefixes of the network whose weights are not trained, e.g.
            ``["atom_embedding", "atom_encoder", "blocks.0"]``
            (:func:`~sagnn_lightning.lit.finetune.parameter_groups` lists them).
        reset_head: with ``init_from``, keep the output MLP (``model.head``) freshly initialised instead of
            loading it: for another target or number of targets.
        compile: ``torch.compile`` the network when training starts: ``None`` (off, default), or a mode,
            ``"default"``, ``"reduce-overhead"`` (CUDA graphs) or ``"max-autotune"``. Shapes are marked dynamic
            (crystals differ in size), so an epoch compiles a few graphs, not one per batch. In place: parameter
            names, checkpoints and the attention export are unchanged. See docs/guide/model.md.
        compile_backend: the ``torch.compile`` backend (default ``"inductor"``; ``"aot_eager"`` checks tracing
            without code generation).
        target_transforms: per target, ``"none"`` or ``"log"`` (linked from the DataModule, whose statistics are
            of the transformed values): the network learns the transformed target, predictions and metrics are in
            the target's unit (:mod:`sagnn_lightning.data.targets`).
        loss_weights: per-target weights of the loss (default 1 each); the loss is the weighted mean over the
            targets each row has.
        lr_multipliers: ``{parameter-name prefix: multiplier}`` of the optimizer's learning rate for parts of the
            network (names as for ``freeze``), e.g. ``{"attention_layers": 0.1}``; the rest keeps the optimizer's
            rate (:mod:`~sagnn_lightning.lit.lr_multipliers`).
    """

    # buffers registered in __init__ (declared for type checkers)
    target_mean: Tensor
    target_std: Tensor
    loss_weights: Tensor

    def __init__(
        self,
        model: SAGNN | CompositionSAGNN | None = None,
        task_type: TaskType = "regression",
        target_mean: Sequence[float] | None = None,
        target_std: Sequence[float] | None = None,
        target_names: Sequence[str] | None = None,
        loss: LossName = "l1",
        optimizer: OptimizerCallable = torch.optim.Adam,
        scheduler: LRSchedulerCallable | None = None,
        init_from: str | None = None,
        freeze: Sequence[str] | None = None,
        reset_head: bool = False,
        compile: Literal["default", "reduce-overhead", "max-autotune"] | None = None,
        compile_backend: str = "inductor",
        target_transforms: Sequence[str] | None = None,
        loss_weights: Sequence[float] | None = None,
        lr_multipliers: dict[str, float] | None = None,
    ) -> None:
        super().__init__()
        if task_type not in ("regression", "classification"):
            raise ValueError(f"SAGNNModule: task_type must be 'regression' or 'classification', got {task_type!r}")
        if loss not in ("l1", "mse"):
            raise ValueError(f"SAGNNModule: unknown loss {loss!r}; use 'l1' (mean absolute error) or 'mse'")
        # Under LightningCLI the saved hyper-parameters are the parsed config (class paths + init args), so
        # ``load_from_checkpoint`` rebuilds model and optimizer without pickled code. Built in Python, the
        # objects themselves are not saved: pass ``model=`` to ``load_from_checkpoint`` then.
        with warnings.catch_warnings():  # a first look at the arguments; objects are dropped just below
            warnings.filterwarnings("ignore", message=r"Attribute '\w+' is an instance of `nn.Module`")
            self.save_hyperparameters()
        objects = [
            key
            for key in ("model", "optimizer", "scheduler")
            if key in self.hparams and not _plain_config(self.hparams[key])
        ]
        if objects:
            self.save_hyperparameters(ignore=objects)
        self.model = model if model is not None else SAGNN()
        num_targets = int(getattr(self.model, "num_targets", 1))
        self.task_type: TaskType = task_type
        self.loss_name = loss
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.num_targets = num_targets
        self.target_names = _check_names(target_names, num_targets)
        mean = _check_stat(target_mean, num_targets, 0.0, "target_mean")
        std = _check_stat(target_std, num_targets, 1.0, "target_std")
        if task_type == "classification":  # logits are not standardised
            mean, std = torch.zeros(num_targets), torch.ones(num_targets)
        if not torch.all(std > 0):
            raise ValueError(
                f"SAGNNModule: target_std must be > 0 for every target, got {std.tolist()}; "
                "a constant target cannot be learned, drop it"
            )
        self.register_buffer("target_mean", mean.reshape(1, -1))
        self.register_buffer("target_std", std.reshape(1, -1))
        self.target_transforms = list(target_transforms) if target_transforms is not None else ["none"] * num_targets
        if len(self.target_transforms) != num_targets or any(t not in TRANSFORMS for t in self.target_transforms):
            raise UsageError(
                f"SAGNNModule: target_transforms must give one of {list(TRANSFORMS)} per target "
                f"({num_targets}), got {self.target_transforms}; link it from the DataModule"
            )
        self.transformer = TargetTransformer(self.target_transforms)
        weights = torch.ones(num_targets) if loss_weights is None else torch.as_tensor(loss_weights, dtype=torch.float)
        if weights.numel() != num_targets or not torch.all(weights >= 0) or not weights.sum() > 0:
            raise UsageError(
                f"{param('model.loss_weights')} must give {num_targets} weights >= 0, not all 0, one per target "
                f"{self.target_names}; got {list(loss_weights or [])}"
            )
        self.register_buffer("loss_weights", weights.reshape(1, -1), persistent=False)  # from the hparams
        self.init_from = str(init_from) if init_from else None
        self.reset_head = bool(reset_head)
        if compile not in (None, "default", "reduce-overhead", "max-autotune"):
            raise UsageError(
                f"{param('model.compile')} must be null, 'default', 'reduce-overhead' or 'max-autotune', got {compile!r}"
            )
        self.compile_mode, self.compile_backend = compile, compile_backend
        if self.reset_head and not self.init_from:
            raise UsageError(
                f"{param(finetune.RESET_HEAD)}=true needs {param(finetune.INIT_FROM)}=<pretrained name or .ckpt>"
            )
        self.frozen = finetune.freeze(self.model, list(freeze or []))
        self.lr_multipliers = check_lr_multipliers(self.model, lr_multipliers)
        self._init_loaded = False
        #: ``{"cutoff", "max_neighbors", "max_isolated_radius"}`` of the graphs it trains on (from the DataModule at
        #: set-up, or from the checkpoint): :meth:`predict` builds its graphs with them
        self.graph_settings: dict[str, Any] | None = None
        self.train_metrics = self._make_metrics()
        self.val_metrics = self._make_metrics()
        self.test_metrics = self._make_metrics()

    # ------------------------------------------------------------------ set-up
    def _make_metrics(self) -> nn.ModuleDict:
        """One stage's metrics (:func:`~sagnn_lightning.lit.metrics.make_metrics`), keyed by metric name."""
        keys = [safe_name(name, "target") for name in self.target_names]
        return nn.ModuleDict(make_metrics(self.task_type, keys))

    def _metrics(self, stage: str) -> dict[str, Metric]:
        return dict(getattr(self, f"{stage}_metrics").items())

    @property
    def monitor(self) -> tuple[str, str]:
        """``(metric key, "min" | "max")`` that selects the best checkpoint: with several regression targets,
        ``val/loss`` (the weighted loss on the standardised, transformed targets), since a mean of MAEs in different
        units would let the target with the largest numbers choose."""
        if self.task_type == "regression" and self.num_targets > 1:
            return ("val/loss", "min")
        return MONITOR[self.task_type]

    def setup(self, stage: str) -> None:
        datamodule = getattr(self._trainer, "datamodule", None)
        check = getattr(self.model, "check_elements", None)
        graphs = getattr(datamodule, "graph_dataset", None)
        if check is not None and callable(graphs):
            # once per dataset, on the host: the forward pass on a GPU then never reads its inputs back
            check(torch.as_tensor(graphs().elements()))
        if self.compile_mode is not None and not getattr(self.model, "_compiled_call_impl", None):
            mode = None if self.compile_mode == "default" else self.compile_mode
            self.model.compile(mode=mode, dynamic=True, backend=self.compile_backend)  # in place: same state dict
        settings: Any = getattr(datamodule, "settings", None)
        if self.graph_settings is None and hasattr(settings, "cutoff"):
            self.graph_settings = {
                "cutoff": float(settings.cutoff),
                "max_neighbors": settings.max_neighbors,
                "max_isolated_radius": float(settings.max_isolated_radius),
            }
        # fine-tuning starts from the init_from weights; Lightning restores a resumed run's own weights (ckpt_path)
        # after this hook, over them
        if self.init_from and not self._init_loaded:
            finetune.init_weights(self.model, self.init_from, self.reset_head)
            self._init_loaded = True

    def configure_optimizers(self) -> Any:
        # frozen parameters (``freeze``) are left out: no optimizer state, no weight decay, bit-identical
        if self.lr_multipliers:
            optimizer = self.optimizer_factory(lr_param_groups(self.model, self.lr_multipliers))
            apply_lr_multipliers(optimizer)
        else:
            optimizer = self.optimizer_factory([p for p in self.parameters() if p.requires_grad])
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        if isinstance(scheduler, HoldThenLinearDecay) and self._trainer is not None:
            max_epochs = self.trainer.max_epochs
            if max_epochs is not None and max_epochs > 0:
                scheduler.fit_to(max_epochs)
        config = {"scheduler": scheduler, "interval": "epoch"}
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            config["monitor"] = "val/loss"
        return {"optimizer": optimizer, "lr_scheduler": config}

    # ------------------------------------------------------------------ forward
    def forward(self, batch: Any) -> Tensor:
        """Predictions in real units ``[B, T]`` (regression) or logits ``[B, T]`` (classification)."""
        out = self.model(batch)
        if self.task_type == "regression":
            out = self.transformer.inverse(out * self.target_std + self.target_mean)
        return out

    def _loss(self, raw: Tensor, y: Tensor) -> Tensor:
        mask = torch.isfinite(y)
        y = torch.where(mask, y, torch.ones_like(y))  # a missing target: any value a transform takes; masked below
        if self.task_type == "classification":
            per = nn.functional.binary_cross_entropy_with_logits(raw, y, reduction="none")
        else:
            target = (self.transformer.forward(y) - self.target_mean) / self.target_std
            diff = raw - target
            per = diff.abs() if self.loss_name == "l1" else diff.square()
        weight = mask.to(per.dtype) * self.loss_weights.to(per.dtype)
        return (per * weight).sum() / weight.sum().clamp_min(1e-12)

    def _step(self, batch: Any, stage: str) -> dict[str, Any]:
        raw = self.model(batch)
        y = batch.y.to(raw.dtype).reshape(raw.shape)
        loss = self._loss(raw, y)
        # Python ints kept by the collate (no device read); padding crystals (data/padding.py) are not counted
        num_graphs = int(getattr(batch, "num_real_graphs", batch.num_graphs))
        self.log(
            f"{stage}/loss",
            loss,
            batch_size=num_graphs,
            on_step=stage == "train",
            on_epoch=True,
            sync_dist=True,
            prog_bar=stage != "test",
        )
        with torch.no_grad():
            if self.task_type == "classification":
                pred = torch.sigmoid(raw.detach())
                target = labels_with_missing(y)
            else:
                pred = self.transformer.inverse(raw.detach() * self.target_std + self.target_mean)
                target = y
            metrics = self._metrics(stage)
            for metric in metrics.values():
                metric.update(pred, target)
        # logged as Metric objects: Lightning computes (and torchmetrics syncs) them at epoch end
        self.log_dict(
            {f"{stage}/{key}": metric for key, metric in metrics.items()},
            on_step=False,
            on_epoch=True,
            batch_size=num_graphs,
        )
        real = num_graphs  # padding crystals come last (data/padding.py): callbacks see the real rows only
        return {
            "loss": loss,
            "pred": pred[:real],
            "y": y[:real],
            "sample_id": list(getattr(batch, "sample_id", []))[:real],
        }

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Any]:
        out = self._step(batch, "train")
        return {"loss": out["loss"]}

    def validation_step(self, batch: Any, batch_idx: int) -> dict[str, Any]:
        return self._step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> dict[str, Any]:
        return self._step(batch, "test")

    def _fresh_metrics(self, stage: str) -> None:
        # Lightning resets logged metrics inside its inference-mode evaluation loops; states made there cannot be
        # updated in place later (train after validate), so each epoch starts from states made outside it
        with torch.inference_mode(False):
            for metric in self._metrics(stage).values():
                metric.reset()

    def on_train_epoch_start(self) -> None:
        self._fresh_metrics("train")

    def on_validation_epoch_start(self) -> None:
        self._fresh_metrics("val")

    def on_test_epoch_start(self) -> None:
        self._fresh_metrics("test")

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # trained weights (load_from_checkpoint, or a resumed run): never replaced by init_from afterwards
        self._init_loaded = True
        if checkpoint.get("datamodule_hyper_parameters") or checkpoint.get("hyper_parameters"):
            self.graph_settings = graph_settings_from_checkpoint(checkpoint)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        run_id = active_run_id()
        if run_id:  # ``fit --ckpt_path`` continues this W&B run
            checkpoint[CHECKPOINT_RUN_ID_KEY] = run_id

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        """``{"sample_id": [B] str, "prediction": [B, T] real units or 0/1 labels, "probability": [B, T]}``.

        ``probability`` is present for classification only.
        """
        out = self(batch)
        real = getattr(batch, "num_real_graphs", None)
        if real is not None:  # a padded batch: the real crystals come first
            out = out[:real]
        ids = [str(i) for i in getattr(batch, "sample_id", [])][: out.shape[0]]
        if self.task_type == "classification":
            prob = torch.sigmoid(out)
            return {"sample_id": ids, "prediction": (prob >= 0.5).long(), "probability": prob}
        return {"sample_id": ids, "prediction": out}

    def predict(
        self, items: Iterable[Any], batch_size: int = 64, on_error: Literal["raise", "nan"] = "raise"
    ) -> np.ndarray:
        """Predict crystals (pymatgen ``Structure`` objects, CIF text or ``Structure.as_dict()``) or, for a composition
        model, formulas, in memory: an array in the target's units, ``[n]`` for one target and ``[n, T]`` for
        several (the probability of class 1 for classification).

        The graphs are built with the settings the model was trained with (:attr:`graph_settings`: from the
        checkpoint, see :func:`sagnn_lightning.lit.load_checkpoint` and :func:`sagnn_lightning.pretrained.load`),
        the same as ``python -m sagnn_lightning predict`` builds. ``on_error="nan"`` gives a NaN row (and one
        warning) for an item that cannot be turned into a graph instead of raising
        :class:`~sagnn_lightning.data.graph.StructureError`.
        """
        training = self.training
        self.eval()
        try:
            return predict_items(self, items, batch_size=batch_size, on_error=on_error)
        finally:
            self.train(training)


def _plain_config(value: Any) -> bool:
    """True for YAML-like values (what LightningCLI saves); False for objects such as modules or classes."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return True
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain_config(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return all(_plain_config(v) for v in value)
    return False


def _check_names(names: Sequence[str] | None, num_targets: int) -> list[str]:
    if names is None:
        return ["target"] if num_targets == 1 else [f"target_{k}" for k in range(num_targets)]
    names = [str(n) for n in names]
    if len(names) != num_targets:
        raise ValueError(f"SAGNNModule: {len(names)} target_names {names} for a model with num_targets={num_targets}")
    return names


def _check_stat(values: Sequence[float] | None, num_targets: int, default: float, what: str) -> Tensor:
    if values is None:
        return torch.full((num_targets,), default)
    tensor = torch.as_tensor(list(values), dtype=torch.float32).reshape(-1)
    if tensor.numel() != num_targets:
        raise ValueError(
            f"SAGNNModule: {what} has {tensor.numel()} values for a model with num_targets={num_targets}; "
            "link it from the same DataModule that sets num_targets"
        )
    return tensor
